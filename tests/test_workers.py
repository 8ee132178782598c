"""Stage workers against real Redis: the last links of their chains."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import redis

from conftest import RedisServer
from support.openai_double import OpenAIDouble
from vagent.services.audio import Audio
from vagent.services.bus import Bus, Envelope, decode, result_key, stream_key
from vagent.services.health import ServingTracker
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import Dependency, Policy
from vagent.services.responses import FallbackResponseManager
from vagent.services.stt_service.service import SttWorker
from vagent.services.tts_service.engines import EspeakTts, OpenAITts
from vagent.services.tts_service.prompts import PromptCache
from vagent.services.tts_service.service import TtsWorker

KEY = "sk-test-workers-0123456789"


@pytest.fixture
async def bus(redis_server: RedisServer) -> AsyncIterator[Bus]:
    store = RedisStore(redis_server.url)
    yield Bus(store)
    await store.close()


def envelope(body: dict[str, Any], audio: bytes = b"") -> Envelope:
    turn = uuid.uuid4().hex
    return Envelope(f"call-{turn[:6]}", turn, time.time() + 1.5, f"{turn}:x", body, audio)


def results(redis_server: RedisServer, call_id: str) -> list[Envelope]:
    raw = redis.Redis(port=redis_server.port).xrange(result_key(call_id))
    return [decode(fields) for _, fields in raw]


async def test_no_tts_engine_left_asks_asterisk_to_speak_the_text(
    bus: Bus, redis_server: RedisServer
) -> None:
    with OpenAIDouble(api_key=KEY) as double:
        double.fail("speech", 500)
        client = openai.AsyncOpenAI(api_key=KEY, base_url=double.base_url, max_retries=0)
        dependency = Dependency(Policy("openai-tts", timeout_s=1, attempts=1))
        engines = [
            OpenAITts(client, "gpt-4o-mini-tts", "alloy", dependency),
            EspeakTts(binary="/nonexistent/espeak-ng"),
        ]
        prompts = PromptCache(FallbackResponseManager.load(), engines)
        worker = TtsWorker(bus, engines, prompts, ServingTracker("tts", "primary"))
        message = envelope({"type": "sentence", "seq": 0, "text": "We open at nine.", "trace": {}})
        await worker.handle(message)
    [result] = results(redis_server, message.call_id)
    assert result.body["type"] == "say"
    assert result.body["text"] == "We open at nine."
    assert result.body["trace"]["tts"]["provider"] == "characters"
    assert result.audio == b""


async def test_unrendered_prompt_is_spoken_by_asterisk(bus: Bus, redis_server: RedisServer) -> None:
    engines = [EspeakTts(binary="/nonexistent/espeak-ng")]
    prompts = PromptCache(FallbackResponseManager.load(), engines)
    worker = TtsWorker(bus, engines, prompts, ServingTracker("tts", "local"))
    message = envelope({"type": "prompt", "seq": 0, "name": "ERROR_GENERIC", "trace": {}})
    await worker.handle(message)
    [result] = results(redis_server, message.call_id)
    assert result.body["type"] == "say"
    assert result.body["prompt"] == "ERROR_GENERIC"
    assert result.body["text"].startswith("I'm sorry, something went wrong")


async def test_unknown_tts_message_is_refused(bus: Bus) -> None:
    worker = TtsWorker(
        bus,
        [],
        PromptCache(FallbackResponseManager.load(), [EspeakTts()]),
        ServingTracker("tts", "local"),
    )
    with pytest.raises(ValueError, match="unknown tts message type"):
        await worker.handle(envelope({"type": "sing"}))


async def test_undecodable_utterance_gets_the_error_stt_prompt(
    bus: Bus, redis_server: RedisServer
) -> None:
    worker = SttWorker(bus, [], ServingTracker("stt", "local"))
    message = envelope({"format": "wav", "trace": {}}, audio=b"definitely not a wav")
    await worker.handle(message)
    raw = redis.Redis(port=redis_server.port).xrange(stream_key("tts"))
    sent = [decode(fields).body for _, fields in raw]
    assert [b["type"] for b in sent] == ["prompt", "end"]
    assert sent[0]["name"] == "ERROR_STT"
    assert "not a readable WAV" in sent[0]["trace"]["stt"]["error"]
    assert sent[1]["count"] == 1


@pytest.mark.parametrize(("output", "bytes_per_s"), [("ulaw8k", 8000), ("slin16", 32000)])
async def test_audio_comes_in_the_format_the_turn_asked_for(
    bus: Bus, redis_server: RedisServer, output: str, bytes_per_s: int
) -> None:
    engines = [EspeakTts()]
    prompts = PromptCache(FallbackResponseManager.load(), engines)
    worker = TtsWorker(bus, engines, prompts, ServingTracker("tts", "local"))
    body = {"type": "sentence", "seq": 0, "text": "We open at nine.", "trace": {}}
    message = envelope({**body, "output": output})
    await worker.handle(message)
    [result] = results(redis_server, message.call_id)
    assert result.body["format"] == output
    seconds = len(result.audio) / bytes_per_s
    assert 0.8 < seconds < 3.0
    if output == "slin16":
        decoded = Audio(result.audio, 16000)
        assert decoded.rms() > 500
