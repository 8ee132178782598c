"""The policy layer against a real redis-server: breaker, retries, deadlines."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import openai
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from conftest import RedisServer
from vagent.services import metrics
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import (
    BreakerOpenError,
    DeadlineExceeded,
    Dependency,
    DependencyError,
    ErrorKind,
    Policy,
    classify,
)

FAST = Policy("redis", timeout_s=0.5, attempts=1, fail_max=3, reset_timeout_s=0.5)


async def test_awaited_failures_open_the_breaker_after_fail_max(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, FAST)
    assert await store.call(lambda r: r.ping()) is True
    redis_server.stop()
    for expected in (1, 2):
        with pytest.raises(RedisConnectionError):
            await store.call(lambda r: r.ping())
        assert store.dependency.breaker.fail_count == expected
        assert store.dependency.breaker.state == "closed"
    with pytest.raises(RedisConnectionError):
        await store.call(lambda r: r.ping())
    assert store.dependency.breaker.state == "open"
    assert 'vagent_breaker_state{dependency="redis"} 2.0' in metrics.render().decode()
    await store.close()


async def test_open_breaker_fails_fast_without_touching_redis(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, Policy("redis", fail_max=3, reset_timeout_s=30))
    await store.call(lambda r: r.ping())
    store.dependency.breaker.trip()
    before = redis_server.command_count("ping")
    start = time.perf_counter()
    with pytest.raises(BreakerOpenError, match="circuit open"):
        await store.call(lambda r: r.ping())
    elapsed = time.perf_counter() - start
    assert redis_server.command_count("ping") == before
    assert elapsed < 0.05  # no timeout, no backoff: it never left the process
    await store.close()


async def test_cancellation_is_not_a_failure(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, FAST)
    breaker = store.dependency.breaker
    for _ in range(5):
        task = asyncio.create_task(store.call(lambda r: r.blpop(["vagent:test:empty"], 0.3)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert breaker.fail_count == 0
    assert breaker.state == "closed"
    await store.close()


async def test_cancellation_is_never_retried() -> None:
    dependency = Dependency(Policy("slow", timeout_s=5.0, attempts=3, backoff_initial_s=0.01))
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    task = asyncio.create_task(dependency.call(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert calls == 1
    assert dependency.breaker.fail_count == 0


async def test_half_open_recovers_when_redis_is_back(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, FAST)
    redis_server.stop()
    for _ in range(3):
        with pytest.raises(RedisConnectionError):
            await store.call(lambda r: r.ping())
    assert store.dependency.breaker.state == "open"
    redis_server.start()
    with pytest.raises(BreakerOpenError):
        await store.call(lambda r: r.ping())
    await asyncio.sleep(FAST.reset_timeout_s)
    assert await store.call(lambda r: r.ping()) is True
    assert store.dependency.breaker.state == "closed"
    await store.close()


async def test_failed_trial_call_reopens(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, FAST)
    redis_server.stop()
    for _ in range(3):
        with pytest.raises(RedisConnectionError):
            await store.call(lambda r: r.ping())
    await asyncio.sleep(FAST.reset_timeout_s)
    with pytest.raises(RedisConnectionError):
        await store.call(lambda r: r.ping())
    assert store.dependency.breaker.state == "open"
    assert store.dependency.breaker.retry_in() > 0.3
    await store.close()


class CountingListener:
    """A TCP port that accepts and drops connections, counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropping_port() -> Iterator[CountingListener]:
    listener = CountingListener()
    yield listener
    listener.close()


async def test_redis_py_does_not_retry_on_its_own(dropping_port: CountingListener) -> None:
    """One policy attempt must be one connection, or retries multiply under tenacity."""
    store = RedisStore(f"redis://127.0.0.1:{dropping_port.port}", FAST)
    with pytest.raises(RedisConnectionError):
        await store.call(lambda r: r.ping())
    await asyncio.sleep(0.05)
    assert dropping_port.accepted == 1
    await store.close()


async def test_transient_errors_are_retried_with_backoff(dropping_port: CountingListener) -> None:
    policy = Policy(
        "redis", timeout_s=0.5, attempts=3, backoff_initial_s=0.05, backoff_max_s=0.1, fail_max=10
    )
    store = RedisStore(f"redis://127.0.0.1:{dropping_port.port}", policy)
    with pytest.raises(RedisConnectionError):
        await store.call(lambda r: r.ping())
    await asyncio.sleep(0.05)
    assert dropping_port.accepted == 3
    assert store.dependency.breaker.fail_count == 3
    await store.close()


async def test_retries_never_run_past_the_deadline(dropping_port: CountingListener) -> None:
    policy = Policy(
        "redis", timeout_s=0.5, attempts=10, backoff_initial_s=0.2, backoff_max_s=0.2, fail_max=100
    )
    store = RedisStore(f"redis://127.0.0.1:{dropping_port.port}", policy)
    start = time.time()
    with pytest.raises((RedisConnectionError, DeadlineExceeded)):
        await store.call(lambda r: r.ping(), deadline=start + 0.5)
    assert time.time() - start < 0.55
    assert dropping_port.accepted <= 3
    await store.close()


async def test_attempt_timeout_is_cut_by_the_deadline() -> None:
    dependency = Dependency(Policy("slow", timeout_s=5.0, attempts=3))

    async def hang() -> None:
        await asyncio.sleep(10)

    start = time.time()
    with pytest.raises(DeadlineExceeded):
        await dependency.call(hang, deadline=start + 0.2)
    assert time.time() - start < 0.35
    assert dependency.breaker.fail_count == 0  # our budget, not the dependency's fault


async def test_attempt_timeout_counts_as_transient_failure() -> None:
    dependency = Dependency(
        Policy(
            "slow",
            timeout_s=0.05,
            attempts=2,
            backoff_initial_s=0.01,
            backoff_max_s=0.01,
            fail_max=5,
        )
    )
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError, match="no answer within"):
        await dependency.call(hang)
    assert calls == 2
    assert dependency.breaker.fail_count == 2


async def test_permanent_error_opens_the_breaker_at_once_without_retry() -> None:
    dependency = Dependency(Policy("api", attempts=3, fail_max=5))
    calls = 0

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise DependencyError("key refused", ErrorKind.PERMANENT)

    with pytest.raises(DependencyError):
        await dependency.call(refuse)
    assert calls == 1
    assert dependency.breaker.state == "open"


async def test_rejected_requests_do_not_count() -> None:
    dependency = Dependency(Policy("api", attempts=3, fail_max=2))

    async def bad_request() -> None:
        raise DependencyError("channel not found", ErrorKind.REJECTED)

    for _ in range(4):
        with pytest.raises(DependencyError):
            await dependency.call(bad_request)
    assert dependency.breaker.state == "closed"
    assert dependency.breaker.fail_count == 0


def _status_error(cls: type[openai.APIStatusError], status: int) -> openai.APIStatusError:
    import httpx2  # the transport of the installed openai client

    request = httpx2.Request("GET", "http://127.0.0.1/v1/models")
    response = httpx2.Response(status, request=request, json={"error": {}})
    return cls("x", response=response, body=None)


@pytest.mark.parametrize(
    ("exc_factory", "kind"),
    [
        (lambda: _status_error(openai.AuthenticationError, 401), ErrorKind.PERMANENT),
        (lambda: _status_error(openai.NotFoundError, 404), ErrorKind.PERMANENT),
        (lambda: _status_error(openai.RateLimitError, 429), ErrorKind.TRANSIENT),
        (lambda: _status_error(openai.InternalServerError, 500), ErrorKind.TRANSIENT),
        (lambda: _status_error(openai.BadRequestError, 400), ErrorKind.REJECTED),
        (lambda: TimeoutError(), ErrorKind.TRANSIENT),
        (lambda: RedisConnectionError(), ErrorKind.TRANSIENT),
        (lambda: ConnectionRefusedError(), ErrorKind.TRANSIENT),
    ],
)
def test_error_classes(exc_factory: object, kind: ErrorKind) -> None:
    assert classify(exc_factory()) is kind  # type: ignore[operator]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.REJECTED),
        (404, ErrorKind.REJECTED),  # openai raises NotFoundError (permanent) for its 404s
        (413, ErrorKind.REJECTED),
        (418, ErrorKind.REJECTED),
        (422, ErrorKind.REJECTED),
        (403, ErrorKind.PERMANENT),
        (408, ErrorKind.TRANSIENT),
        (409, ErrorKind.TRANSIENT),
        (429, ErrorKind.TRANSIENT),
        (500, ErrorKind.TRANSIENT),
        (503, ErrorKind.TRANSIENT),
        (599, ErrorKind.TRANSIENT),
    ],
)
def test_an_http_status_has_one_kind_whichever_client_raised_it(
    status: int, kind: ErrorKind
) -> None:
    """Regression (fuzzing): an openai.APIStatusError with a 4xx outside the named
    subclasses (413, 418) counted as transient, retried and charged to the breaker;
    and the status-error branch matched httpx only, while the installed openai client
    raises through httpx2."""
    import httpx
    import httpx2

    assert classify(_status_error(openai.APIStatusError, status)) is kind
    for http in (httpx, httpx2):
        request = http.Request("POST", "http://127.0.0.1/v1/audio/speech")
        response = http.Response(status, request=request)
        assert classify(http.HTTPStatusError("x", request=request, response=response)) is kind


async def test_a_refused_request_is_neither_retried_nor_counted() -> None:
    dependency = Dependency(Policy("openai-tts", attempts=3, fail_max=2))
    attempts = 0

    async def too_large() -> None:
        nonlocal attempts
        attempts += 1
        raise _status_error(openai.APIStatusError, 413)

    for _ in range(3):
        with pytest.raises(openai.APIStatusError):
            await dependency.call(too_large)
    assert attempts == 3  # one attempt per call
    assert dependency.breaker.state == "closed" and dependency.breaker.fail_count == 0


def test_the_call_controller_starts_without_loading_the_openai_client() -> None:
    """The policy layer classifies openai errors without importing openai: the
    controller never talks to OpenAI, and the second that import costs is a caller's
    silence each time a controller restarts."""
    probe = (
        "import sys, vagent.services.call_controller.service;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'openai'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
