"""llm_service: replies from OpenAI chat models, with a scripted fallback."""

from __future__ import annotations

from vagent.services.config import Settings
from vagent.services.health import Check, CheckFailed, CheckResult
from vagent.services.llm_service.fallback import FallbackResponseManager, FallbackResponsesError
from vagent.services.openai_client import openai_check
from vagent.services.redis_client import RedisStore
from vagent.services.runtime import ServiceSpec, embedded_note, local_engine_check, serve

NAME = "llm_service"


def scripted_check(settings: Settings) -> Check:
    """The scripted responder is the last link of the chain: its file has to load."""

    async def probe() -> CheckResult:
        try:
            manager = FallbackResponseManager.load(settings.fallback_responses)
        except FallbackResponsesError as exc:
            raise CheckFailed(f"{exc}: fix it or unset VAGENT_FALLBACK_RESPONSES") from None
        note = embedded_note(settings, "scripted responder")
        return CheckResult(
            "pass", f"{note}: {len(manager.templates)} templates, {len(manager.faq)} FAQ entries"
        )

    return local_engine_check(settings, "local:scripted", probe)


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    checks = [scripted_check(settings)]
    if settings.uses_openai:
        models = [settings.llm_model, *settings.fallback_models]
        checks.insert(0, openai_check(settings, models, settings.health_timeout_s))
    return ServiceSpec(checks=checks)


def main() -> None:
    serve(NAME, build)
