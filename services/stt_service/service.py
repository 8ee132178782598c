"""stt_service: transcripts from OpenAI, with pocketsphinx as the local engine.

An utterance comes in on the `stt` stream; its transcript goes on to `llm`.
When no engine hears anything, the turn skips the LLM: tts is asked for the
ERROR_STT prompt ("I'm sorry, I didn't catch that..."), so the caller still
hears an answer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from vagent.services.audio import Audio, AudioFormatError, read_wav, ulaw_decode
from vagent.services.bus import Bus, Envelope
from vagent.services.config import Settings
from vagent.services.health import Check, CheckFailed, CheckResult, ServingTracker, breaker_check
from vagent.services.openai_client import make_client, openai_check, openai_dependency
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import ChainExhausted, Link, walk
from vagent.services.runtime import (
    ServiceSpec,
    consumer_worker,
    drill_name,
    embedded_note,
    local_engine_check,
    serve,
)
from vagent.services.stt_service.engines import OpenAIStt, PocketsphinxStt, SttEngine
from vagent.services.turn import LLM, STT, TTS, passed_on, stage_deadline, stage_record

NAME = "stt_service"
log = logging.getLogger("vagent.stt")

FLOOR_S = {"primary": 0.5, "local": 0.5}
TRANSCRIBE_ATTEMPT_TIMEOUT_S = 2.0


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


def utterance(envelope: Envelope) -> Audio:
    """The caller's audio: a WAV, or raw 8 kHz mu-law from the phone line."""
    if envelope.body.get("format") == "ulaw8k":
        return ulaw_decode(envelope.audio)
    return read_wav(envelope.audio)


class SttWorker:
    def __init__(self, bus: Bus, engines: list[SttEngine], tracker: ServingTracker) -> None:
        self.bus = bus
        self.engines = engines
        self.tracker = tracker

    async def handle(self, envelope: Envelope) -> None:
        started = time.perf_counter()
        trace: dict[str, Any] = dict(envelope.body.get("trace", {}))
        try:
            audio = utterance(envelope)
        except AudioFormatError as exc:
            trace[STT] = stage_record(None, started, provider="none", error=str(exc))
            await self._not_understood(envelope, trace)
            return
        links = [_link(engine, audio) for engine in self.engines]
        try:
            served = await walk(STT, links, stage_deadline(envelope, STT))
        except ChainExhausted as exc:
            trace[STT] = stage_record(None, started, provider="none", error=str(exc))
            await self._not_understood(envelope, trace)
            return
        self.tracker.record(served.link.kind, served.link.name, served.failures)
        trace[STT] = stage_record(served, started, text=served.value)
        if not served.value:
            await self._not_understood(envelope, trace)
            return
        body = passed_on(envelope, {"text": served.value, "trace": trace})
        await self.bus.publish(LLM, envelope.follow_up(f"{envelope.turn_id}:llm", body))

    async def _not_understood(self, envelope: Envelope, trace: dict[str, Any]) -> None:
        """Nothing heard: the caller hears ERROR_STT, and the turn ends there."""
        turn = envelope.turn_id
        prompt = passed_on(
            envelope, {"type": "prompt", "seq": 0, "name": "ERROR_STT", "trace": trace}
        )
        await self.bus.publish(TTS, envelope.follow_up(f"{turn}:tts:0", prompt))
        end = {"type": "end", "count": 1, "trace": trace}
        await self.bus.publish(TTS, envelope.follow_up(f"{turn}:tts:end", end))


def _link(engine: SttEngine, audio: Audio) -> Link[str]:
    async def run(deadline: float) -> str:
        return await engine.transcribe(audio, deadline)

    return Link(engine.name, engine.kind, run, FLOOR_S.get(engine.kind, 0.0))


def stt_engines(settings: Settings) -> tuple[list[SttEngine], PocketsphinxStt]:
    local = PocketsphinxStt()
    engines: list[SttEngine] = []
    if settings.uses_openai:
        dependency = openai_dependency(
            settings, f"openai-stt:{settings.stt_model}", TRANSCRIBE_ATTEMPT_TIMEOUT_S
        )
        engines.append(OpenAIStt(make_client(settings), settings.stt_model, dependency))
    engines.append(local)
    return engines, local


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    engines, local = stt_engines(settings)
    tracker = ServingTracker(STT, "primary" if settings.uses_openai else "local")
    worker = SttWorker(Bus(store), engines, tracker)
    checks = [pocketsphinx_check(settings), tracker.check()]
    if settings.uses_openai:
        checks.insert(0, openai_check(settings, [settings.stt_model], settings.health_timeout_s))
        checks += [breaker_check(e.dependency.breaker) for e in engines if isinstance(e, OpenAIStt)]
    workers = [consumer_worker(NAME, store, STT, worker.handle), local.warm]
    # Every recognizer: the caller then hears the ERROR_STT prompt.
    targets = {"stt": [drill_name(engine) for engine in engines]}
    return ServiceSpec(checks=checks, workers=workers, fault_targets=targets)


def main() -> None:
    serve(NAME, build)
