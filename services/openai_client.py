"""The official OpenAI client, configured for a policy layer, and its health check.

Left at its defaults the client retries twice on its own and waits up to
600 s: inside a live phone turn one "attempt" would be three requests and ten
minutes long. Both are set explicitly here so the policy layer stays in charge.
"""

from __future__ import annotations

import time

import openai

from vagent.services.config import Settings
from vagent.services.health import Check, CheckResult
from vagent.services.resilience import Dependency, Policy


def make_client(settings: Settings, timeout_s: float = 10.0) -> openai.AsyncOpenAI:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    return openai.AsyncOpenAI(
        api_key=key, base_url=settings.openai_base_url, max_retries=0, timeout=timeout_s
    )


def openai_dependency(settings: Settings, name: str, timeout_s: float) -> Dependency:
    """One breaker per OpenAI endpoint and model: a failing gpt-4o must not stop gpt-4o-mini."""
    return Dependency(
        Policy(
            name=name,
            timeout_s=timeout_s,
            attempts=2,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            fail_max=settings.breaker_fail_max,
            reset_timeout_s=settings.breaker_reset_s,
        )
    )


def _describe_failure(exc: Exception, model: str) -> str:
    """Distinct, actionable outputs: a bad key is not an outage, an outage is not a bad model."""
    if isinstance(exc, openai.AuthenticationError):
        return "API key rejected (401): set a valid OPENAI_API_KEY"
    if isinstance(exc, openai.PermissionDeniedError):
        return f"API key has no access to {model} (403): check the key's project and permissions"
    if isinstance(exc, openai.NotFoundError):
        return f"model {model} not found for this key (404): fix the model name in the config"
    if isinstance(exc, openai.APITimeoutError):
        return "OpenAI API did not answer in time: check network and OPENAI_BASE_URL"
    if isinstance(exc, openai.APIConnectionError):
        return "OpenAI API unreachable: check network, proxy and OPENAI_BASE_URL"
    if isinstance(exc, openai.APIStatusError):
        return f"OpenAI API answered HTTP {exc.status_code}: a provider-side problem"
    return f"{type(exc).__name__}: {exc}"


def openai_check(settings: Settings, models: list[str], timeout_s: float) -> Check:
    """Retrieve every configured model: proves the key, the network and the model ids at once.

    A failure is a warning, not a failure: the service still serves on its
    local fallback, and says so.
    """
    client = make_client(settings, timeout_s)

    async def probe() -> CheckResult:
        start = time.perf_counter()
        for model in models:
            try:
                await client.models.retrieve(model)
            except openai.OpenAIError as exc:
                return CheckResult("warn", _describe_failure(exc, model) + "; serving on fallback")
        ms = (time.perf_counter() - start) * 1000
        return CheckResult("pass", "models available: " + ", ".join(models), ms, "ms")

    # Cached for longer: each probe is a billable-adjacent call to a remote API.
    return Check(
        "openai:models", "component", probe, timeout_s=timeout_s, cache_s=15.0, failure="warn"
    )
