"""Voice activity detection and endpointing for the caller's 8 kHz stream.

The controller needs two answers from the caller's audio, and needs them at
different speeds:

* "the caller started talking" -- fast (well under 100 ms), because that is
  what stops the agent's audio (barge-in);
* "the caller finished a sentence" -- after a deliberate pause (about 650 ms),
  because ending too early chops people off mid-thought and ending late makes
  every turn feel slow.

`Vad` decides speech/non-speech per frame from energy against an adaptive
noise floor, so line hiss, comfort noise or a fan in the room is not
speech: steady noise present from the start never is, and noise that starts
mid-call is recognised as noise within about 0.4 s. `Endpointer` turns those decisions into
events. Both are pure and synchronous: the same frames always give the same
events, which keeps them fast to test and free of timing races.

The endpointer looks at 10 ms halves of each 20 ms frame. A 40 ms click that
straddles frame boundaries touches three 20 ms frames but at most five 10 ms
sub-frames, so requiring 60 ms of continuous speech at 10 ms resolution
rejects clicks wherever they fall, while still reacting within ~80 ms.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from vagent.services.audio import FRAME_MS, TELEPHONY_RATE, Audio

#: Frames quieter than this are clamped, so digital silence has a finite level.
SILENCE_DBFS = -100.0
_FULL_SCALE_POWER = 32768.0**2


@dataclass(frozen=True)
class VadConfig:
    """Tuning for `Vad`; levels are dB relative to a full-scale square wave.

    margin_db: a frame must be this far above the noise floor to become speech.
    hold_margin_db: once in speech, this smaller margin keeps it there
        (hysteresis), so soft word endings are not chopped into flicker.
    min_speech_dbfs: nothing quieter than this is speech, whatever the floor;
        this is what keeps quiet hiss out before the floor has adapted.
    floor_window_s / floor_percentile: the noise floor is a low percentile of
        the levels seen over this window. Speech has gaps between syllables
        and words, steady noise has none, so the percentile sits on the noise
        and not on the talker.
    floor_rise_db_per_s: the floor may rise at most this fast (it falls at
        once), so a long loud utterance cannot drag the floor up with it.
    stationary_window_s / stationary_spread_db: when the levels of this
        short window vary by less than this (5th to 95th percentile), the
        sound is steady noise, not speech -- speech swings by 10-30 dB between
        syllables -- and the floor jumps up to it at once. This is what turns
        a fan switching on into ~0.4 s of "speech" instead of ~3 s.
    """

    margin_db: float = 10.0
    hold_margin_db: float = 6.0
    min_speech_dbfs: float = -50.0
    floor_window_s: float = 1.5
    floor_percentile: float = 10.0
    floor_rise_db_per_s: float = 20.0
    stationary_window_s: float = 0.4
    stationary_spread_db: float = 4.0


def level_dbfs(frame: Audio) -> float:
    """Mean power of a frame in dBFS, DC removed (a DC offset is not speech)."""
    data = frame.array().astype(np.float64)
    if data.size == 0:
        return SILENCE_DBFS
    power = float(np.var(data)) / _FULL_SCALE_POWER
    return max(SILENCE_DBFS, 10.0 * math.log10(power)) if power > 0 else SILENCE_DBFS


class Vad:
    """Energy VAD with an adaptive noise floor; feed consecutive frames in order."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        self._levels: deque[tuple[float, float]] = deque()  # (duration_s, level_db)
        self._window_s = 0.0
        self._floor: float | None = None
        self._speaking = False
        self.level_db = SILENCE_DBFS
        """Level of the last frame processed (dBFS)."""
        self.stationary = False
        """True when the last frame ended a steady-noise window that raised the floor."""

    @property
    def noise_floor_db(self) -> float:
        """The current noise floor estimate (dBFS); SILENCE_DBFS before any frame."""
        return self._floor if self._floor is not None else SILENCE_DBFS

    @property
    def threshold_db(self) -> float:
        """The level the next frame must exceed to be speech."""
        margin = self.config.hold_margin_db if self._speaking else self.config.margin_db
        return max(self.noise_floor_db + margin, self.config.min_speech_dbfs)

    def process(self, frame: Audio) -> bool:
        """Classify one frame (any length; 10-20 ms works best) as speech or not.

        The decision uses the floor from *before* this frame, so a loud onset
        is judged against the quiet that preceded it.
        """
        self.level_db = level_dbfs(frame)
        self._speaking = self._floor is not None and self.level_db > self.threshold_db
        self._update_floor(frame.duration_s)
        return self._speaking

    def reset(self) -> None:
        """Forget the noise floor (a new call, a new line)."""
        self._levels.clear()
        self._window_s = 0.0
        self._floor = None
        self._speaking = False
        self.level_db = SILENCE_DBFS
        self.stationary = False

    def _update_floor(self, duration_s: float) -> None:
        """Track a low percentile of recent levels; rise slowly, fall at once.

        Steady noise is the exception to "rise slowly": see VadConfig.
        """
        self._levels.append((duration_s, self.level_db))
        self._window_s += duration_s
        while len(self._levels) > 1 and self._window_s - self._levels[0][0] >= (
            self.config.floor_window_s
        ):
            self._window_s -= self._levels.popleft()[0]
        levels = np.fromiter((level for _, level in self._levels), dtype=np.float64)
        target = float(np.percentile(levels, self.config.floor_percentile))
        if self._floor is None or target <= self._floor:
            floor = target
        else:
            floor = min(target, self._floor + self.config.floor_rise_db_per_s * duration_s)
        steady = self._steady_level(levels, duration_s)
        self.stationary = steady is not None and steady > floor
        self._floor = max(floor, steady) if steady is not None else floor

    def _steady_level(self, levels: np.ndarray, duration_s: float) -> float | None:
        """The level of the recent window if it is steady noise, else None."""
        count = round(self.config.stationary_window_s / duration_s) if duration_s > 0 else 0
        if count < 2 or levels.size < count:
            return None
        low, level, high = np.percentile(levels[-count:], [5.0, self.config.floor_percentile, 95.0])
        return float(level) if high - low <= self.config.stationary_spread_db else None


@dataclass(frozen=True)
class EndpointerConfig:
    """Timing of `Endpointer`, in milliseconds of audio.

    start_ms: continuous speech needed before SpeechStarted (rejects clicks).
    end_silence_ms: non-speech after the last speech that ends an utterance.
    pre_roll_ms: audio kept from before the detected onset (soft first
        consonants are below threshold but STT needs them).
    trailing_ms: silence kept after the last speech frame.
    min_speech_ms: utterances whose speech (onset to last speech) is shorter
        than this are discarded as noise; a clipped "yes" is about 300 ms.
    max_utterance_ms: a monologue is cut here, so a turn always happens.
    vad_step_ms: resolution of the speech decisions (see the module docstring).
    """

    start_ms: int = 60
    end_silence_ms: int = 660
    pre_roll_ms: int = 200
    trailing_ms: int = 200
    min_speech_ms: int = 200
    max_utterance_ms: int = 15000
    vad_step_ms: int = 10
    rate: int = TELEPHONY_RATE


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started talking: the moment to stop agent audio (barge-in).

    at_s is the stream time of the onset (the first speech sub-frame); the
    event itself is emitted by the frame that completed start_ms of speech.
    """

    at_s: float


@dataclass(frozen=True)
class UtteranceEnded:
    """A complete utterance for STT: pre-roll + speech + trimmed trailing silence.

    start_s/end_s are stream times of the first and last speech (without
    pre-roll and trailing silence), speech_s the time between them; reason
    "max_length" means it was cut, "flush" that the stream stopped.
    """

    audio: Audio
    start_s: float
    end_s: float
    speech_s: float
    reason: Literal["silence", "max_length", "flush"]


@dataclass(frozen=True)
class SpeechDiscarded:
    """A SpeechStarted that turned out not to be an utterance.

    reason "short": less than min_speech_ms of speech (a cough, a knock);
    "noise": the "speech" was the onset of steady noise (see VadConfig).
    The controller may have stopped agent audio on the SpeechStarted; this
    tells it that no utterance is coming for that start.
    """

    start_s: float
    speech_s: float
    reason: Literal["short", "noise"]


EndpointEvent = SpeechStarted | UtteranceEnded | SpeechDiscarded


@dataclass
class _Utterance:
    onset: int  # absolute sample index of the first speech sub-frame
    last_speech_end: int

    @property
    def speech(self) -> int:
        return self.last_speech_end - self.onset


@dataclass
class Endpointer:
    """Turns a stream of frames into SpeechStarted / UtteranceEnded events.

    Feed every frame of the caller's stream, in order, to `process`; it
    returns the events that frame caused (usually none). Sample positions are
    absolute since the first frame, so event times are stream times.
    """

    config: EndpointerConfig = field(default_factory=EndpointerConfig)
    vad: Vad = field(default_factory=Vad)
    _buffer: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _buffer_start: int = field(default=0, init=False)
    _position: int = field(default=0, init=False)
    _run_start: int | None = field(default=None, init=False)
    _utterance: _Utterance | None = field(default=None, init=False)

    @property
    def in_speech(self) -> bool:
        """True between SpeechStarted and the end of that utterance."""
        return self._utterance is not None

    @property
    def time_s(self) -> float:
        """Stream time processed so far."""
        return self._position / self.config.rate

    def process(self, frame: Audio) -> list[EndpointEvent]:
        """Consume one frame (any length, at config.rate) and return its events."""
        if frame.rate != self.config.rate:
            raise ValueError(f"endpointer expects {self.config.rate} Hz audio, got {frame.rate}")
        events: list[EndpointEvent] = []
        self._buffer += frame.pcm[: frame.samples * 2]
        for step in split_frames(frame, self.config.vad_step_ms, pad=False):
            start = self._position
            self._position += step.samples
            speech = self.vad.process(step)
            events.extend(self._step(speech, start, self._position))
        if self._utterance is None:
            self._trim_idle_buffer()
        return events

    def flush(self) -> list[EndpointEvent]:
        """End any open utterance now (media stopped, call ending)."""
        if self._utterance is None:
            return []
        return [self._finish("flush", self._position)]

    def _ms(self, ms: int) -> int:
        return ms * self.config.rate // 1000

    def _step(self, speech: bool, start: int, end: int) -> list[EndpointEvent]:
        utterance = self._utterance
        if utterance is None:
            return self._step_idle(speech, start, end)
        if speech:
            utterance.last_speech_end = end
        if self.vad.stationary and utterance.onset >= end - self._steady_span():
            return [self._finish("noise", end)]
        if end - utterance.last_speech_end >= self._ms(self.config.end_silence_ms):
            return [self._finish("silence", end)]
        if end - self._audio_start(utterance) >= self._ms(self.config.max_utterance_ms):
            return [self._finish("max_length", end)]
        return []

    def _step_idle(self, speech: bool, start: int, end: int) -> list[EndpointEvent]:
        if not speech:
            self._run_start = None
            return []
        if self._run_start is None:
            self._run_start = start
        if end - self._run_start < self._ms(self.config.start_ms):
            return []
        onset, self._run_start = self._run_start, None
        self._utterance = _Utterance(onset=onset, last_speech_end=end)
        return [SpeechStarted(at_s=onset / self.config.rate)]

    def _steady_span(self) -> int:
        """How far back an onset may lie and still be the start of steady noise."""
        return self._ms(round(self.vad.config.stationary_window_s * 1000) + 100)

    def _audio_start(self, utterance: _Utterance) -> int:
        return max(self._buffer_start, utterance.onset - self._ms(self.config.pre_roll_ms))

    def _finish(
        self, reason: Literal["silence", "max_length", "flush", "noise"], now: int
    ) -> EndpointEvent:
        """Close the open utterance and cut its audio out of the buffer."""
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        self._run_start = None
        rate = self.config.rate
        begin = self._audio_start(utterance)
        end = now
        if reason == "silence":
            end = min(now, utterance.last_speech_end + self._ms(self.config.trailing_ms))
        audio = self._cut(begin, end)
        # Later pre-roll must never repeat audio this utterance already carried.
        self._drop_before(end)
        speech_s = utterance.speech / rate
        if reason == "noise":
            return SpeechDiscarded(utterance.onset / rate, speech_s, "noise")
        if utterance.speech < self._ms(self.config.min_speech_ms):
            return SpeechDiscarded(utterance.onset / rate, speech_s, "short")
        return UtteranceEnded(
            audio=audio,
            start_s=utterance.onset / rate,
            end_s=utterance.last_speech_end / rate,
            speech_s=speech_s,
            reason=reason,
        )

    def _cut(self, begin: int, end: int) -> Audio:
        lo, hi = (begin - self._buffer_start) * 2, (end - self._buffer_start) * 2
        return Audio(bytes(self._buffer[lo:hi]), self.config.rate)

    def _drop_before(self, position: int) -> None:
        drop = max(0, min(position, self._position) - self._buffer_start)
        del self._buffer[: drop * 2]
        self._buffer_start += drop

    def _trim_idle_buffer(self) -> None:
        """While idle, keep only what a future pre-roll and start run can need."""
        keep = self._ms(self.config.pre_roll_ms + self.config.start_ms + 2 * FRAME_MS)
        self._drop_before(self._position - keep)


def split_frames(audio: Audio, frame_ms: int = FRAME_MS, *, pad: bool = True) -> Iterator[Audio]:
    """Cut audio into frame_ms pieces; the last one is padded with silence, or kept short."""
    size = audio.rate * frame_ms // 1000 * 2
    pcm = audio.pcm[: audio.samples * 2]
    for offset in range(0, len(pcm), size):
        piece = pcm[offset : offset + size]
        if pad and len(piece) < size:
            piece += bytes(size - len(piece))
        yield Audio(piece, audio.rate)
