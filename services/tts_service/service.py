"""tts_service: speech from OpenAI TTS, with espeak-ng as the local engine.

Sentences come in on the `tts` stream and leave as 8 kHz mu-law audio on the
call's results stream. When no engine yields audio in time, the result tells
the controller to speak the text with ARI `characters:` (Asterisk SayAlpha):
the caller hears something either way. Fixed prompts (greeting, filler,
error prompts) are rendered once at start and served from memory.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import Any

from vagent.services.audio import FRAME_MS, Audio, slin16_le, ulaw_decode
from vagent.services.bus import Bus, Envelope
from vagent.services.config import Settings
from vagent.services.health import Check, CheckFailed, CheckResult, ServingTracker, breaker_check
from vagent.services.openai_client import make_client, openai_check, openai_dependency
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import ChainExhausted, Link, walk
from vagent.services.responses import load_responses
from vagent.services.runtime import (
    ServiceSpec,
    consumer_worker,
    drill_name,
    embedded_note,
    local_engine_check,
    serve,
)
from vagent.services.tts_service.engines import EspeakTts, OpenAITts, TtsEngine, telephony
from vagent.services.tts_service.prompts import PromptCache, prompts_directory
from vagent.services.turn import TTS, stage_deadline, stage_record

NAME = "tts_service"
log = logging.getLogger("vagent.tts")

FLOOR_S = {"primary": 0.2, "local": 0.15}
SPEECH_ATTEMPT_TIMEOUT_S = 1.5
PROMPT_RENDER_BUDGET_S = 10.0


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


def prompts_check(prompts: PromptCache) -> Check:
    async def probe() -> CheckResult:
        missing = prompts.missing()
        if missing:
            return CheckResult("warn", f"not rendered yet: {', '.join(missing)}")
        engines = sorted({p.engine for n in prompts.names() if (p := prompts.get(n))})
        return CheckResult("pass", f"{len(prompts.names())} prompts cached ({', '.join(engines)})")

    return Check("prompts:cache", "component", probe, timeout_s=0.5, cache_s=1.0)


class TtsWorker:
    def __init__(
        self, bus: Bus, engines: list[TtsEngine], prompts: PromptCache, tracker: ServingTracker
    ) -> None:
        self.bus = bus
        self.engines = engines
        self.prompts = prompts
        self.tracker = tracker

    async def handle(self, envelope: Envelope) -> None:
        kind = envelope.body.get("type")
        if kind == "sentence":
            await self._speak(envelope, str(envelope.body.get("text", "")))
        elif kind == "prompt":
            await self._prompt(envelope, str(envelope.body.get("name", "ERROR_GENERIC")))
        elif kind == "end":
            await self._result(envelope, "end", {"count": envelope.body.get("count", 0)})
        else:
            raise ValueError(f"unknown tts message type {kind!r}")

    async def _speak(self, envelope: Envelope, text: str) -> None:
        started = time.perf_counter()
        links = [_link(engine, text) for engine in self.engines]
        try:
            served = await walk(TTS, links, stage_deadline(envelope, TTS))
        except ChainExhausted as exc:
            self.tracker.record("characters", "ari:characters", tuple(exc.failures))
            record = stage_record(None, started, provider="characters", model="ari:characters")
            await self._result(envelope, "say", {"text": text}, record)
            return
        self.tracker.record(served.link.kind, served.link.name, served.failures)
        await self._audio(envelope, text, served.value, stage_record(served, started))

    async def _prompt(self, envelope: Envelope, name: str) -> None:
        started = time.perf_counter()
        prompt = self.prompts.get(name)
        if prompt is None:
            text = self.prompts.responses.template(name)
            log.warning("prompt %s not rendered; asking for characters playback", name)
            record = stage_record(None, started, provider="characters", model="ari:characters")
            await self._result(envelope, "say", {"text": text, "prompt": name}, record)
            return
        record = stage_record(None, started, provider="prompt", model=prompt.engine)
        await self._audio(envelope, prompt.text, ulaw_decode(prompt.ulaw), record, prompt=name)

    async def _audio(
        self, envelope: Envelope, text: str, audio: Audio, record: dict[str, Any], **extra: Any
    ) -> None:
        output = envelope.body.get("output", "ulaw8k")
        # Resampling is CPU work: off the event loop, or a burst of replies would stall
        # every Redis reply behind it and trip the Redis breaker for no fault of Redis.
        encode = slin16_le if output == "slin16" else telephony
        data = await asyncio.to_thread(encode, audio)
        body = {"text": text, "format": output, "frame_ms": FRAME_MS, **extra}
        await self._result(envelope, "audio", body, record, data)

    async def _result(
        self,
        envelope: Envelope,
        kind: str,
        body: dict[str, Any],
        record: dict[str, Any] | None = None,
        audio: bytes = b"",
    ) -> None:
        trace = dict(envelope.body.get("trace", {}))
        if record is not None:
            trace[TTS] = record
        seq = envelope.body.get("seq", "end")
        full = {"type": kind, "seq": seq, **body, "trace": trace}
        message = envelope.follow_up(f"{envelope.turn_id}:result:{seq}", full, audio)
        await self.bus.publish_result(message)


def _link(engine: TtsEngine, text: str) -> Link[Audio]:
    async def run(deadline: float) -> Audio:
        return await engine.synthesize(text, deadline)

    return Link(engine.name, engine.kind, run, FLOOR_S.get(engine.kind, 0.0))


def tts_engines(settings: Settings) -> list[TtsEngine]:
    engines: list[TtsEngine] = []
    if settings.uses_openai:
        dependency = openai_dependency(
            settings, f"openai-tts:{settings.tts_model}", SPEECH_ATTEMPT_TIMEOUT_S
        )
        engines.append(
            OpenAITts(make_client(settings), settings.tts_model, settings.tts_voice, dependency)
        )
    if settings.local_tts == "espeak-ng" or not engines:
        engines.append(EspeakTts())
    return engines


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    engines = tts_engines(settings)
    prompts = PromptCache(
        load_responses(settings.fallback_responses), engines, prompts_directory(settings.home)
    )
    tracker = ServingTracker(TTS, "primary" if settings.uses_openai else "local")
    worker = TtsWorker(Bus(store), engines, prompts, tracker)

    async def warm_prompts() -> None:
        while prompts.missing():
            await prompts.warm(PROMPT_RENDER_BUDGET_S)
            await asyncio.sleep(5.0)

    checks = [espeak_check(settings), prompts_check(prompts), tracker.check()]
    if settings.uses_openai:
        checks.insert(0, openai_check(settings, [settings.tts_model], settings.health_timeout_s))
        checks += [breaker_check(e.dependency.breaker) for e in engines if isinstance(e, OpenAITts)]
    workers = [consumer_worker(NAME, store, TTS, worker.handle), warm_prompts]
    # The first engine only: the drill shows the next provider serving (espeak-ng, or
    # Asterisk characters:).
    targets = {"tts": [drill_name(engines[0])]}
    return ServiceSpec(checks=checks, workers=workers, fault_targets=targets)


def main() -> None:
    serve(NAME, build)
