"""The ARI events link against the ARI double: events flow, and the link heals.

Targets from the issue: a dead link is noticed within 3 s; the controller is
back within 1 s of Asterisk answering again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.ari_double import AriDouble
from vagent.services.call_controller.events import AriEvents, events_url, parse_event

PASSWORD = "events-secret"
TESTS = Path(__file__).resolve().parent


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def wait(self, kind: str, count: int = 1, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(e["type"] == kind for e in self.events) < count:
            assert time.monotonic() < deadline, f"no {kind} within {timeout}s"
            await asyncio.sleep(0.01)


@pytest.fixture
def ari() -> Iterator[AriDouble]:
    with AriDouble(user="vagent", password=PASSWORD) as double:
        yield double


@pytest.fixture
async def link(ari: AriDouble) -> AsyncIterator[tuple[AriEvents, Recorder]]:
    recorder = Recorder()
    events = AriEvents(ari.base_url, "vagent", PASSWORD, "vagent", recorder)
    task = asyncio.create_task(events.run())
    await asyncio.wait_for(events.connected.wait(), 5)
    yield events, recorder
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_events_url_carries_no_credentials() -> None:
    assert (
        events_url("http://127.0.0.1:8088", "vagent") == "ws://127.0.0.1:8088/ari/events?app=vagent"
    )
    assert events_url("https://pbx:8089/ari", "my app").startswith(
        "wss://pbx:8089/ari/events?app=my%20app"
    )


@pytest.mark.parametrize("frame", ["not json", "[1,2]", '{"no_type": 1}', b"\xff\xfe"])
def test_frames_that_are_not_events_are_refused(frame: str | bytes) -> None:
    assert parse_event(frame) is None


async def test_stasis_start_reaches_the_handler(
    ari: AriDouble, link: tuple[AriEvents, Recorder]
) -> None:
    _, recorder = link
    channel = await asyncio.to_thread(ari.start_inbound_call, ["inbound", "100"])
    await recorder.wait("StasisStart")
    start = next(e for e in recorder.events if e["type"] == "StasisStart")
    assert start["channel"]["id"] == channel
    assert start["args"] == ["inbound", "100"]


@pytest.mark.serial
async def test_dropped_websocket_is_back_within_a_second(
    ari: AriDouble, link: tuple[AriEvents, Recorder]
) -> None:
    events, recorder = link
    await asyncio.to_thread(ari.drop_websocket)
    start = time.monotonic()
    while events.connects < 2:
        assert time.monotonic() - start < 1.5, "not reconnected"
        await asyncio.sleep(0.01)
    await asyncio.to_thread(ari.start_inbound_call)
    await recorder.wait("StasisStart")


@pytest.mark.serial
async def test_asterisk_restart_reconnects_within_a_second_of_it_answering(
    ari: AriDouble, link: tuple[AriEvents, Recorder]
) -> None:
    events, _ = link
    await asyncio.to_thread(ari.restart, 2.0)  # down for 2 s, then answers again
    back_at = time.monotonic()
    while events.connects < 2:
        assert time.monotonic() - back_at < 1.2, "not back within a second of Asterisk"
        await asyncio.sleep(0.01)


@pytest.fixture
def ari_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "support.ari_double", "--port", "0", "--password", PASSWORD],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    yield process, ready["base_url"]
    os.kill(process.pid, signal.SIGCONT)
    process.terminate()
    process.wait(10)


@pytest.mark.serial
async def test_a_frozen_asterisk_is_noticed_within_3_seconds(
    ari_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, base_url = ari_process
    events = AriEvents(base_url, "vagent", PASSWORD, "vagent", Recorder())
    task = asyncio.create_task(events.run())
    try:
        await asyncio.wait_for(events.connected.wait(), 5)
        os.kill(process.pid, signal.SIGSTOP)  # alive, but answers nothing, not even pings
        frozen = time.monotonic()
        while events.connected.is_set():
            assert time.monotonic() - frozen < 3.5, "a dead link went unnoticed"
            await asyncio.sleep(0.05)
        assert time.monotonic() - frozen <= 3.2
        os.kill(process.pid, signal.SIGCONT)
        await asyncio.wait_for(events.connected.wait(), 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_refused_credentials_keep_retrying_and_say_why(ari: AriDouble) -> None:
    events = AriEvents(ari.base_url, "vagent", "wrong", "vagent", Recorder())
    task = asyncio.create_task(events.run())
    try:
        await asyncio.sleep(0.8)
        assert not events.connected.is_set()
        assert "401" in events.last_error
        assert "wrong" not in events.last_error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
