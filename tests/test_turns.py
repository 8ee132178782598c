"""Caller turns end to end, one fault at a time: the supervised services, embedded
Redis, and the OpenAI double as the only way to OpenAI.

Every test asserts the turn still ends in audio, through the documented
fallback, within the turn budget.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from conftest import Stack, free_port_block, make_stack, wait_for
from support.openai_double import OpenAIDouble
from vagent.cli.probe import ProbeResult, probe_turn, spoken_wav
from vagent.services.config import Settings

pytestmark = pytest.mark.slow

KEY = "sk-test-turns-0123456789abcdef"
BUDGET_MS = 1500
RESET_S = 2.0
REPLY = "Our office is open from nine to five. Is there anything else?"


@pytest.fixture(scope="module")
def double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble(api_key=KEY, chat_reply=REPLY, transcription_text="When are you open?") as d:
        yield d


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, double: OpenAIDouble) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("turns"),
        OPENAI_API_KEY=KEY,
        OPENAI_BASE_URL=double.base_url,
        VAGENT_TURN_BUDGET_MS=str(BUDGET_MS),
        VAGENT_BREAKER_FAIL_MAX="3",
        VAGENT_BREAKER_RESET_S=str(RESET_S),
        VAGENT_LLM_FALLBACK_MODELS="gpt-4o-mini",
    )
    up = s.vagent("up", "--timeout", "60")
    assert up.returncode in (0, 1), up.stdout + up.stderr
    wait_for(lambda: _prompts_ready(s), 30, "the fixed prompts to be rendered")
    yield s
    s.vagent("down")


@pytest.fixture(autouse=True)
def healed(double: OpenAIDouble, stack: Stack) -> Iterator[None]:
    """Each test starts with a healthy double and every breaker closed."""
    double.reset()
    double.set_chat_reply(REPLY)
    double.set_transcription("When are you open?")
    yield
    double.reset()
    _close_breakers(stack)


def _prompts_ready(stack: Stack) -> bool:
    body = httpx.get(stack.url(4) + "/health", timeout=5).json()
    return bool(body["checks"]["prompts:cache"][0]["status"] == "pass")


SERVICE_OFFSETS = {"stt_service": 2, "llm_service": 3, "tts_service": 4}


def _breakers(stack: Stack, services: tuple[str, ...] = tuple(SERVICE_OFFSETS)) -> dict[str, str]:
    states = {}
    for service in services:
        checks = httpx.get(stack.url(SERVICE_OFFSETS[service]) + "/health", timeout=5).json()
        for name, entries in checks["checks"].items():
            if name.startswith("breaker:openai"):
                states[name] = entries[0]["output"]
    return states


def _close_breakers(stack: Stack) -> None:
    """A breaker closes only on a successful call; a fresh process starts closed."""
    for service in SERVICE_OFFSETS:
        if any(state != "closed" for state in _breakers(stack, (service,)).values()):
            result = stack.vagent("restart", service)
            assert result.returncode in (0, 1), result.stdout


def settings_of(stack: Stack) -> Settings:
    return Settings(
        home=Path(stack.env["VAGENT_HOME"]),
        port_base=int(stack.env["VAGENT_PORT_BASE"]),
        turn_budget_ms=BUDGET_MS,
    )


async def turn(stack: Stack, text: str | None = None, wav: bytes = b"") -> ProbeResult:
    return await probe_turn(settings_of(stack), text, wav, timeout_s=10)


def assert_answered(result: ProbeResult, stage: str, provider: str, model: str) -> None:
    assert result.complete, result
    assert result.audio_ms > 500, result
    assert result.first_audio_ms is not None and result.first_audio_ms <= BUDGET_MS, result
    record = result.stages[stage]
    assert (record["provider"], record["model"]) == (provider, model), result.stages


async def test_healthy_turn_is_served_by_every_primary(stack: Stack, double: OpenAIDouble) -> None:
    result = await turn(stack, wav=spoken_wav("When are you open?"))
    assert_answered(result, "stt", "primary", "openai:gpt-4o-mini-transcribe")
    assert result.stages["llm"]["model"] == "openai:gpt-4o"
    assert result.stages["tts"]["model"] == "openai:gpt-4o-mini-tts"
    assert result.transcript == "When are you open?"
    assert result.reply == REPLY
    # The reply flowed sentence by sentence: two sentences, two audio results.
    assert len(double.requests(route="speech")) == 2


async def test_primary_model_500s_the_fallback_model_answers(
    stack: Stack, double: OpenAIDouble
) -> None:
    double.fail("chat", 500, model="gpt-4o")
    result = await turn(stack, "When are you open?")
    assert_answered(result, "llm", "fallback", "openai:gpt-4o-mini")
    assert result.stages["llm"]["failed"] == ["openai:gpt-4o: transient"]
    assert result.reply == REPLY


@pytest.mark.parametrize("fault", ["hang", "stream_silent"])
async def test_primary_that_hangs_or_streams_nothing_fails_in_time(
    stack: Stack, double: OpenAIDouble, fault: str
) -> None:
    getattr(double, fault)("chat", model="gpt-4o")
    result = await turn(stack, "When are you open?")
    assert_answered(result, "llm", "fallback", "openai:gpt-4o-mini")


async def test_stream_cut_after_the_first_sentence_keeps_what_was_said(
    stack: Stack, double: OpenAIDouble
) -> None:
    double.stream_cut("chat", after_chunks=12, model="gpt-4o")
    result = await turn(stack, "When are you open?")
    assert_answered(result, "llm", "primary", "openai:gpt-4o")
    assert result.reply == "Our office is open from nine to five."


async def test_every_model_fails_the_scripted_reply_answers(
    stack: Stack, double: OpenAIDouble
) -> None:
    double.fail("chat", 503)
    result = await turn(stack, "What are your opening hours?")
    assert_answered(result, "llm", "scripted", "scripted")
    assert "Monday to Friday" in result.reply


async def test_rejected_key_opens_the_breaker_at_once(stack: Stack, double: OpenAIDouble) -> None:
    double.fail("chat", 401)
    result = await turn(stack, "hello")
    assert_answered(result, "llm", "scripted", "scripted")
    assert result.stages["llm"]["failed"] == [
        "openai:gpt-4o: permanent",
        "openai:gpt-4o-mini: permanent",
    ]
    assert len(double.requests(route="chat")) == 2  # no retry of a permanent error
    second = await turn(stack, "hello")
    assert_answered(second, "llm", "scripted", "scripted")
    assert second.stages["llm"]["failed"] == [
        "openai:gpt-4o: breaker_open",
        "openai:gpt-4o-mini: breaker_open",
    ]
    assert len(double.requests(route="chat")) == 2  # the open breakers sent nothing


async def test_unknown_model_falls_back_and_opens_its_breaker(
    stack: Stack, double: OpenAIDouble
) -> None:
    double.set_models(["gpt-4o-mini", "gpt-4o-mini-transcribe", "gpt-4o-mini-tts"])
    result = await turn(stack, "When are you open?")
    assert_answered(result, "llm", "fallback", "openai:gpt-4o-mini")
    assert result.stages["llm"]["failed"] == ["openai:gpt-4o: permanent"]
    states = _breakers(stack)
    assert states["breaker:openai-chat:gpt-4o"].startswith("open")


async def test_breaker_opens_after_its_threshold_fails_fast_and_recovers(
    stack: Stack, double: OpenAIDouble
) -> None:
    double.fail("chat", 500, model="gpt-4o")
    for _ in range(2):  # each turn: two attempts at gpt-4o (policy), three failures open it
        assert_answered(await turn(stack, "hi"), "llm", "fallback", "openai:gpt-4o-mini")
    assert _breakers(stack)["breaker:openai-chat:gpt-4o"].startswith("open")
    before = len(double.requests(route="chat", model="gpt-4o"))
    fast = await turn(stack, "hi")
    assert_answered(fast, "llm", "fallback", "openai:gpt-4o-mini")
    assert fast.stages["llm"]["failed"] == ["openai:gpt-4o: breaker_open"]
    assert len(double.requests(route="chat", model="gpt-4o")) == before
    healthy_llm = await turn(stack, "hi")  # the fallback model alone, for comparison
    assert fast.stages["llm"]["ms"] < healthy_llm.stages["llm"]["ms"] + 50
    double.reset()
    double.set_chat_reply(REPLY)
    await asyncio.sleep(RESET_S + 0.2)
    recovered = await turn(stack, "hi")
    assert_answered(recovered, "llm", "primary", "openai:gpt-4o")
    assert _breakers(stack)["breaker:openai-chat:gpt-4o"] == "closed"


async def test_health_is_degraded_while_a_fallback_serves(
    stack: Stack, double: OpenAIDouble
) -> None:
    double.fail("chat", 500, model="gpt-4o")
    await turn(stack, "hi")
    body = httpx.get(stack.url(3) + "/health", timeout=5).json()
    assert body["status"] == "degraded"
    assert "fallback openai:gpt-4o-mini" in body["checks"]["serving:llm"][0]["output"]
    metrics = httpx.get(stack.url(3) + "/metrics", timeout=5).text
    assert 'vagent_fallbacks_total{provider="openai:gpt-4o",reason="transient",stage="llm"}' in (
        metrics
    )


async def test_tts_down_espeak_speaks(stack: Stack, double: OpenAIDouble) -> None:
    double.fail("speech", 500)
    result = await turn(stack, "When are you open?")
    assert_answered(result, "tts", "local", "espeak-ng")


async def test_stt_down_pocketsphinx_transcribes(stack: Stack, double: OpenAIDouble) -> None:
    double.fail("transcriptions", 500)
    result = await turn(stack, wav=spoken_wav("hello"))
    assert_answered(result, "stt", "local", "pocketsphinx")
    assert result.reply == REPLY  # the transcript went on to the LLM


async def test_nothing_heard_plays_the_error_stt_prompt(stack: Stack, double: OpenAIDouble) -> None:
    double.set_transcription("")
    silence = spoken_wav(" ")
    result = await turn(stack, wav=silence)
    assert result.complete and result.audio_ms > 1000
    assert result.reply == "I'm sorry, I didn't catch that. Could you please repeat yourself?"
    assert result.stages["tts"]["provider"] == "prompt"


CONSUMER_NAME = "llm_service@"


def _llm_pending_owner(stack: Stack) -> int | None:
    client = redis.Redis(unix_socket_path=str(Path(stack.env["VAGENT_HOME"]) / "run/redis.sock"))
    for entry in client.xpending_range("vagent:llm", "llm_service", "-", "+", 10):
        name = entry["consumer"].decode()
        return int(name.rsplit(":", 1)[1])
    return None


async def test_llm_replica_killed_mid_turn_another_finishes_it(
    stack: Stack, double: OpenAIDouble, tmp_path: Path
) -> None:
    replica_env = {**stack.env, "VAGENT_PORT_BASE": str(free_port_block())}
    replica = subprocess.Popen(
        [sys.executable, "-m", "vagent.services.llm_service"],
        env=replica_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        replica_url = f"http://127.0.0.1:{int(replica_env['VAGENT_PORT_BASE']) + 3}/health/live"
        wait_for(lambda: _answers(replica_url), 20, "the second llm replica")
        double.hang("chat", count=1)  # whichever replica takes the turn hangs on it
        pending = asyncio.create_task(turn(stack, "When are you open?"))
        owner = None
        deadline = time.monotonic() + 2
        while owner is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            owner = _llm_pending_owner(stack)
        assert owner is not None, "no llm replica took the turn"
        os.kill(owner, signal.SIGKILL)
        result = await pending
    finally:
        replica.kill()
        replica.wait()
    # The rescuer has less of the budget left: it walks the chain from where time allows.
    llm = result.stages["llm"]
    assert_answered(result, "llm", llm["provider"], llm["model"])
    assert llm["provider"] in ("primary", "fallback", "scripted")
    assert result.reply
    wait_for(lambda: _answers(stack.url(3) + "/health/live"), 30, "llm_service to restart")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_probe_cli_json(stack: Stack) -> None:
    result = stack.vagent("probe", "--text", "What are your opening hours?", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    assert set(body) >= {"transcript", "reply", "stages", "first_audio_ms", "audio_ms"}
    for stage in ("stt", "llm", "tts"):
        assert {"provider", "model", "ms"} <= set(body["stages"][stage])
    assert body["reply"] == REPLY
    assert body["audio_ms"] > 1000
