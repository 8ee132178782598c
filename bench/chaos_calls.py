"""The chaos soak's callers, and what counts as a turn, a lost turn, a silent one
and a duplicate reply.

Each simulated caller is a thread that dials the ARI double, waits for the
greeting, then asks its question again and again, pausing after each answer
the way a person does, and hangs up after a few turns to dial again. All it
knows is what the double's caller knows: what it said and when (the double's
speech log) and the audio that reached its ear (RTP from the controller
through the bridge, one chunk per packet, with arrival times), plus the
`characters:` playbacks Asterisk was asked to speak on its channel.

Definitions (docs/RELIABILITY.md repeats them):

* a turn is one utterance the caller finished saying while its call was in
  the Stasis app; its window runs from the end of the utterance to the start
  of the caller's next utterance, or to the end of the call;
* it ended in audio when any agent audio reached the caller (or Asterisk
  started a `characters:` playback on its channel) inside the window: a
  filler or an error prompt counts, as the product promises;
* lost: no audio at all in the window;
* silent beyond budget: the first audio came later than the end of speech +
  endpointing (660 ms of silence) + VAGENT_TURN_BUDGET_MS + TOLERANCE_S;
* duplicate reply: inside one window, the same stretch of agent audio (at
  least DUPLICATE_RUN_S of identical non-silent packets) reached the caller
  twice, or Asterisk was asked twice to speak the same text.
"""

from __future__ import annotations

import bisect
import contextlib
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.ari_double import AppNotRegistered, AriDouble, SpeechRecord
from support.ari_double.caller import HeardChunk
from support.ari_double.media import PlaybackRecord

ENDPOINTING_S = 0.66  # the controller's end_silence_ms: silence that ends an utterance
TOLERANCE_S = 0.30  # scheduling and network on a loaded two-core host
DUPLICATE_RUN_S = 1.0
FRAME_S = 0.02
SILENT_PEAK = 64  # a packet whose samples all stay below this is silence
GRACE_S = 4.0  # turn.py: after the budget the answer is still wanted this long
QUIET_S = 1.2  # the agent is done once it has been quiet this long...
MAX_WINDOW_S = 30.0  # ...and a turn never waits longer than this
POLL_S = 0.1


# --------------------------------------------------------------------------- records


@dataclass
class TurnResult:
    """One turn, as the caller lived it (times are time.time())."""

    call: str
    index: int
    speech_end: float  # when the caller stopped speaking (trailing silence excluded)
    window_end: float
    first_audio: float | None
    audio_s: float
    characters: list[str]
    segments: list[tuple[float, float]] = field(default_factory=list)  # audio, from speech_end
    duplicate: Duplicate | None = None

    @property
    def ended_in_audio(self) -> bool:
        return self.first_audio is not None

    @property
    def latency_s(self) -> float | None:
        return None if self.first_audio is None else self.first_audio - self.speech_end

    def as_json(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "index": self.index,
            "speech_end": round(self.speech_end, 3),
            "window_s": round(self.window_end - self.speech_end, 3),
            "first_audio_s": None if self.latency_s is None else round(self.latency_s, 3),
            "audio_s": round(self.audio_s, 2),
            "characters": self.characters,
            "segments": [(round(a, 2), round(b, 2)) for a, b in self.segments],
            "duplicate": self.duplicate.why if self.duplicate else "",
        }


@dataclass(frozen=True)
class Duplicate:
    """The same reply twice in one turn: when each copy started (time.time())."""

    why: str
    first_at: float
    second_at: float


@dataclass
class CallRecord:
    """One call from dial to hangup or hand-back."""

    channel: str
    dialed_at: float
    ended_at: float = 0.0
    dial_refusals: int = 0  # Stasis app not registered (events websocket down)
    first_audio: float | None = None  # the greeting, usually
    handed_back: bool = False  # it left the Stasis app (back to the dialplan)
    stuck: bool = False  # the caller's speech never went out: no media bridge
    turns: list[TurnResult] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "duration_s": round(self.ended_at - self.dialed_at, 2),
            "dial_refusals": self.dial_refusals,
            "greeting_s": None
            if self.first_audio is None
            else round(self.first_audio - self.dialed_at, 2),
            "handed_back": self.handed_back,
            "stuck": self.stuck,
            "turns": len(self.turns),
        }


class Board:
    """Where callers post, as it happens, when each turn first got audio: the fault
    driver reads it to know when a turn after a fault ended in audio again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heard: list[tuple[float, float]] = []  # (speech_end, first_audio)

    def heard(self, speech_end: float, first_audio: float) -> None:
        with self._lock:
            self._heard.append((speech_end, first_audio))

    def first_audio_after(self, since: float) -> float | None:
        """The earliest first audio of a turn whose speech ended at or after `since`."""
        with self._lock:
            times = [audio for end, audio in self._heard if end >= since]
        return min(times) if times else None


# --------------------------------------------------------------------------- the ear


class Ear:
    """What reached one caller so far, read incrementally from the double."""

    def __init__(self, ari: AriDouble, channel: str) -> None:
        self.ari = ari
        self.channel = channel
        self.chunks: list[HeardChunk] = []
        self._audible: list[float] = []  # arrival times of the non-silent chunks
        self._playbacks: list[PlaybackRecord] = []
        self._playbacks_read = 0.0

    def poll(self) -> None:
        fresh = self.ari.heard_chunks(self.channel, len(self.chunks))
        self.chunks += fresh
        self._audible += [c.time for c in fresh if _audible(c)]
        now = time.monotonic()
        if now - self._playbacks_read > 0.5:  # the log spans every call: read it less often
            self.playbacks()
            self._playbacks_read = now

    def playbacks(self) -> list[PlaybackRecord]:
        self._playbacks = [p for p in self.ari.playback_log(self.channel) if _spoken(p)]
        return self._playbacks

    def first_audio_after(self, since: float) -> float | None:
        at = bisect.bisect_left(self._audible, since)
        times = self._audible[at : at + 1]
        times += [p.started_at for p in self._playbacks if (p.started_at or 0.0) >= since]
        return min(times) if times else None

    def last_audio(self) -> float:
        """When the agent last made a sound (now, while Asterisk is still speaking)."""
        last = self._audible[-1] if self._audible else 0.0
        for playback in self._playbacks:
            if playback.started_at is not None:
                last = max(last, playback.finished_at or time.time())
        return last


def _audible(chunk: HeardChunk) -> bool:
    return bool(len(chunk.samples)) and int(np.abs(chunk.samples).max()) >= SILENT_PEAK


def _spoken(playback: PlaybackRecord) -> bool:
    return any(m.startswith("characters:") for m in playback.media)


# --------------------------------------------------------------------------- a caller


@dataclass(frozen=True)
class CallerPlan:
    """What every caller does; `speech` is the WAV it says, `trailing_s` its end silence."""

    speech: bytes
    speech_s: float
    trailing_s: float
    budget_s: float
    turns_per_call: tuple[int, int] = (3, 8)
    pause_s: tuple[float, float] = (0.3, 1.5)
    greeting_wait_s: float = 12.0

    @property
    def min_window_s(self) -> float:
        """Until then a quiet agent may still answer: a filler at the budget, then the
        reply up to the turn's deadline, or the error prompt at the deadline."""
        return ENDPOINTING_S + self.budget_s + GRACE_S + 0.5


class Caller(threading.Thread):
    """One simulated caller, dialling again after each call, until `stop` is set."""

    def __init__(
        self,
        name: str,
        ari: AriDouble,
        plan: CallerPlan,
        board: Board,
        rng: random.Random,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.ari, self.plan, self.board, self.rng, self.stop = ari, plan, board, rng, stop
        self.calls: list[CallRecord] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                record = self._one_call()
                if record is not None:
                    self.calls.append(record)
                self._pause()
        except BaseException as exc:  # reported by the soak, never swallowed
            self.error = exc

    def _pause(self) -> None:
        self.stop.wait(self.rng.uniform(*self.plan.pause_s))

    def _dial(self) -> tuple[str, int] | None:
        refusals = 0
        while not self.stop.is_set():
            try:
                return self.ari.start_inbound_call(["inbound", "100"], answered=False), refusals
            except AppNotRegistered:
                refusals += 1
                self.stop.wait(0.5)
        return None

    def _one_call(self) -> CallRecord | None:
        dialed = self._dial()
        if dialed is None:
            return None
        channel, refusals = dialed
        record = CallRecord(channel, time.time(), dial_refusals=refusals)
        ear = Ear(self.ari, channel)
        try:
            self._converse(record, ear)
        finally:
            record.ended_at = time.time()
            with contextlib.suppress(KeyError):  # gone already
                self.ari.hangup(channel)
            ear.poll()
            record.turns = evaluate(
                channel,
                self.ari.speech_log(channel),
                ear.chunks,
                ear.playbacks(),
                record.ended_at,
                self.plan.trailing_s,
            )
        return record

    def _converse(self, record: CallRecord, ear: Ear) -> None:
        self._wait_for_agent(ear, record.dialed_at, self.plan.greeting_wait_s, record, turn=False)
        for _ in range(self.rng.randint(*self.plan.turns_per_call)):
            if self.stop.is_set() or not self._in_stasis(record.channel):
                break
            speech_end = self._speak(record)
            if speech_end is None:
                break
            self._wait_for_agent(ear, speech_end, MAX_WINDOW_S, record, turn=True)
            if record.handed_back:
                break
            self._pause()
        record.handed_back = record.handed_back or not self._in_stasis(record.channel)

    def _speak(self, record: CallRecord) -> float | None:
        """Say the question; when the caller stopped speaking, or None if it never could."""
        self.ari.say(record.channel, self.plan.speech)
        try:
            self.ari.wait_until_said(record.channel, timeout=self.plan.speech_s + 15)
        except TimeoutError:
            record.stuck = self._in_stasis(record.channel)
            return None
        finished = self.ari.speech_log(record.channel)[-1].finished_at or time.time()
        return finished - self.plan.trailing_s

    def _wait_for_agent(
        self, ear: Ear, since: float, max_wait_s: float, record: CallRecord, *, turn: bool
    ) -> None:
        """Until the agent has answered and gone quiet (or the call left the app). A turn's
        first audio goes on the board at once; a greeting is no turn, so it does not."""
        reported = not turn
        earliest_end = since + self.plan.min_window_s
        while True:
            time.sleep(POLL_S)
            ear.poll()
            now = time.time()
            first = ear.first_audio_after(since)
            if first is not None:
                record.first_audio = record.first_audio or first
                if not reported:
                    self.board.heard(since, first)
                    reported = True
            if not self._in_stasis(record.channel):
                record.handed_back = True
                return
            quiet = now - max(ear.last_audio(), since) >= QUIET_S
            if (now >= earliest_end and quiet) or now - since >= max_wait_s:
                return

    def _in_stasis(self, channel: str) -> bool:
        found = self.ari.channel(channel)
        return found is not None and found["dialplan"]["app_name"] == "Stasis"


# --------------------------------------------------------------------------- evaluation


def evaluate(
    call: str,
    speech: Sequence[SpeechRecord],
    chunks: Sequence[HeardChunk],
    playbacks: Sequence[PlaybackRecord],
    call_end: float,
    trailing_s: float,
) -> list[TurnResult]:
    """Every finished utterance of a call becomes a turn, judged on its window."""
    said = [s for s in speech if s.finished_at is not None and s.started_at is not None]
    turns = []
    for index, record in enumerate(said):
        assert record.finished_at is not None
        start = record.finished_at
        following = said[index + 1].started_at if index + 1 < len(said) else None
        end = following if following is not None else call_end
        inside = [c for c in chunks if start <= c.time < end]
        spoken = [
            p for p in playbacks if _spoken(p) and p.started_at and start <= p.started_at < end
        ]
        times = [c.time for c in inside if _audible(c)] + [p.started_at or 0.0 for p in spoken]
        turns.append(
            TurnResult(
                call=call,
                index=index,
                speech_end=start - trailing_s,
                window_end=end,
                first_audio=min(times) if times else None,
                audio_s=sum(len(c.samples) for c in inside) / 8000,
                characters=[m for p in spoken for m in p.media if m.startswith("characters:")],
                segments=_segments(inside, start - trailing_s),
                duplicate=_duplicate(inside, spoken),
            )
        )
    return turns


def _segments(chunks: Sequence[HeardChunk], origin: float) -> list[tuple[float, float]]:
    """Stretches of audio (packets less than 100 ms apart), relative to `origin`."""
    spans: list[tuple[float, float]] = []
    for chunk in chunks:
        at = chunk.time - origin
        if spans and at - spans[-1][1] < 0.1:
            spans[-1] = (spans[-1][0], at + FRAME_S)
        else:
            spans.append((at, at + FRAME_S))
    return spans


def _duplicate(chunks: Sequence[HeardChunk], spoken: Sequence[PlaybackRecord]) -> Duplicate | None:
    """The same reply twice in this window (as audio, or as text Asterisk spoke), or None."""
    said: dict[tuple[str, ...], float] = {}
    for playback in spoken:
        at = playback.started_at or 0.0
        first = said.setdefault(tuple(playback.media), at)
        if first != at:
            return Duplicate(f"Asterisk said {playback.media[0][:70]!r} twice", first, at)
    found = repeated_run([_frame_key(c) for c in chunks], round(DUPLICATE_RUN_S / FRAME_S))
    if found is None:
        return None
    first, second = (chunks[index].time for index in found)
    why = f"the same {DUPLICATE_RUN_S:g} s of audio heard {second - first:.2f} s apart"
    return Duplicate(why, first, second)


def _frame_key(chunk: HeardChunk) -> bytes | None:
    return chunk.samples.tobytes() if _audible(chunk) else None


def repeated_run(keys: Sequence[bytes | None], run: int) -> tuple[int, int] | None:
    """Start indexes of two non-overlapping runs of `run` identical frames (silent frames,
    None, may make up at most a fifth of a run), or None. A reply played twice is the
    same bytes twice: the controller frames every piece from its first sample."""
    seen: dict[tuple[bytes | None, ...], int] = {}
    for start in range(len(keys) - run + 1):
        window = tuple(keys[start : start + run])
        if sum(key is None for key in window) > run // 5:
            continue
        first = seen.setdefault(window, start)
        if start - first >= run:
            return first, start
    return None
