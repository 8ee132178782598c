"""Defects the chaos soak (bench/chaos.py) found, each pinned by a test on a real stack.

The stack is the one of test_call_flow: four supervised services, the ARI
double carrying real RTP and the OpenAI double.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import soxr
from test_call_flow import (
    KEY,
    LONG_REPLY,
    PASSWORD,
    REPLY,
    call,
    controller_health,
    heard_s,
    live_calls,
    speech,
    wait_heard,
    wait_quiet,
)

from conftest import (
    RedisServer,
    Stack,
    answering_stack,
    services_by_name,
    status,
    wait_for,
)
from support.ari_double import AriDouble
from support.openai_double import OpenAIDouble
from vagent.cli.supervisor import Supervisor
from vagent.services.audio import Audio, read_wav
from vagent.services.config import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def doubles() -> Iterator[tuple[AriDouble, OpenAIDouble]]:
    with (
        AriDouble(user="vagent", password=PASSWORD) as ari,
        OpenAIDouble(api_key=KEY, chat_reply=REPLY, transcription_text="When are you open?") as ai,
    ):
        yield ari, ai


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """An external Redis, so a test can restart it under the services."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    doubles: tuple[AriDouble, OpenAIDouble],
    redis_server: RedisServer,
) -> Iterator[Stack]:
    ari, ai = doubles
    with answering_stack(
        tmp_path_factory.mktemp("chaos-regressions"),
        ari,
        PASSWORD,
        healthy_within_s=40,
        VAGENT_REDIS_URL=redis_server.url,
        OPENAI_API_KEY=KEY,
        OPENAI_BASE_URL=ai.base_url,
        VAGENT_DRAIN_S="5",
    ) as s:
        yield s


@pytest.fixture(autouse=True)
def clean(doubles: tuple[AriDouble, OpenAIDouble], stack: Stack) -> Iterator[None]:
    _, ai = doubles
    ai.reset()
    yield
    wait_for(lambda: live_calls(stack) == 0, 15, "every call of the test to be released")


def kill_controller(stack: Stack, ari: AriDouble) -> None:
    """kill -9, then wait for supervisord's new controller to hold the app again."""
    pid = int(services_by_name(status(stack)[1])["call_controller"]["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _new_controller_connected(stack, pid), 40, "a new controller")
    ari.wait_for_app(timeout=10)


def _new_controller_connected(stack: Stack, old_pid: int) -> bool:
    try:
        pid = services_by_name(status(stack)[1])["call_controller"]["pid"]
        events = controller_health(stack)["checks"]["ari:events"][0]
    except Exception:
        return False
    return pid not in (None, old_pid) and events["status"] == "pass"


def media_channels(ari: AriDouble, caller: str) -> list[dict[str, Any]]:
    return [c for c in ari.state()["channels"] if c["id"] == f"{caller}-media"]


def in_stasis(ari: AriDouble, channel: str) -> bool:
    found = ari.channel(channel)
    return found is not None and found["dialplan"]["app_name"] == "Stasis"


def test_a_call_survives_a_controller_killed_with_sigkill(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    """The soak found callers left in the Stasis app, in silence, for as long as they
    stayed on the line: the new controller did not know the calls of the one that died.
    Now it takes them over: a fresh media channel, the caller is asked to repeat, and
    the conversation goes on."""
    ari, _ = doubles
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    kill_controller(stack, ari)
    resumed = wait_heard(ari, channel, greeting + 1.0, timeout=20)  # "...could you repeat?"
    heard = wait_quiet(ari, channel)
    assert heard - greeting > 2.0, resumed
    assert in_stasis(ari, channel)
    assert len(media_channels(ari, channel)) == 1  # the dead process's one is gone
    ari.say(channel, speech("When are you open?"))
    wait_heard(ari, channel, heard + 1.5, timeout=20)  # answered again
    ari.hangup(channel)


def test_leftovers_of_a_call_that_ended_while_no_controller_ran_are_cleared(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    """The bridge and the ExternalMedia channel of a caller who hung up while the
    controller was dead would otherwise stay in Asterisk for good."""
    ari, _ = doubles
    channel = call(ari)
    wait_quiet(ari, channel)
    pid = int(services_by_name(status(stack)[1])["call_controller"]["pid"])
    os.kill(pid, signal.SIGKILL)
    ari.hangup(channel)
    wait_for(lambda: _new_controller_connected(stack, pid), 40, "a new controller")
    wait_for(lambda: not media_channels(ari, channel), 10, "the orphaned media channel to go")
    bridges = [b["id"] for b in ari.state()["bridges"]]
    assert f"vagent-{channel}" not in bridges


def cough(ms: int = 120) -> Audio:
    """A burst of voice too short to be an utterance: it starts a barge-in, then the
    endpointer discards it (less than 200 ms of speech)."""
    wav = read_wav(speech("Stop"))
    samples = np.frombuffer(wav.pcm, dtype="<i2").astype(np.float32)
    voice = soxr.resample(samples, wav.rate, 8000).astype(np.int16)
    onset = int(np.nonzero(np.abs(voice) > 1000)[0][0]) + 400
    return Audio(voice[onset : onset + 8 * ms].tobytes(), 8000)


def test_a_cough_that_stops_the_agent_is_followed_by_audio(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    """The soak found a caller left in silence: a call resumed after a controller crash
    played its prompt while the caller was finishing a sentence; the tail stopped the
    prompt (barge-in) and was too short to be an utterance. Any barge-in that comes to
    nothing now asks the caller to repeat, instead of leaving them waiting."""
    ari, ai = doubles
    ai.set_chat_reply(LONG_REPLY)
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    ari.say(channel, speech("Tell me everything."))
    wait_heard(ari, channel, greeting + 2.0, timeout=20)  # the long reply is playing
    ari.say(channel, cough())
    ari.wait_until_said(channel)
    time.sleep(0.3)
    stopped_at = heard_s(ari, channel)
    after = wait_quiet(ari, channel, quiet_s=1.0)
    assert after - stopped_at > 2.0  # "I'm sorry, I didn't catch that. Could you..."
    assert after - greeting < len(LONG_REPLY) * 0.06  # and the long reply did stop
    ari.hangup(channel)


def test_a_turn_that_ends_while_redis_restarts_is_answered(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble], redis_server: RedisServer
) -> None:
    """The soak found that a Redis restart of a second or two cost the turn being handed
    over: three quick attempts failed, the caller heard the error prompt and was sent
    back to the dialplan; and after Redis was back every service's Redis breaker stayed
    open for 5 s, past the turn's deadline. The utterance is now handed over until the
    turn's budget, then for as long as the filler plays, and the breaker lets traffic
    back within half a second. Here Redis is away for about two seconds."""
    ari, ai = doubles
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    ai.clear_requests()
    ari.say(channel, speech("When are you open?"))
    ari.wait_until_said(channel)
    redis_server.stop()  # the utterance ends (660 ms of silence) while Redis is down
    time.sleep(2.0)  # back after the budget, while the filler plays
    redis_server.start()
    answered(ari, ai, channel, greeting)


def test_a_turn_redis_forgot_in_a_restart_is_sent_again(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble], redis_server: RedisServer
) -> None:
    """Redis keeps nothing across a restart (the bus holds live turns only): a turn
    waiting in a stream was gone, and the caller heard the filler, then the error
    prompt, then went back to the dialplan. A turn with no reply at its budget is now
    handed to the bus again; the copy is skipped when the first one was only slow."""
    ari, ai = doubles
    rpc = Supervisor(Settings(home=stack.home)).rpc()
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    ai.clear_requests()
    rpc.stopProcess("stt_service")  # nobody takes the turn off the stt stream...
    try:
        bus = redis.Redis.from_url(redis_server.url)
        before = bus.xlen("vagent:stt")
        ari.say(channel, speech("When are you open?"))
        wait_for(lambda: bus.xlen("vagent:stt") > before, 10, "the turn on the stt stream")
        redis_server.stop()  # ...and Redis forgets it
        redis_server.start()
    finally:
        rpc.startProcess("stt_service", False)
    answered(ari, ai, channel, greeting)


def answered(ari: AriDouble, ai: OpenAIDouble, channel: str, greeting: float) -> None:
    """The caller heard an answer and is still with the agent, once the turn's deadline
    and an error prompt would both be over: an error would have sent them back to the
    dialplan (`continue`). The turn was transcribed once at most: copies are skipped."""
    time.sleep(12)
    assert heard_s(ari, channel) - greeting > 2.0
    assert in_stasis(ari, channel)
    assert ("POST", f"/ari/channels/{channel}/continue") not in [
        (r.method, r.path) for r in ari.requests
    ]
    assert len(ai.requests(route="transcriptions")) <= 1
    ari.hangup(channel)


def test_what_the_agent_started_while_the_caller_spoke_stops_when_they_finish(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    """The soak found callers hearing the same prompt twice in a row: a call resumed
    after a controller crash asked them to repeat while they were already speaking
    (no barge-in: they started first), and the answer to what they said followed the
    whole prompt. Agent audio that started while the caller was talking is now cut when
    they finish, like a barge-in. Here: a slow first answer (the primary model is late,
    the fallback's long reply comes) starts while the caller, who did not wait for it,
    asks something else; the second answer is the primary's short one."""
    ari, ai = doubles
    long_reply = " ".join(f"Sentence number {n} of a long answer is spoken now." for n in range(4))
    ai.set_chat_reply(long_reply, model="gpt-4o-mini")
    ai.latency("chat", delay=1.0, model="gpt-4o", count=1)  # the first turn falls back
    channel = call(ari)
    greeting = wait_quiet(ari, channel)
    first, second = read_wav(speech("When are you open?")), read_wav(speech("And the prices"))
    pause = bytes(2 * first.rate)  # one second of silence: two utterances
    ari.say(channel, Audio(first.pcm + pause + second.pcm, first.rate))
    ari.wait_until_said(channel, timeout=20)
    total = wait_quiet(ari, channel, quiet_s=1.5) - greeting
    assert [r.model for r in ai.requests(route="chat")][-1:] == ["gpt-4o"]  # a short 2nd
    assert total < len(long_reply) * 0.06 - 2.0, total  # the long first answer was cut
    assert total > len(REPLY) * 0.06, total  # and the second one was heard
    ari.hangup(channel)


def test_the_filler_plays_at_the_budget_while_redis_hangs(
    stack: Stack, doubles: tuple[AriDouble, OpenAIDouble]
) -> None:
    """The soak on a loaded host found turns with no audio for seven seconds: the
    filler's timer only started once the utterance was on the bus, and a Redis that
    answers slowly held the hand-over (three attempts of up to 2 s). The filler is the
    controller's own and now plays at the budget whatever Redis does; a bus still
    away when it ends is down: the error prompt follows."""
    ari, _ = doubles
    channel = call(ari)
    wait_quiet(ari, channel)
    held = stack.vagent(
        "simulate-failure", "redis", "--mode", "timeout", "--duration", "30s", "--hold"
    )
    assert held.returncode == 0, held.stdout + held.stderr
    try:
        start = len(ari.heard_chunks(channel))
        ari.say(channel, speech("When are you open?"))
        ari.wait_until_said(channel)
        said = ari.speech_log(channel)[-1].finished_at or 0.0
        wait_for(lambda: len(ari.heard_chunks(channel)) > start, 10, "agent audio")
        first = ari.heard_chunks(channel, start)[0].time
        assert first - said < 1.5 + 0.66 + 0.5  # the budget, not the Redis timeouts
        wait_for(
            lambda: (
                ("POST", f"/ari/channels/{channel}/continue")
                in [(r.method, r.path) for r in ari.requests]
            ),
            20,
            "the error prompt, then the dialplan",
        )
    finally:
        stack.vagent("restore", "redis")
    ari.hangup(channel)
