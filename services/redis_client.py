"""The Redis connection every service shares, behind the policy layer.

redis-py retries failed commands by itself (three times with backoff in
recent versions). Stacked under tenacity that would multiply every retry,
so the client is built with retries switched off: the policy layer alone
decides when to try again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from vagent.services.health import Check, CheckResult, breaker_check
from vagent.services.resilience import Dependency, Policy

T = TypeVar("T")

# Redis carries every turn: while it is down nothing works anyway, so the breaker
# only stops the hammering, and it must let traffic back at once after a
# restart: a caller's utterance is handed over until the turn's budget (1.5 s),
# and a breaker still open after Redis is back costs that turn (the chaos soak
# found that 5 s cost every turn in flight, and 1 s some). Two trials a second
# are no hammering. The 2 s attempt timeout leaves room for a busy host: a
# reply that waits for our own event loop is not a Redis failure.
REDIS_POLICY = Policy(
    name="redis",
    timeout_s=2.0,
    attempts=3,
    backoff_initial_s=0.1,
    backoff_max_s=1.0,
    fail_max=5,
    reset_timeout_s=0.5,
)


def connect(url: str, timeout_s: float = 1.0) -> Redis:
    return Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=0,
    )


class RedisStore:
    """A Redis client plus its policy. Work goes through `call`; health pings bypass it."""

    def __init__(self, url: str, policy: Policy = REDIS_POLICY) -> None:
        self.client = connect(url, policy.timeout_s)
        self.dependency = Dependency(policy)

    async def call(
        self, command: Callable[[Redis], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        return await self.dependency.call(lambda: command(self.client), deadline=deadline)

    async def ping_ms(self) -> float:
        start = time.perf_counter()
        await self.client.ping()
        return (time.perf_counter() - start) * 1000

    async def close(self) -> None:
        await self.client.aclose()

    def checks(self, timeout_s: float) -> list[Check]:
        """redis:ping asks Redis directly, so health sees recovery before the breaker does."""

        async def probe() -> CheckResult:
            return CheckResult("pass", "PONG", await self.ping_ms(), "ms")

        ping = Check(
            "redis:ping",
            "datastore",
            probe,
            timeout_s=timeout_s,
            cache_s=1.0,
            dependency=self.dependency.policy.name,
        )
        return [ping, breaker_check(self.dependency.breaker)]
