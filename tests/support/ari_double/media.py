"""Playbacks: queueing, timing and the event sequence of Asterisk 22.10.1.

Observed in the lab (README items 11-13, events.jsonl 17-55):

* ``POST .../play`` answers 201 with state ``queued``; ``PlaybackStarted``
  follows once the target's earlier playbacks are over;
* ``media=a,b,c`` (one parameter) plays in turn under one id:
  Started(next_media_uri) -> Continuing -> Started -> ... -> Finished;
* a missing ``sound:`` (or ``sound:`` with nothing) -> Started then
  Finished with state ``failed``;
* an unsupported URI (``foo:bar``, a bare ``hello-world``, ``number:abc``,
  ``recording:<missing>``) -> Started, then *never* Finished; the object is
  gone and the queue moves on after about 2.5 s;
* ``DELETE /playbacks/{id}`` on a playing playback -> Finished ``done``.

Every playback also leaves a :class:`PlaybackRecord` that outlives the ARI
object, so a test can check afterwards what the app asked the caller to
hear (``characters:hello``, ``sound:...``) and when it was started/stopped.
"""

from __future__ import annotations

import asyncio
import re
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import events
from .models import Playback

if TYPE_CHECKING:
    from .engine import Engine

#: How long an unsupported URI holds the queue before it silently vanishes.
UNSUPPORTED_HOLD = 2.5
#: Seconds per spoken unit, from the lab timings (digits:123 2.5 s, characters:abc 2.2 s).
PER_DIGIT = 0.83
PER_CHARACTER = 0.73
_RAW_RATES = {".ulaw": 8000, ".alaw": 8000, ".sln": 16000, ".sln16": 32000, ".g722": 8000}
_DIGITS = re.compile(r"^[0-9*#A-Da-d]+$")


@dataclass(frozen=True)
class MediaPlan:
    """What playing one URI will do: ``ok`` for ``seconds``, ``failed``,
    ``unsupported`` (Started, then silence and removal) or ``forever``."""

    kind: str
    seconds: float = 0.0


@dataclass
class PlaybackRecord:
    """The history of one playback (times are ``time.time()``, like the journal).

    ``state`` ends as ``done`` or ``failed`` (as in PlaybackFinished),
    ``vanished`` (unsupported URI: no PlaybackFinished ever came), or
    ``cancelled`` (removed while still queued). ``stopped`` is True when
    ``DELETE /playbacks/{id}`` or a hangup cut it short.
    """

    id: str
    target_uri: str
    media: list[str]
    queued_at: float
    started: list[tuple[float, str]] = field(default_factory=list)
    finished_at: float | None = None
    state: str = "queued"
    stopped: bool = False

    @property
    def started_at(self) -> float | None:
        return self.started[0][0] if self.started else None

    @property
    def target_id(self) -> str:
        return self.target_uri.split(":", 1)[1]


def sound_file_seconds(name: str) -> float | None:
    """Duration of an on-disk sound given as an absolute path without extension."""
    base = Path(name)
    if not base.is_absolute():
        return None
    wav = base.with_name(base.name + ".wav")
    if wav.is_file():
        with wave.open(str(wav)) as handle:
            frames: int = handle.getnframes()
            rate: int = handle.getframerate() or 8000
            return frames / float(rate)
    for suffix, bytes_per_second in _RAW_RATES.items():
        raw = base.with_name(base.name + suffix)
        if raw.is_file():
            return raw.stat().st_size / bytes_per_second
    return None


def plan_media(uri: str, sounds: dict[str, float], recordings: dict[str, float]) -> MediaPlan:
    """Classify one media URI the way Asterisk's playback code ends up treating it."""
    scheme, colon, rest = uri.partition(":")
    if not colon:
        return MediaPlan("unsupported")
    if scheme == "sound":
        seconds = sounds.get(rest) if rest else None
        seconds = seconds if seconds is not None else sound_file_seconds(rest) if rest else None
        return MediaPlan("ok", seconds) if seconds is not None else MediaPlan("failed")
    if scheme == "recording":
        return MediaPlan("ok", recordings[rest]) if rest in recordings else MediaPlan("unsupported")
    if scheme == "digits":
        return (
            MediaPlan("ok", PER_DIGIT * len(rest)) if _DIGITS.match(rest) else MediaPlan("failed")
        )
    if scheme == "characters":
        return MediaPlan("ok", PER_CHARACTER * len(rest))
    if scheme == "number":
        digits = rest.lstrip("-")
        return (
            MediaPlan("ok", PER_DIGIT * len(digits))
            if digits.isdigit()
            else MediaPlan("unsupported")
        )
    if scheme == "tone":
        return MediaPlan("forever")
    return MediaPlan("unsupported")


class PlaybackEngine:
    """Per-target playback queues driven by asyncio timers on the server loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queues: dict[str, deque[Playback]] = {}
        self.current: dict[str, Playback] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: Every playback of this boot, oldest first.
        self.history: list[PlaybackRecord] = []
        self._records: dict[str, PlaybackRecord] = {}

    def enqueue(self, playback: Playback) -> None:
        """Accept a playback; it starts when the target is free."""
        self.engine.playbacks[playback.id] = playback
        record = PlaybackRecord(playback.id, playback.target_uri, list(playback.media), time.time())
        self.history.append(record)
        self._records[playback.id] = record
        self.queues.setdefault(playback.target_uri, deque()).append(playback)
        if playback.target_uri not in self.current:
            self.engine.loop.call_soon(self._advance, playback.target_uri)

    def _advance(self, target: str) -> None:
        if target in self.current or self.engine.closed:
            return
        queue = self.queues.get(target)
        if not queue:
            self.queues.pop(target, None)
            return
        playback = queue.popleft()
        self.current[target] = playback
        self.tasks[playback.id] = self.engine.loop.create_task(self._run(playback))

    def _emit(self, event_type: str, playback: Playback) -> None:
        record = self._records.get(playback.id)
        if record is not None and event_type == "PlaybackStarted":
            record.started.append((time.time(), playback.media_uri))
        event = events.playback_event(event_type, playback)
        self.engine.emit_target(event, playback.target_kind, playback.target_id)

    def _scaled(self, seconds: float) -> float:
        return max(0.0, seconds * self.engine.config.media_time_scale)

    async def _run(self, playback: Playback) -> None:
        try:
            await self._play_all(playback)
        except asyncio.CancelledError:
            pass
        finally:
            self._finish(playback)

    async def _play_all(self, playback: Playback) -> None:
        config = self.engine.config
        for index in range(len(playback.media)):
            playback.index = index
            playback.state = "playing"
            self._emit("PlaybackStarted", playback)
            plan = plan_media(playback.media_uri, config.sounds, config.recordings)
            if plan.kind == "failed":
                playback.state = "failed"
                self._emit("PlaybackFinished", playback)
                return
            if plan.kind == "unsupported":
                await asyncio.sleep(self._scaled(UNSUPPORTED_HOLD))
                return
            if plan.kind == "forever":
                await asyncio.Event().wait()
            await asyncio.sleep(self._scaled(plan.seconds))
            if playback.next_media_uri is not None:
                playback.state = "continuing"
                self._emit("PlaybackContinuing", playback)
        playback.state = "done"
        self._emit("PlaybackFinished", playback)

    def _close_record(self, playback: Playback, state: str) -> None:
        record = self._records.pop(playback.id, None)
        if record is not None:
            record.finished_at, record.state = time.time(), state

    def _finish(self, playback: Playback) -> None:
        final = playback.state if playback.state in ("done", "failed") else "vanished"
        self._close_record(playback, final)
        self.tasks.pop(playback.id, None)
        self.engine.playbacks.pop(playback.id, None)
        if self.current.get(playback.target_uri) is playback:
            del self.current[playback.target_uri]
        if not self.engine.closed:
            self.engine.loop.call_soon(self._advance, playback.target_uri)

    def stop(self, playback: Playback) -> None:
        """``DELETE /playbacks/{id}``: a playing one finishes ``done``, a queued one vanishes."""
        task = self.tasks.get(playback.id)
        if task is None:
            queue = self.queues.get(playback.target_uri)
            if queue is not None and playback in queue:
                queue.remove(playback)
            self.engine.playbacks.pop(playback.id, None)
            self._close_record(playback, "cancelled")
            return
        record = self._records.get(playback.id)
        if record is not None:
            record.stopped = True
        if playback.state in ("playing", "continuing"):
            playback.state = "done"
            self._emit("PlaybackFinished", playback)
        task.cancel()

    def stop_target(self, target_uri: str) -> None:
        """The channel or bridge is going away: stop what plays, drop what waits."""
        for queued in list(self.queues.pop(target_uri, deque())):
            self.engine.playbacks.pop(queued.id, None)
            self._close_record(queued, "cancelled")
        playing = self.current.get(target_uri)
        if playing is not None:
            self.stop(playing)

    def shutdown(self) -> None:
        """Boot ends: cancel every timer without emitting anything."""
        for task in list(self.tasks.values()):
            task.cancel()
