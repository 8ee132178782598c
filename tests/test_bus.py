"""The bus against a real redis-server: nothing lost, nothing twice, nothing crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from conftest import RedisServer
from vagent.services.bus import (
    DEAD_LETTER,
    Bus,
    Consumer,
    ConsumerConfig,
    Envelope,
    PoisonMessage,
    decode,
    stream_key,
)
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import DeadlineExceeded


def envelope(deadline_in: float = 5.0, msg_id: str | None = None, **body: Any) -> Envelope:
    deadline = time.time() + deadline_in
    return Envelope(
        "call-1", "turn-1", deadline, msg_id or uuid.uuid4().hex, dict(body), budget_at=deadline
    )


class Harness:
    """Consumers of one group, recording what their handler saw."""

    def __init__(self, url: str) -> None:
        self.store = RedisStore(url)
        self.bus = Bus(self.store)
        self.seen: list[Envelope] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(
        self,
        name: str = "c1",
        handler: Callable[[Envelope], Awaitable[None]] | None = None,
        **config: Any,
    ) -> Consumer:
        async def record(env: Envelope) -> None:
            self.seen.append(env)

        cfg = ConsumerConfig("work", "testers", name, **config)
        consumer = Consumer(self.bus, cfg, handler or record)
        self.tasks.append(asyncio.create_task(consumer.run()))
        return consumer

    async def wait(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.store.close()


@pytest.fixture
async def harness(redis_server: RedisServer) -> AsyncIterator[Harness]:
    h = Harness(redis_server.url)
    yield h
    await h.close()


def pending(redis_server: RedisServer) -> int:
    info = redis.Redis(port=redis_server.port).xpending(stream_key("work"), "testers")
    return int(info["pending"])


async def test_published_work_is_handled_and_acked(
    harness: Harness, redis_server: RedisServer
) -> None:
    harness.start()
    sent = [envelope(text=f"hello {i}") for i in range(5)]
    for env in sent:
        await harness.bus.publish("work", env)
    await harness.wait(lambda: len(harness.seen) == 5)
    # Entries are handled concurrently: order is the business of the reader (seq numbers).
    assert sorted(e.body["text"] for e in harness.seen) == [f"hello {i}" for i in range(5)]
    assert sorted(harness.seen, key=lambda e: e.body["text"]) == sent
    await harness.wait(lambda: pending(redis_server) == 0)


async def test_work_past_its_deadline_is_skipped(
    harness: Harness, redis_server: RedisServer
) -> None:
    with pytest.raises(DeadlineExceeded):  # publishing dead work is refused at the source
        await harness.bus.publish("work", envelope(deadline_in=-1, text="late"))
    late = envelope(deadline_in=0.05, text="late")
    redis.Redis(port=redis_server.port).xadd(stream_key("work"), late.fields())  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    await harness.bus.publish("work", envelope(text="on time"))
    harness.start()
    await harness.wait(lambda: len(harness.seen) == 1)
    await asyncio.sleep(0.2)
    assert [e.body["text"] for e in harness.seen] == ["on time"]


async def test_a_message_id_is_handled_once(harness: Harness) -> None:
    harness.start()
    for _ in range(3):
        await harness.bus.publish("work", envelope(msg_id="turn-1:llm:0", text="once"))
    await harness.bus.publish("work", envelope(text="marker"))
    await harness.wait(lambda: any(e.body.get("text") == "marker" for e in harness.seen))
    assert [e.body["text"] for e in harness.seen].count("once") == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"junk": "1"}, "missing fields"),
        (
            {"v": "1", "call_id": "c", "turn_id": "t", "deadline": "soon", "msg_id": "m"},
            "undecodable field",
        ),
        (
            {"v": "9", "call_id": "c", "turn_id": "t", "deadline": "1", "msg_id": "m"},
            "schema version 9",
        ),
        (
            {
                "v": "1",
                "call_id": "c",
                "turn_id": "t",
                "deadline": "1",
                "msg_id": "m",
                "body": "[]",
            },
            "not a JSON object",
        ),
    ],
)
async def test_poison_goes_to_the_dead_letter_stream_and_work_goes_on(
    harness: Harness, redis_server: RedisServer, fields: dict[str, str], reason: str
) -> None:
    raw = redis.Redis(port=redis_server.port)
    raw.xadd(stream_key("work"), fields)  # type: ignore[arg-type]
    await harness.bus.publish("work", envelope(text="after poison"))
    harness.start()
    await harness.wait(lambda: len(harness.seen) == 1)
    dead = raw.xrange(DEAD_LETTER)
    assert len(dead) == 1
    assert reason in dead[0][1][b"dl_reason"].decode()
    assert dead[0][1][b"dl_stream"] == b"work"
    await harness.wait(lambda: pending(redis_server) == 0)


def test_decode_rejects_without_crashing() -> None:
    with pytest.raises(PoisonMessage):
        decode(
            {b"v": b"1", b"call_id": b"\xff", b"turn_id": b"t", b"deadline": b"1", b"msg_id": b"m"}
        )


async def test_repeated_failures_are_dead_lettered(
    harness: Harness, redis_server: RedisServer
) -> None:
    attempts = 0

    async def broken(env: Envelope) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("handler bug")

    harness.start(handler=broken, claim_idle_ms=150, max_deliveries=3)
    await harness.bus.publish("work", envelope(deadline_in=30, text="doomed"))
    raw = redis.Redis(port=redis_server.port)
    await harness.wait(lambda: raw.xlen(DEAD_LETTER) == 1, timeout=10)
    assert attempts == 3
    reason = raw.xrange(DEAD_LETTER)[0][1][b"dl_reason"].decode()
    assert "failed 3 times" in reason and "handler bug" in reason
    await harness.wait(lambda: pending(redis_server) == 0)


async def test_work_is_spread_across_consumers_exactly_once(harness: Harness) -> None:
    seen_by: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for name in seen_by:

        async def handler(env: Envelope, name: str = name) -> None:
            await asyncio.sleep(0.01)
            seen_by[name].append(env.msg_id)

        harness.start(name, handler)
    sent = [envelope(deadline_in=30) for _ in range(90)]
    for env in sent:
        await harness.bus.publish("work", env)
    await harness.wait(lambda: sum(len(v) for v in seen_by.values()) >= 90, timeout=10)
    await asyncio.sleep(0.3)
    handled = [m for v in seen_by.values() for m in v]
    assert sorted(handled) == sorted(e.msg_id for e in sent)
    assert sum(1 for v in seen_by.values() if v) >= 2


async def test_a_slow_live_consumer_keeps_its_work(harness: Harness) -> None:
    calls = 0

    async def slow(env: Envelope) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.0)

    harness.start("slow", slow, claim_idle_ms=200)
    await harness.bus.publish("work", envelope(deadline_in=30, text="long reply"))
    await harness.wait(lambda: calls == 1)
    harness.start("greedy", slow, claim_idle_ms=200)
    await asyncio.sleep(1.3)
    assert calls == 1


CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    from vagent.services.bus import Bus, Consumer, ConsumerConfig
    from vagent.services.redis_client import RedisStore

    async def main():
        async def stuck(env):
            print("got", env.msg_id, flush=True)
            await asyncio.sleep(60)
        bus = Bus(RedisStore(sys.argv[1]))
        await Consumer(bus, ConsumerConfig("work", "testers", "doomed"), stuck).run()

    asyncio.run(main())
    """
)


async def test_work_of_a_killed_consumer_is_claimed_and_finished(
    harness: Harness, redis_server: RedisServer
) -> None:
    doomed = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CONSUMER, redis_server.url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        env = envelope(deadline_in=10, text="mid-turn")
        await asyncio.sleep(0.5)
        await harness.bus.publish("work", env)
        line = await asyncio.to_thread(doomed.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == f"got {env.msg_id}"
        os.kill(doomed.pid, signal.SIGKILL)
    finally:
        doomed.kill()
        doomed.wait()
    start = time.monotonic()
    harness.start("rescuer", claim_idle_ms=600)
    await harness.wait(lambda: len(harness.seen) == 1, timeout=5)
    assert harness.seen[0].msg_id == env.msg_id
    assert time.monotonic() - start < 1.5
    await harness.wait(lambda: pending(redis_server) == 0)


async def test_consumer_survives_redis_outage(harness: Harness, redis_server: RedisServer) -> None:
    harness.start()
    await harness.bus.publish("work", envelope(text="before"))
    await harness.wait(lambda: len(harness.seen) == 1)
    redis_server.stop()
    await asyncio.sleep(1.0)
    assert not harness.tasks[0].done()
    redis_server.start()
    # The breaker may have opened during the outage; publish once it lets calls through.
    harness.store.dependency.breaker.reset()
    await harness.bus.publish("work", envelope(text="after"))
    await harness.wait(lambda: len(harness.seen) == 2, timeout=10)
    assert harness.seen[1].body["text"] == "after"
