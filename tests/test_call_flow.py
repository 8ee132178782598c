"""Calls end to end: the four supervised services, the ARI double carrying real
RTP, and the OpenAI double. What a caller hears is what the double recorded
from the controller's RTP, decoded like Asterisk decodes it.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Stack, answering_stack, services_by_name, status, wait_for
from support.ari_double import AriDouble
from support.openai_double import OpenAIDouble
from vagent.cli.supervisor import Supervisor
from vagent.services.config import Settings

pytestmark = pytest.mark.slow

KEY = "sk-test-call-flow-0123456789"
PASSWORD = "ari-call-flow-secret"
REPLY = "We are open from nine to five on weekdays."
LONG_REPLY = " ".join(f"Sentence number {n} of a long answer is spoken now." for n in range(12))


@pytest.fixture(scope="module")
def doubles() -> Iterator[tuple[AriDouble, OpenAIDouble]]:
    with (
        AriDouble(user="vagent", password=PASSWORD, fail_on_violations=False) as ari,
        OpenAIDouble(api_key=KEY, chat_reply=REPLY, transcription_text="When are you open?") as ai,
    ):
        yield ari, ai


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, doubles: tuple[AriDouble, OpenAIDouble]
) -> Iterator[Stack]:
    ari, ai = doubles
    with answering_stack(
        tmp_path_factory.mktemp("calls"),
        ari,
        PASSWORD,
        healthy_within_s=30,
        OPENAI_API_KEY=KEY,
        OPENAI_BASE_URL=ai.base_url,
        VAGENT_LOCAL_TTS="none",
        VAGENT_DRAIN_S="5",
    ) as s:
        yield s


@pytest.fixture(autouse=True)
def healthy(doubles: tuple[AriDouble, OpenAIDouble], stack: Stack) -> Iterator[None]:
    """Each test starts with healthy doubles, and leaves no call behind."""
    _, ai = doubles
    ai.reset()
    ai.set_chat_reply(REPLY)
    ai.set_transcription("When are you open?")
    yield
    wait_for(lambda: live_calls(stack) == 0, 10, "every call of the test to be released")


@cache  # the same caller phrases recur: synthesize each once
def speech(text: str) -> bytes:
    return subprocess.run(
        ["espeak-ng", "--stdout", "-v", "en-us+m3", "-s", "150", text],
        capture_output=True,
        check=True,
    ).stdout


def heard_s(ari: AriDouble, channel: str) -> float:
    return float(ari.heard(channel).duration_s)


def call(ari: AriDouble, settle_s: float = 0.0) -> str:
    channel = ari.start_inbound_call(["inbound", "100"], answered=False)
    if settle_s:
        time.sleep(settle_s)
    return channel


def wait_heard(ari: AriDouble, channel: str, at_least_s: float, timeout: float = 15) -> float:
    wait_for(lambda: heard_s(ari, channel) >= at_least_s, timeout, f"{at_least_s}s of agent audio")
    return heard_s(ari, channel)


def wait_quiet(ari: AriDouble, channel: str, quiet_s: float = 0.6, timeout: float = 30) -> float:
    """Until the agent has spoken and then sent nothing for `quiet_s`; returns what the
    caller heard. (Every call hears at least its greeting: nothing yet is not quiet.)"""
    last = -1.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = heard_s(ari, channel)
        if now == last and now > 0:
            return now
        last = now
        time.sleep(quiet_s)
    raise AssertionError("the agent never stopped talking")


def live_calls(stack: Stack) -> int:
    entry = controller_health(stack)["checks"]["ari:events"][0]
    return int(entry.get("observedValue", -1))


def controller_status(stack: Stack) -> str:
    try:
        return str(controller_health(stack)["status"])
    except httpx.HTTPError:
        return "unreachable"


def controller_health(stack: Stack) -> dict[str, Any]:
    return dict(httpx.get(stack.url(1) + "/health", timeout=5).json())


def test_greeting_is_heard(stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]) -> None:
    ari, _ = doubles
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    assert greeting > 2.0
    assert ari.heard(channel).rms() > 500
    paths = [(r.method, r.path) for r in ari.requests]
    assert ("POST", f"/ari/channels/{channel}/answer") in paths
    ari.hangup(channel)


def test_caller_is_transcribed_and_answered_with_audio(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    ari, ai = doubles
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    ai.clear_requests()
    ari.say(channel, speech("When are you open?"))
    wait_heard(ari, channel, greeting + 0.5)
    total = wait_quiet(ari, channel, timeout=30)
    assert total - greeting > 1.5  # the reply, in the agent's voice
    [upload] = ai.requests(route="transcriptions")
    assert upload.body["file"]["size"] > 8000  # a real WAV of the caller's words
    assert ai.requests(route="chat") and ai.requests(route="speech")
    ari.hangup(channel)


def test_barge_in_stops_the_agent(stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]) -> None:
    ari, ai = doubles
    ai.set_chat_reply(LONG_REPLY)
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    ari.say(channel, speech("Tell me everything."))
    wait_heard(ari, channel, greeting + 2.0, timeout=20)  # the long reply is playing
    interrupted_at = time.time()
    ari.say(channel, speech("Stop, thank you."))
    time.sleep(2.5)
    sent = [p.time for p in ari.rtp_log(ari_media(ari, channel)) if p.accepted]
    gap = [t for t in sent if t > interrupted_at]
    stop_at = next((a for a, b in itertools.pairwise(gap) if b - a > 0.3), gap[-1] if gap else 0)
    assert stop_at - interrupted_at < 1.0, "the agent kept talking over the caller"
    metrics = httpx.get(stack.url(1) + "/metrics", timeout=5).text
    assert 'vagent_call_events_total{event="barge_in"}' in metrics
    ari.hangup(channel)


def spoken_by_asterisk(ari: AriDouble, channel: str) -> list[str]:
    return [m for p in ari.playback_log(channel) for m in p.media if m.startswith("characters:")]


def ari_media(ari: AriDouble, channel: str) -> str:
    return f"{channel}-media"


def test_hangup_mid_turn_frees_everything(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    ari, ai = doubles
    ai.latency("chat", delay=1.0)  # the reply is still being written when the caller leaves
    channel = call(ari)
    wait_quiet(ari, channel)
    ari.say(channel, speech("When are you open?"))
    ari.wait_until_said(channel)
    time.sleep(0.9)  # the utterance has ended; the turn is in flight
    ari.hangup(channel)
    hung_up = time.time()
    time.sleep(3.0)
    media = ari_media(ari, channel)
    assert not [p for p in ari.rtp_log(media) if p.time > hung_up + 0.1]
    paths = [(r.method, r.path) for r in ari.requests]
    assert ("DELETE", f"/ari/channels/{media}") in paths
    assert ("DELETE", f"/ari/bridges/vagent-{channel}") in paths
    wait_for(lambda: live_calls(stack) == 0, 5, "the controller to drop the call")


def test_tts_chain_down_asks_asterisk_to_speak(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    ari, ai = doubles
    channel = call(ari)
    wait_quiet(ari, channel)
    ai.fail("speech", 500)
    ari.say(channel, speech("When are you open?"))
    wait_for(lambda: bool(spoken_by_asterisk(ari, channel)), 15, "a characters: playback")
    assert spoken_by_asterisk(ari, channel)[0] == f"characters:{REPLY}"
    ari.hangup(channel)


@pytest.mark.serial
def test_twenty_concurrent_calls_each_get_their_own_answer(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    ari, _ = doubles
    channels = [call(ari) for _ in range(20)]
    greetings = {c: wait_quiet(ari, c, timeout=60) for c in channels}
    question = speech("When are you open?")
    for index, channel in enumerate(channels):
        if index % 2 == 0:  # half of the callers ask; the others stay quiet
            ari.say(channel, question)
    for channel in channels[0::2]:
        wait_heard(ari, channel, greetings[channel] + 0.5, timeout=30)
    heard = {c: wait_quiet(ari, c, quiet_s=1.0, timeout=60) for c in channels}
    replies = [heard[c] - greetings[c] for c in channels]
    asked, quiet = replies[0::2], replies[1::2]
    assert all(r > 1.5 for r in asked), asked
    assert all(r < 0.1 for r in quiet), quiet  # nobody heard another caller's answer
    assert max(asked) - min(asked) < 0.5  # and each asker heard exactly one answer
    for channel in channels:
        ari.hangup(channel)


def test_asterisk_restart_mid_call_then_new_calls_work(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    ari, _ = doubles
    channel = call(ari)
    wait_quiet(ari, channel)
    ari.restart(1.0)
    ari.wait_for_app(timeout=5)
    wait_for(lambda: live_calls(stack) == 0, 10, "the lost call to be released")
    fresh = call(ari)
    assert wait_quiet(ari, fresh) > 2.0
    ari.hangup(fresh)


def test_redis_down_the_caller_hears_the_error_prompt_and_goes_back_to_the_dialplan(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    ari, _ = doubles
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    rpc = Supervisor(Settings(home=stack.home)).rpc()
    rpc.stopProcess("redis")
    try:
        ari.say(channel, speech("When are you open?"))
        wait_heard(ari, channel, greeting + 0.5, timeout=20)
        total = wait_quiet(ari, channel, timeout=30)
        assert total - greeting > 2.0  # "I'm sorry, something went wrong..."
        paths = [(r.method, r.path) for r in ari.requests]
        assert ("POST", f"/ari/channels/{channel}/continue") in paths
    finally:
        rpc.startProcess("redis")
    wait_for(lambda: controller_status(stack) == "healthy", 20, "recovery")


def test_sigterm_drains_live_calls_and_sends_newcomers_back_to_the_dialplan(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    ari, _ = doubles
    live = call(ari)
    wait_quiet(ari, live)
    controller = int(services_by_name(status(stack)[1])["call_controller"]["pid"])
    os.kill(controller, signal.SIGTERM)  # what supervisord sends on `vagent down`
    time.sleep(0.5)
    newcomer = call(ari)
    paths = lambda: [(r.method, r.path) for r in ari.requests]  # noqa: E731
    wait_for(lambda: ("POST", f"/ari/channels/{newcomer}/continue") in paths(), 5, "continue")
    assert Path(f"/proc/{controller}").exists()  # still serving the live call
    assert ("DELETE", f"/ari/bridges/vagent-{live}") not in paths()
    ari.hangup(live)
    wait_for(lambda: not Path(f"/proc/{controller}").exists(), 5, "the drained controller to exit")
    assert ("DELETE", f"/ari/bridges/vagent-{live}") in paths()
    ari.hangup(newcomer)
    wait_for(lambda: controller_status(stack) == "healthy", 30, "a new controller")
