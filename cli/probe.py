"""`vagent probe`: one synthetic caller turn through the running stack, over the bus.

It enters where the controller would (the `stt` stream, or `llm` for
--text) and reads the call's results stream like the controller, so it
proves the whole path without Asterisk.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from vagent.services.bus import Bus, Envelope, decode, result_key
from vagent.services.config import Settings
from vagent.services.redis_client import RedisStore
from vagent.services.turn import LLM, STT, TTS, turn_times

DEFAULT_UTTERANCE = "What are your opening hours?"


class ProbeError(Exception):
    """The probe could not run (no stack, no Redis, bad input); the message says what to do."""


@dataclass
class ProbeResult:
    transcript: str = ""
    reply: str = ""
    stages: dict[str, Any] = field(default_factory=dict)
    first_audio_ms: float | None = None
    audio_ms: float = 0.0
    spoken_by_asterisk: list[str] = field(default_factory=list)
    complete: bool = False

    @property
    def heard(self) -> bool:
        """The caller hears something: our audio, or Asterisk speaking the text."""
        return self.audio_ms > 0 or bool(self.spoken_by_asterisk)

    def as_json(self) -> dict[str, Any]:
        return {
            "transcript": self.transcript,
            "reply": self.reply,
            "stages": self.stages,
            "first_audio_ms": self.first_audio_ms,
            "audio_ms": round(self.audio_ms, 1),
            "characters": self.spoken_by_asterisk,
            "complete": self.complete,
        }


def spoken_wav(text: str) -> bytes:
    """A caller's utterance made locally with espeak-ng."""
    try:
        return subprocess.run(
            ["espeak-ng", "--stdout", text], capture_output=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProbeError(f"espeak-ng could not speak the probe utterance: {exc}") from None


async def probe_turn(
    settings: Settings, text: str | None, utterance: bytes, timeout_s: float
) -> ProbeResult:
    """With `text`, the turn starts at the LLM; else `utterance` (a WAV) goes to STT."""
    store = RedisStore(settings.effective_redis_url)
    try:
        return await _probe(store, settings, text, utterance, timeout_s)
    finally:
        await store.close()


async def _probe(
    store: RedisStore, settings: Settings, text: str | None, utterance: bytes, timeout_s: float
) -> ProbeResult:
    call_id = f"probe-{uuid.uuid4().hex[:12]}"
    turn_id = uuid.uuid4().hex
    budget_at, deadline = turn_times(settings.turn_budget_ms)
    if text is not None:
        stt = {"provider": "none", "model": "text input", "ms": 0, "text": text}
        stream, body, audio = LLM, {"text": text, "trace": {STT: stt}}, b""
    else:
        stream, body, audio = STT, {"format": "wav", "trace": {}}, utterance
    envelope = Envelope(
        call_id, turn_id, deadline, f"{turn_id}:{stream}", body, audio, budget_at=budget_at
    )
    started = time.perf_counter()
    try:
        await Bus(store).publish(stream, envelope)
    except Exception as exc:
        raise ProbeError(f"cannot reach Redis ({exc}): is vagent up? try `vagent status`") from None
    return await _collect(store, call_id, started, timeout_s)


async def _collect(
    store: RedisStore, call_id: str, started: float, timeout_s: float
) -> ProbeResult:
    result = ProbeResult()
    pieces: dict[int, str] = {}
    expected: int | None = None
    last_id = "0-0"
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and (expected is None or len(pieces) < expected):
        reply: Any = await store.client.xread({result_key(call_id): last_id}, block=200, count=50)
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id.decode()
                message = decode(fields)
                expected = _take(result, message, pieces, started, expected)
    result.reply = " ".join(pieces[i] for i in sorted(pieces))
    result.complete = expected is not None and len(pieces) >= expected
    return result


def _take(
    result: ProbeResult,
    message: Envelope,
    pieces: dict[int, str],
    started: float,
    expected: int | None,
) -> int | None:
    body = message.body
    trace = body.get("trace", {})
    if body["type"] == "end":
        result.stages = {**trace, **result.stages}
        return int(body.get("count", 0))
    seq = int(body["seq"])
    pieces[seq] = str(body.get("text", ""))
    if seq == 0:
        result.stages = dict(trace)
        result.transcript = str(trace.get(STT, {}).get("text", ""))
    if result.first_audio_ms is None:
        result.first_audio_ms = round((time.perf_counter() - started) * 1000, 1)
    if body["type"] == "audio":
        result.audio_ms += len(message.audio) / 8  # 8 kHz mu-law: 8 bytes per ms
    else:
        result.spoken_by_asterisk.append(str(body.get("text", "")))
    return expected


def run_probe(
    settings: Settings, text: str | None, wav: Path | None, timeout_s: float
) -> ProbeResult:
    utterance = b""
    if text is None:
        utterance = wav.read_bytes() if wav is not None else spoken_wav(DEFAULT_UTTERANCE)
    return asyncio.run(probe_turn(settings, text, utterance, timeout_s))


def probe_table(result: ProbeResult) -> Table:
    grid = Table(title="vagent probe: one caller turn", title_justify="left", show_header=False)
    grid.add_column("what", style="bold")
    grid.add_column("result")
    grid.add_row("transcript", result.transcript or "-")
    grid.add_row("reply", result.reply or "-")
    for stage in (STT, LLM, TTS):
        record = result.stages.get(stage, {})
        failed = "; failed: " + ", ".join(record["failed"]) if record.get("failed") else ""
        grid.add_row(
            stage,
            f"{record.get('provider', '-')} ({record.get('model', '-')}), "
            f"{record.get('ms', '-')} ms{failed}",
        )
    first = f"{result.first_audio_ms} ms" if result.first_audio_ms is not None else "none"
    grid.add_row("first audio", first)
    grid.add_row("audio", f"{result.audio_ms:.0f} ms")
    if result.spoken_by_asterisk:
        grid.add_row("characters", " | ".join(result.spoken_by_asterisk))
    verdict = "[green]answered[/green]" if result.heard else "[red]no audio[/red]"
    grid.add_row("verdict", verdict + ("" if result.complete else " (reply incomplete)"))
    return grid
