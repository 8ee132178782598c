"""A caller's turn as it crosses the bus: streams, message bodies and time budget.

    stt  {"format": "wav", "trace"} + audio          -> stt_service
    llm  {"text", "trace"}                           -> llm_service
    tts  {"type": "sentence", "seq", "text", "trace"}
         {"type": "prompt", "seq", "name", "trace"}
         {"type": "end", "count", "trace"}           -> tts_service
    results:<call_id>
         {"type": "audio", "seq", "text", "format": "ulaw8k" | "slin16", "trace"} + audio
         {"type": "say", "seq", "text", "trace"}     (play with ARI characters:)
         {"type": "end", "count", "trace"}           -> the controller (or `vagent probe`)

`trace` gathers, stage by stage, which provider served and how long it took.
A turn may ask for 16 kHz audio with "output": "slin16" in its first message;
every stage passes it on.
"""

from __future__ import annotations

import time
from typing import Any

from vagent.services.bus import Envelope
from vagent.services.resilience import Served

STT, LLM, TTS = "stt", "llm", "tts"

# What the later stages need at the least, left free by the earlier ones:
# espeak-ng renders a sentence in tens of ms; the scripted responder at once.
RESERVE_S = {STT: 0.40, LLM: 0.35, TTS: 0.0}
# A turn already late (an overloaded host, a slow earlier stage) still gets an
# answer: each stage then has this long, on its fastest providers.
LATE_STAGE_S = {STT: 0.6, LLM: 0.3, TTS: 0.3}
# After the budget the controller plays a filler; the answer is wanted this much longer.
GRACE_S = 4.0


OUTPUT_FORMATS = ("ulaw8k", "slin16")  # 8 kHz G.711 mu-law, or 16 kHz signed linear LE


def passed_on(envelope: Envelope, body: dict[str, Any]) -> dict[str, Any]:
    """A follow-up body that keeps the turn's requested audio format ("output")."""
    output = envelope.body.get("output")
    return {**body, "output": output} if output in OUTPUT_FORMATS else body


def turn_times(budget_ms: int) -> tuple[float, float]:
    """(budget_at, deadline) of a turn that starts now."""
    budget_at = time.time() + budget_ms / 1000
    return budget_at, budget_at + GRACE_S


def stage_deadline(envelope: Envelope, stage: str) -> float:
    """Aim for the turn's budget; when that is out of reach, for a quick answer all the same."""
    planned = envelope.budget - RESERVE_S[stage]
    late = time.time() + LATE_STAGE_S[stage]
    return min(envelope.deadline, max(planned, late))


def follow_up_deadline(turn_deadline: float, budget_s: float) -> float:
    """Later sentences of a reply are due while the first one plays, not by the turn's deadline."""
    return max(turn_deadline, time.time() + budget_s)


def stage_record(served: Served[Any] | None, started: float, **extra: Any) -> dict[str, Any]:
    """One stage's entry of the trace: which provider, which model, how long."""
    record: dict[str, Any] = {"ms": round((time.perf_counter() - started) * 1000, 1)}
    if served is not None:
        record.update(provider=served.link.kind, model=served.link.name)
        if served.failures:
            record["failed"] = [f"{name}: {reason}" for name, reason in served.failures]
    record.update(extra)
    return record
