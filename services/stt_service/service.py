"""stt_service: transcripts from OpenAI, with pocketsphinx as the local engine."""

from __future__ import annotations

from pathlib import Path

from vagent.services.config import Settings
from vagent.services.health import Check, CheckFailed, CheckResult
from vagent.services.openai_client import openai_check
from vagent.services.redis_client import RedisStore
from vagent.services.runtime import ServiceSpec, embedded_note, local_engine_check, serve

NAME = "stt_service"


def pocketsphinx_model() -> Path:
    """The English model ships inside the pocketsphinx wheel: no download at run time."""
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us" / "en-us"


def pocketsphinx_check(settings: Settings) -> Check:
    async def probe() -> CheckResult:
        try:
            model = pocketsphinx_model()
        except ImportError:
            raise CheckFailed("pocketsphinx is not installed: run `make install`") from None
        if not (model / "mdef").is_file():
            raise CheckFailed(f"pocketsphinx model missing at {model}: reinstall pocketsphinx")
        return CheckResult("pass", f"{embedded_note(settings, 'pocketsphinx')} (model en-us)")

    return local_engine_check(settings, "local:pocketsphinx", probe)


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    checks = [pocketsphinx_check(settings)]
    if settings.uses_openai:
        checks.insert(0, openai_check(settings, [settings.stt_model], settings.health_timeout_s))
    return ServiceSpec(checks=checks)


def main() -> None:
    serve(NAME, build)
