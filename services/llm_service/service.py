"""llm_service: replies from OpenAI chat models, with a scripted fallback."""

from __future__ import annotations

from vagent.services.config import Settings
from vagent.services.health import Check, CheckResult
from vagent.services.llm_service.fallback import FallbackResponseManager, FallbackResponsesError
from vagent.services.openai_client import openai_check
from vagent.services.redis_client import RedisStore
from vagent.services.runtime import ServiceSpec, embedded_note, serve

NAME = "llm_service"


def scripted_check(settings: Settings) -> Check:
    """The scripted responder is the last link of the chain: it has to load."""

    severity = "warn" if settings.uses_openai else "fail"

    async def probe() -> CheckResult:
        try:
            manager = FallbackResponseManager.load(settings.fallback_responses)
        except FallbackResponsesError as exc:
            return CheckResult(severity, f"{exc}: fix it or unset VAGENT_FALLBACK_RESPONSES")
        note = embedded_note(settings, "scripted responder")
        return CheckResult(
            "pass", f"{note}: {len(manager.templates)} templates, {len(manager.faq)} FAQ entries"
        )

    return Check("local:scripted", "component", probe, settings.health_timeout_s, cache_s=10.0)


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    checks = [scripted_check(settings)]
    if settings.uses_openai:
        models = [settings.llm_model, *settings.fallback_models]
        checks.insert(0, openai_check(settings, models, settings.health_timeout_s))
    return ServiceSpec(checks=checks)


def main() -> None:
    serve(NAME, build)
