"""tts_service: speech from OpenAI TTS, with espeak-ng as the local engine."""

from __future__ import annotations

import asyncio
import shutil

from vagent.services.config import Settings
from vagent.services.health import Check, CheckFailed, CheckResult
from vagent.services.openai_client import openai_check
from vagent.services.redis_client import RedisStore
from vagent.services.runtime import ServiceSpec, embedded_note, local_engine_check, serve

NAME = "tts_service"


def espeak_check(settings: Settings) -> Check:
    """Runs the binary, so a broken install (missing data files) shows too."""

    async def probe() -> CheckResult:
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise CheckFailed("espeak-ng not found: apt-get install espeak-ng")
        process = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise CheckFailed(f"espeak-ng --version failed: {out.decode(errors='replace')[:200]}")
        version = out.decode(errors="replace").split(":")[1].split()[0] if b":" in out else "?"
        return CheckResult("pass", f"{embedded_note(settings, 'espeak-ng')} {version}")

    return local_engine_check(settings, "local:espeak-ng", probe)


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    checks = [espeak_check(settings)]
    if settings.uses_openai:
        checks.insert(0, openai_check(settings, [settings.tts_model], settings.health_timeout_s))
    return ServiceSpec(checks=checks)


def main() -> None:
    serve(NAME, build)
