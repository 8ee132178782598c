"""llm_service: replies from OpenAI chat models, with a scripted fallback.

A transcript comes in on the `llm` stream; the reply goes out to `tts`
sentence by sentence as the model writes it. The chain: the primary model,
each fallback model, then the scripted responder, walked within the turn's
budget.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from vagent.services.bus import Bus, Envelope
from vagent.services.config import Settings
from vagent.services.health import Check, CheckFailed, CheckResult, ServingTracker, breaker_check
from vagent.services.llm_service.engines import (
    ChatEngine,
    Message,
    OpenAIChat,
    Reply,
    ScriptedChat,
)
from vagent.services.llm_service.history import History
from vagent.services.openai_client import make_client, openai_check, openai_dependency
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import Link, walk
from vagent.services.responses import (
    FallbackResponseManager,
    FallbackResponsesError,
    load_responses,
)
from vagent.services.runtime import (
    ServiceSpec,
    consumer_worker,
    embedded_note,
    local_engine_check,
    serve,
)
from vagent.services.turn import (
    LLM,
    TTS,
    follow_up_deadline,
    passed_on,
    stage_deadline,
    stage_record,
)

NAME = "llm_service"
log = logging.getLogger("vagent.llm")

# Time each link leaves to the links after it (see resilience.walk).
FLOOR_S = {"primary": 0.35, "fallback": 0.35, "scripted": 0.02}
CHAT_ATTEMPT_TIMEOUT_S = 1.2


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


class LlmWorker:
    def __init__(
        self,
        bus: Bus,
        history: History,
        engines: list[ChatEngine],
        responses: FallbackResponseManager,
        tracker: ServingTracker,
        budget_s: float,
    ) -> None:
        self.bus = bus
        self.history = history
        self.engines = engines
        self.responses = responses
        self.tracker = tracker
        self.budget_s = budget_s

    async def handle(self, envelope: Envelope) -> None:
        started = time.perf_counter()
        said = str(envelope.body.get("text", ""))
        deadline = stage_deadline(envelope, LLM)
        messages = await self._messages(envelope.call_id, said, deadline)
        links = [_link(engine, messages) for engine in self.engines]
        served = await walk(LLM, links, deadline)
        self.tracker.record(served.link.kind, served.link.name, served.failures)
        trace = {**envelope.body.get("trace", {}), LLM: stage_record(served, started)}
        spoken = [served.value.first]
        await self._say(envelope, 0, served.value.first, trace)
        async for piece in served.value.rest:
            await self._say(envelope, len(spoken), piece, trace)
            spoken.append(piece)
        await self._publish(envelope, "end", {"type": "end", "count": len(spoken), "trace": trace})
        await self.history.append(envelope.call_id, said, " ".join(spoken))

    async def _messages(self, call_id: str, said: str, deadline: float) -> list[Message]:
        system: Message = {"role": "system", "content": self.responses.system_prompt}
        past = await self.history.load(call_id, deadline)
        return [system, *past, {"role": "user", "content": said}]

    async def _say(self, envelope: Envelope, seq: int, text: str, trace: dict[str, Any]) -> None:
        body = {"type": "sentence", "seq": seq, "text": text, "trace": trace}
        await self._publish(envelope, str(seq), body)

    async def _publish(self, envelope: Envelope, suffix: str, body: dict[str, Any]) -> None:
        deadline = follow_up_deadline(envelope.deadline, self.budget_s)
        body = passed_on(envelope, body)
        message = envelope.follow_up(f"{envelope.turn_id}:tts:{suffix}", body, deadline=deadline)
        await self.bus.publish(TTS, message)


def _link(engine: ChatEngine, messages: list[Message]) -> Link[Reply]:
    async def run(deadline: float) -> Reply:
        return await engine.start(messages, deadline)

    return Link(engine.name, engine.kind, run, FLOOR_S.get(engine.kind, 0.0))


def chat_engines(settings: Settings, responses: FallbackResponseManager) -> list[ChatEngine]:
    engines: list[ChatEngine] = []
    if settings.uses_openai:
        client = make_client(settings)
        for index, model in enumerate([settings.llm_model, *settings.fallback_models]):
            dependency = openai_dependency(settings, f"openai-chat:{model}", CHAT_ATTEMPT_TIMEOUT_S)
            kind = "primary" if index == 0 else "fallback"
            engines.append(OpenAIChat(client, model, kind, dependency))
    engines.append(ScriptedChat(responses))
    return engines


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    responses = load_responses(settings.fallback_responses)
    engines = chat_engines(settings, responses)
    tracker = ServingTracker(LLM, "primary" if settings.uses_openai else "scripted")
    worker = LlmWorker(
        Bus(store), History(store), engines, responses, tracker, settings.turn_budget_ms / 1000
    )
    checks = [scripted_check(settings), tracker.check()]
    spec = ServiceSpec(checks=checks, workers=[consumer_worker(NAME, store, LLM, worker.handle)])
    chat = [e.dependency for e in engines if isinstance(e, OpenAIChat)]
    if chat:  # without a key the scripted responder is all there is: nothing to drill
        models = [settings.llm_model, *settings.fallback_models]
        checks.insert(0, openai_check(settings, models, settings.health_timeout_s))
        checks += [breaker_check(dependency.breaker) for dependency in chat]
        spec.fault_targets = {
            "llm": [chat[0].policy.name],
            "llm-all": [dependency.policy.name for dependency in chat],
        }
    return spec


def main() -> None:
    serve(NAME, build)
