"""What each failure drill expects: the hypotheses, as data.

One `Expectation` per target (and the slow-mode ones): what the caller
should hear during the fault, which stage's provider proves the fallback
served, and which health sign the fault must show. `drill.py` runs the
experiment against them; nothing here talks to the stack.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vagent.cli.drill_report import RANK, HealthEvent, Turn
from vagent.services.config import Settings
from vagent.services.turn import LLM, STT, TTS

NEXT = "next"  # served_by: the link after the faulted one, resolved from settings
ALL = "*"  # evidence: in every service
# How a hypothesis names a provider kind.
KINDS = {
    "fallback": "the fallback model",
    "scripted": "the scripted responder",
    "local": "espeak-ng, the local engine",
    "characters": "Asterisk speaking the text (characters:)",
}


@dataclass(frozen=True)
class Evidence:
    """A health sign the fault must show: one of `checks` leaves pass in `service`."""

    service: str
    checks: tuple[str, ...]

    def describe(self) -> str:
        where = "every service" if self.service == ALL else self.service
        return f"{' or '.join(self.checks)} not passing in {where}"

    def shown(self, events: list[HealthEvent], services: list[str]) -> bool:
        """Every service it names had one of its checks leave pass."""
        wanted = services if self.service == ALL else [self.service]
        return all(
            any(
                e.service == s and e.check in self.checks and RANK.get(e.after, 2) > 0
                for e in events
            )
            for s in wanted
        )


@dataclass(frozen=True)
class Expectation:
    hypothesis: str
    stage: str | None = None  # the stage whose provider proves the fallback
    served_by: str | None = None  # its provider kind, NEXT, or a fixed prompt (ERROR_STT)
    answered: bool | None = True  # turns during the fault are heard (None: either way)
    evidence: tuple[Evidence, ...] = ()
    speech: bool = False  # turns go through speech recognition
    note: str = ""


ANSWERED = "every turn during the fault is heard within the turn deadline"

EXPECTED: dict[str, Expectation] = {
    "llm": Expectation(f"{ANSWERED}, the llm stage served by {{next}}", LLM, NEXT),
    "llm-all": Expectation(
        f"{ANSWERED}, the llm stage served by the scripted responder", LLM, "scripted"
    ),
    "stt": Expectation(
        f"{ANSWERED}: the caller hears the ERROR_STT prompt", STT, "ERROR_STT", speech=True
    ),
    "tts": Expectation(f"{ANSWERED}, the tts stage served by {{next}}", TTS, NEXT),
    "redis": Expectation(
        "the services cannot use the bus: turns get no answer over it and every service "
        "reports Redis failing; after restore turns are answered again",
        answered=False,
        evidence=(Evidence(ALL, ("redis:ping", "breaker:redis")),),
        note="in a live call the controller itself plays ERROR_GENERIC, then continues "
        "in the dialplan (VAGENT_ON_FAILURE)",
    ),
    "ari": Expectation(
        f"call_controller health degrades (ari:info failing) while the AI pipeline keeps "
        f"serving: {ANSWERED}; recovery after restore",
        evidence=(Evidence("call_controller", ("ari:info",)),),
        note="new calls arriving while ARI fails are handed back to the dialplan",
    ),
    "rtpengine": Expectation(
        f"call_controller health degrades (rtpengine:ping not passing) while {ANSWERED}",
        evidence=(Evidence("call_controller", ("rtpengine:ping",)),),
        note="with VAGENT_MEDIA_MODE=rtpengine, calls set up during the fault fall back to "
        "direct RTP",
    ),
}

SLOW = Expectation(f"{ANSWERED}: by the slow provider, late, or by a fallback")
SLOW_OVERRIDES: dict[str, Expectation] = {
    "redis": Expectation(
        "every call to Redis is slow: turns may be late or lost, nothing crashes, and "
        "everything recovers after restore",
        answered=None,
    ),
    "stt": replace(SLOW, speech=True),
}


def expectation(target: str, mode: str) -> Expectation:
    if mode == "slow":
        return SLOW_OVERRIDES.get(target, SLOW)
    return EXPECTED[target]


def next_kind(target: str, settings: Settings, before: Turn) -> str:
    """The provider kind that should take over from the one the drill faults."""
    if target == "llm":
        return "fallback" if settings.fallback_models else "scripted"
    if before.provider(TTS) == "primary" and settings.local_tts == "espeak-ng":
        return "local"
    return "characters"


# What a target needs configured before any service has something to fault for it.
NEEDS = {
    "llm": "OPENAI_API_KEY",
    "llm-all": "OPENAI_API_KEY",
    "ari": "VAGENT_ARI_URL and VAGENT_ARI_PASSWORD",
    "rtpengine": "VAGENT_RTPENGINE_NG",
}
