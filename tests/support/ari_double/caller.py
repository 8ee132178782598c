"""The simulated caller behind an inbound channel: a mouth and an ear.

A real phone sends a 20 ms frame whether or not anyone speaks, and Asterisk
forwards those frames (silence included, as real packets) to every other
member of the bridge. So the caller here always produces frames: queued
speech (``AriDouble.say``) in order, silence between utterances.

Two deliberate choices make end-to-end tests deterministic:

* the caller is *patient*: its speech only advances while somebody in its
  bridge listens (an ExternalMedia channel), so a test can queue speech
  before the app has finished answering and bridging without losing the
  start of it;
* it only produces frames once the channel is ``Up``: a phone sends no RTP
  before its call is answered, so an app that forgets ``answer`` hears
  nothing, as it would with Asterisk.

The ear (``heard``) keeps the app's audio that reached the caller through the
bridge, in order of arrival, as 8 kHz samples.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import soxr

from .payloads import FRAME_SECONDS, Samples, as_samples


@dataclass
class SpeechRecord:
    """One queued utterance and when the caller actually said it (``time.time()``)."""

    seconds: float
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None


@dataclass
class _Utterance:
    """Speech at its own rate, resampled on demand to each listener's rate."""

    samples: Samples
    rate: int
    record: SpeechRecord
    frames: int
    position: int = 0
    _by_rate: dict[int, Samples] = field(default_factory=dict)

    def frame(self, index: int, rate: int) -> Samples:
        audio = self._by_rate.get(rate)
        if audio is None:
            audio = self._resampled(rate)
            self._by_rate[rate] = audio
        size = round(rate * FRAME_SECONDS)
        chunk = audio[index * size : (index + 1) * size]
        if len(chunk) < size:
            chunk = np.concatenate([chunk, np.zeros(size - len(chunk), dtype=np.int16)])
        return chunk

    def _resampled(self, rate: int) -> Samples:
        """Band-limited resampling of the whole utterance (no per-frame edges)."""
        if rate == self.rate or not len(self.samples):
            return self.samples
        converted = soxr.resample(self.samples.astype(np.float32), self.rate, rate, quality="HQ")
        return as_samples(converted)


@dataclass(frozen=True)
class CallerFrame:
    """20 ms of what the caller said, available at any sample rate."""

    utterance: _Utterance | None
    index: int = 0

    def samples(self, rate: int) -> Samples:
        if self.utterance is None:
            return np.zeros(round(rate * FRAME_SECONDS), dtype=np.int16)
        return self.utterance.frame(self.index, rate)


@dataclass
class HeardChunk:
    """App audio that reached the caller: arrival time (``time.time()``), 8 kHz samples."""

    time: float
    samples: Samples


class SimulatedCaller:
    """The far end of one inbound channel."""

    def __init__(self, channel_id: str) -> None:
        self.channel_id = channel_id
        self._queue: deque[_Utterance] = deque()
        self.speech: list[SpeechRecord] = []
        self.heard: list[HeardChunk] = []
        self.gone = False

    def say(self, samples: Samples, rate: int) -> SpeechRecord:
        """Queue an utterance after whatever is still queued."""
        seconds = len(samples) / rate if rate else 0.0
        record = SpeechRecord(seconds=seconds, queued_at=time.time())
        frames = max(1, math.ceil(seconds / FRAME_SECONDS - 1e-9))
        self._queue.append(_Utterance(samples, rate, record, frames))
        self.speech.append(record)
        return record

    @property
    def speaking(self) -> bool:
        """Speech is queued or under way."""
        return bool(self._queue)

    def next_frame(self, frame_seconds: float = FRAME_SECONDS) -> CallerFrame:
        """The next 20 ms: speech if any is queued, else silence.

        ``frame_seconds`` is how long the frame lasts on the (scaled) RTP clock.
        """
        if not self._queue:
            return CallerFrame(None)
        utterance = self._queue[0]
        now = time.time()
        if utterance.position == 0:
            utterance.record.started_at = now
        frame = CallerFrame(utterance, utterance.position)
        utterance.position += 1
        if utterance.position >= utterance.frames:
            utterance.record.finished_at = now + frame_seconds
            self._queue.popleft()
        return frame

    def hear(self, samples: Samples, when: float) -> None:
        if not self.gone:
            self.heard.append(HeardChunk(when, samples))

    def hang_up(self) -> None:
        """The call is over: unsaid speech is dropped, the logs stay."""
        self.gone = True
        self._queue.clear()

    def heard_samples(self) -> Samples:
        if not self.heard:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([chunk.samples for chunk in self.heard])
