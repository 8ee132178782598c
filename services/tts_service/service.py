"""tts_service: speech from OpenAI TTS, with espeak-ng as the local engine."""

from __future__ import annotations

import asyncio
import shutil

from vagent.services.config import Settings
from vagent.services.health import Check, CheckResult
from vagent.services.openai_client import openai_check
from vagent.services.redis_client import RedisStore
from vagent.services.runtime import ServiceSpec, embedded_note, serve

NAME = "tts_service"


def espeak_check(settings: Settings) -> Check:
    """Runs the binary, so a broken install (missing data files) shows too."""

    async def probe() -> CheckResult:
        binary = shutil.which("espeak-ng")
        if binary is None:
            return CheckResult("fail", "espeak-ng not found: apt-get install espeak-ng")
        process = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            return CheckResult("fail", f"espeak-ng --version failed: {out.decode()[:200]}")
        version = out.decode().split(":")[1].split()[0] if b":" in out else "?"
        return CheckResult("pass", f"{embedded_note(settings, 'espeak-ng')} {version}")

    severity = "warn" if settings.uses_openai else "fail"
    return Check("local:espeak-ng", "component", probe, settings.health_timeout_s, 10.0, severity)


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    checks = [espeak_check(settings)]
    if settings.uses_openai:
        checks.insert(0, openai_check(settings, [settings.tts_model], settings.health_timeout_s))
    return ServiceSpec(checks=checks)


def main() -> None:
    serve(NAME, build)
