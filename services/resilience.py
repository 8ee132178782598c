"""The one policy layer: timeouts, retries, circuit breakers and error classes.

Services declare a `Policy` per dependency and call it through a
`Dependency`; they never write their own retry loops. The rules:

* every attempt has a timeout, cut short by the turn's deadline;
* transient errors are retried with exponential backoff and jitter
  (tenacity), but never past the deadline: a late answer on a phone call
  is useless;
* permanent errors (a refused key, an unknown model) are not retried and
  open the breaker at once: the dependency is unusable until someone fixes it;
* each dependency has one pybreaker breaker, driven correctly from asyncio
  (see `AsyncBreaker`);
* drills (`vagent simulate-failure`) enter here: every attempt, and every
  link of a fallback chain, first meets `FAULTS.before` (faults.py lists the
  other places), so a simulated outage is retried, counted and fallen back
  from exactly like a real one. When a drill ends, the breakers it opened are
  reset (`reset_breakers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import pybreaker
import redis.exceptions
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from vagent.services import metrics
from vagent.services.faults import FAULTS

log = logging.getLogger("vagent.resilience")

T = TypeVar("T")

BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"  # retry; counts against the breaker
    PERMANENT = "permanent"  # no retry; opens the breaker at once
    REJECTED = "rejected"  # the dependency answered and refused this request: no retry, no count
    DEADLINE = "deadline"  # our own budget ran out: no retry, not the dependency's fault
    BREAKER_OPEN = "breaker_open"  # failed fast, nothing was sent


class DependencyError(Exception):
    """An error a client raises when it already knows its kind."""

    kind: ErrorKind = ErrorKind.TRANSIENT

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class BreakerOpenError(DependencyError):
    kind = ErrorKind.BREAKER_OPEN


class DeadlineExceeded(DependencyError):
    kind = ErrorKind.DEADLINE


def classify(exc: BaseException) -> ErrorKind:
    """Sort an exception into an ErrorKind; unknown errors count as transient."""
    if isinstance(exc, DependencyError):
        return exc.kind
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return ErrorKind.PERMANENT
    if isinstance(exc, redis.exceptions.ResponseError):
        return ErrorKind.REJECTED
    if isinstance(exc, httpx.HTTPStatusError):
        return _classify_status(exc.response.status_code)
    return _openai_kind(exc) or ErrorKind.TRANSIENT


def _openai_kind(exc: BaseException) -> ErrorKind | None:
    """The kind of an error of the openai client or of httpx2, its transport.

    Looked up in sys.modules, never imported: a process that has not loaded the
    client (the call controller) cannot hold one of its errors, and importing it
    would add a second to that process's start, which is a caller's silence
    after a crash.
    """
    openai = sys.modules.get("openai")
    if openai is not None:
        permanent = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
        if isinstance(exc, permanent):
            return ErrorKind.PERMANENT
        if isinstance(exc, openai.APIStatusError):
            return _classify_status(exc.status_code)
    httpx2 = sys.modules.get("httpx2")
    if httpx2 is not None and isinstance(exc, httpx2.HTTPStatusError):
        return _classify_status(exc.response.status_code)
    return None


def _classify_status(status: int) -> ErrorKind:
    """401/403: the credentials, unusable until fixed. 408, 409, 429 and 5xx: try
    again. Any other 4xx (400, 413, 422...): this request was refused, the
    dependency is fine, so no retry and no count against its breaker. A status
    that is not an error (a 3xx not followed) stays transient like any unknown."""
    if status in (401, 403):
        return ErrorKind.PERMANENT
    if 400 <= status < 500 and status not in (408, 409, 429):
        return ErrorKind.REJECTED
    return ErrorKind.TRANSIENT


def _retryable(exc: BaseException) -> bool:
    """Only transient errors; never a cancellation (tenacity sees BaseExceptions too)."""
    return isinstance(exc, Exception) and classify(exc) is ErrorKind.TRANSIENT


def _counts_against_breaker(kind: ErrorKind) -> bool:
    return kind in (ErrorKind.TRANSIENT, ErrorKind.PERMANENT)


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: AsyncBreaker) -> None:
        self.owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self.owner._on_state_change(old.name if old else None, new.name)


class AsyncBreaker:
    """pybreaker's state machine, driven from asyncio without its Tornado path.

    pybreaker's `call()` would count an un-awaited coroutine as a success and
    its `call_async` needs Tornado. So the outcome is awaited here first and
    then replayed into pybreaker synchronously: pybreaker still owns the
    counting, opening and half-opening. Cancellation is never replayed: a
    caller that hung up says nothing about the dependency.
    """

    def __init__(self, name: str, fail_max: int, reset_timeout_s: float) -> None:
        self.name = name
        self.reset_timeout_s = reset_timeout_s
        self._opened_at: float | None = None
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_timeout_s, name=name, listeners=[_Listener(self)]
        )
        metrics.BREAKER_STATE.labels(name).set(0)

    @property
    def state(self) -> str:
        return str(self._breaker.current_state)

    @property
    def fail_count(self) -> int:
        return int(self._breaker.fail_counter)

    @property
    def failing_fast(self) -> bool:
        """Open, and not yet ready for a trial call: calls fail without being sent."""
        return self.state == "open" and self.retry_in() > 0

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        if self.state != "open" or self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout_s - time.monotonic())

    def admit(self) -> None:
        """Fail fast while open; after the reset timeout let a trial call through."""
        if self.failing_fast:
            raise BreakerOpenError(
                f"{self.name}: circuit open, next trial in {self.retry_in():.1f}s"
            )

    def record_success(self) -> None:
        # If another task opened it meanwhile, its failure wins.
        with contextlib.suppress(pybreaker.CircuitBreakerError):
            self._breaker.call(_succeed)

    def record_failure(self, exc: Exception) -> None:
        with contextlib.suppress(pybreaker.CircuitBreakerError, type(exc)):
            self._breaker.call(_fail, exc)

    def trip(self) -> None:
        """Open now: used for permanent errors, which no retry will fix."""
        if self.state != "open":
            self._breaker.open()

    def reset(self) -> None:
        self._breaker.close()

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        self.admit()
        try:
            result = await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind is ErrorKind.PERMANENT:
                self.trip()
            elif _counts_against_breaker(kind):
                self.record_failure(exc)
            raise
        self.record_success()
        return result

    def _on_state_change(self, old: str | None, new: str) -> None:
        if new == "open":
            self._opened_at = time.monotonic()
        metrics.BREAKER_STATE.labels(self.name).set(BREAKER_STATE_VALUES.get(new, 0))
        metrics.BREAKER_TRANSITIONS.labels(self.name, new).inc()
        level = logging.WARNING if new == "open" else logging.INFO
        log.log(level, "breaker %s: %s -> %s", self.name, old, new)


def _succeed() -> None:
    return None


def _fail(exc: Exception) -> None:
    raise exc


@dataclass(frozen=True)
class Policy:
    """How vagent treats one dependency. The defaults suit background work;
    inside a live turn the deadline passed to `Dependency.call` rules."""

    name: str
    timeout_s: float = 2.0
    attempts: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 4.0
    fail_max: int = 5
    reset_timeout_s: float = 30.0


class Dependency:
    """A dependency called through its policy: timeout, retry, breaker."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.breaker = AsyncBreaker(policy.name, policy.fail_max, policy.reset_timeout_s)
        _LIVE.add(self)

    async def call(
        self, operation: Callable[[], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """Run `operation` under the policy. `deadline` is a time.time() epoch."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.attempts) | _stop_at_deadline(deadline),
            wait=wait_exponential_jitter(
                multiplier=self.policy.backoff_initial_s,
                jitter=self.policy.backoff_initial_s,
                max=self.policy.backoff_max_s,
            ),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.breaker.call(lambda: self._attempt(operation, deadline))
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, operation: Callable[[], Awaitable[T]], deadline: float | None) -> T:
        timeout = self.policy.timeout_s
        cut_by_deadline = False
        if deadline is not None:
            remaining = time_left(deadline, self.policy.name)
            cut_by_deadline = remaining < timeout
            timeout = min(timeout, remaining)
        try:
            async with asyncio.timeout(timeout):
                await FAULTS.before(self.policy.name, timeout)
                return await operation()
        except TimeoutError:
            self._count(ErrorKind.DEADLINE if cut_by_deadline else ErrorKind.TRANSIENT)
            if cut_by_deadline:
                raise DeadlineExceeded(f"{self.policy.name}: turn deadline passed") from None
            raise TimeoutError(f"{self.policy.name}: no answer within {timeout:.2f}s") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._count(classify(exc))
            raise

    def _count(self, kind: ErrorKind) -> None:
        metrics.DEPENDENCY_FAILURES.labels(self.policy.name, kind.value).inc()


_LIVE: weakref.WeakSet[Dependency] = weakref.WeakSet()


def reset_breakers(names: Iterable[str]) -> None:
    """Close the breakers of the live dependencies called `names`.

    A drill that ends must not leave the service degraded: the breakers it
    opened say nothing about the real dependency. (If it is really down too,
    the next calls open the breaker again.)
    """
    wanted = set(names)
    for dependency in list(_LIVE):
        if dependency.policy.name in wanted and dependency.breaker.state != "closed":
            log.info("breaker %s: reset, the drill is over", dependency.policy.name)
            dependency.breaker.reset()


FAULTS.on_release(reset_breakers)


def time_left(deadline: float, name: str) -> float:
    """Seconds until the deadline, or DeadlineExceeded: for local engines without a policy."""
    remaining = deadline - time.time()
    if remaining <= 0:
        raise DeadlineExceeded(f"{name}: turn deadline passed")
    return remaining


class _stop_at_deadline(stop_base):
    """Stop retrying when the next backoff would end past the deadline."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        if self.deadline is None:
            return False
        return time.time() + (state.upcoming_sleep or 0.0) >= self.deadline


@dataclass(frozen=True)
class Link(Generic[T]):
    """One provider in a fallback chain. `run` gets the deadline it must meet;
    `floor_s` is the time this link needs, which earlier links leave to it."""

    name: str
    kind: str  # primary | fallback | scripted | local | characters
    run: Callable[[float], Awaitable[T]]
    floor_s: float = 0.0


@dataclass(frozen=True)
class Served(Generic[T]):
    value: T
    link: Link[T]
    failures: tuple[tuple[str, str], ...] = ()


class ChainExhausted(Exception):
    def __init__(self, stage: str, failures: list[tuple[str, str]]) -> None:
        detail = "; ".join(f"{name}: {reason}" for name, reason in failures)
        super().__init__(f"{stage}: every provider failed ({detail})")
        self.failures = failures


async def walk(stage: str, links: list[Link[T]], deadline: float) -> Served[T]:
    """Try each link in order within the turn's deadline; a chain is itself a provider.

    Each link must finish before the deadline minus what the links after it
    need, so a hanging primary can never eat the time of the local fallback.
    A link behind an open breaker fails at once: the next one starts with no
    added wait. A drill on a link (a local engine has no `Dependency`) meets it
    here, bounded by the link's deadline like the link itself.
    """
    failures: list[tuple[str, str]] = []
    for index, link in enumerate(links):
        link_deadline = deadline - sum(later.floor_s for later in links[index + 1 :])
        try:
            await FAULTS.before(link.name, link_deadline - time.time())
            value = await link.run(link_deadline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = classify(exc).value
            failures.append((link.name, reason))
            metrics.FALLBACKS.labels(stage, link.name, reason).inc()
            log.warning("%s: %s failed (%s: %s)", stage, link.name, reason, exc)
            continue
        return Served(value, link, tuple(failures))
    raise ChainExhausted(stage, failures)
