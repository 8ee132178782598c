"""Drills at the policy layer: the registry, and the hook in every place it sits.

A drill must look exactly like the real outage to the code above the hook:
the same retries, breaker counts, deadlines and fallbacks. These tests drive
real `Dependency`, `walk`, `Check` and `RtpEngineClient` objects through the
process-wide `FAULTS`, each on a dependency name of its own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vagent.services import metrics
from vagent.services.call_controller import service as call_controller
from vagent.services.config import Settings
from vagent.services.control import ControlApi
from vagent.services.control_token import read_token, token_path, write_token
from vagent.services.faults import FAULTS, SLOW_FRACTION, FaultRegistry, SimulatedFailure
from vagent.services.health import Check, CheckResult, HealthMonitor, ServingTracker
from vagent.services.llm_service import service as llm_service
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import (
    BreakerOpenError,
    DeadlineExceeded,
    Dependency,
    ErrorKind,
    Link,
    Policy,
    classify,
    walk,
)
from vagent.services.rtpengine import (
    RtpEngineClient,
    RtpEngineConnectionError,
    RtpEngineTimeoutError,
)
from vagent.services.runtime import Builder, create_app
from vagent.services.stt_service import service as stt_service
from vagent.services.tts_service import service as tts_service


@pytest.fixture(autouse=True)
def no_drill_left() -> Iterator[None]:
    yield
    FAULTS.restore()


def policy(name: str, **overrides: float) -> Policy:
    values: dict[str, float] = {
        "timeout_s": 0.2,
        "attempts": 1,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "fail_max": 3,
        "reset_timeout_s": 30.0,
    }
    values.update(overrides)
    return Policy(name, **values)  # type: ignore[arg-type]


class Counted:
    """An operation that counts how often the drill let it run."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return "ok"


# --------------------------------------------------------------------------- registry


def test_inject_replace_restore() -> None:
    registry = FaultRegistry()
    first = registry.inject("llm", "error", 60, ["openai-chat:gpt-4o"])
    assert registry.matching("openai-chat:gpt-4o") == first
    assert 59 < first.remaining_s <= 60
    second = registry.inject("llm", "slow", 30, ["openai-chat:gpt-4o"])
    assert registry.active() == [second]
    registry.inject("redis", "timeout", 60, ["redis"])
    assert [f.target for f in registry.restore("llm")] == ["llm"]
    assert registry.matching("openai-chat:gpt-4o") is None
    assert [f.target for f in registry.restore()] == ["redis"]
    assert registry.active() == []
    assert registry.restore() == []


def test_the_view_is_the_api_shape() -> None:
    fault = FaultRegistry().inject("llm", "error", 60, ["openai-chat:gpt-4o"])
    view = fault.view()
    assert set(view) == {
        "target",
        "mode",
        "dependencies",
        "started_at",
        "expires_at",
        "remaining_s",
    }
    assert view["dependencies"] == ["openai-chat:gpt-4o"]
    assert view["expires_at"] == pytest.approx(fault.started_at + 60, abs=0.01)
    assert fault.describe() in (
        "drill llm (error) on openai-chat:gpt-4o, 60s left",
        "drill llm (error) on openai-chat:gpt-4o, 59s left",
    )


def test_a_fault_expires_by_itself() -> None:
    registry = FaultRegistry()
    released: list[tuple[str, ...]] = []
    registry.on_release(released.append)
    registry.inject("redis", "error", 0.05, ["redis"])
    assert registry.matching("redis") is not None
    time.sleep(0.08)
    assert registry.active() == []
    assert registry.matching("redis") is None
    assert released == [("redis",)]


def test_release_only_what_no_other_drill_still_faults() -> None:
    registry = FaultRegistry()
    released: list[tuple[str, ...]] = []
    registry.on_release(released.append)
    registry.inject("llm-all", "error", 60, ["openai-chat:a", "openai-chat:b"])
    registry.inject("llm", "timeout", 60, ["openai-chat:a"])
    assert registry.matching("openai-chat:a").mode == "timeout"  # type: ignore[union-attr]
    registry.restore("llm-all")
    assert released == [("openai-chat:b",)]
    registry.restore("llm")
    assert released == [("openai-chat:b",), ("openai-chat:a",)]


def test_inject_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        FaultRegistry().inject("redis", "error", 0, ["redis"])
    with pytest.raises(ValueError):
        FaultRegistry().inject("redis", "error", 10, [])


def test_drills_are_counted_in_metrics() -> None:
    FAULTS.inject("stt", "slow", 60, ["drill-metrics"])
    text = metrics.render().decode()
    assert 'vagent_drill_faults_active{target="stt"} 1.0' in text
    assert 'vagent_drill_faults_total{mode="slow",target="stt"}' in text
    FAULTS.restore("stt")
    assert 'vagent_drill_faults_active{target="stt"} 0.0' in metrics.render().decode()


def test_no_drill_means_the_hook_never_suspends() -> None:
    """The hot path: with no fault for the name, `before` completes without awaiting anything."""
    for active in (False, True):
        if active:
            FAULTS.inject("redis", "timeout", 60, ["some-other-dependency"])
        hook = FAULTS.before("drill-hot-path", 10.0)
        with pytest.raises(StopIteration):
            hook.send(None)


def test_a_simulated_failure_is_transient() -> None:
    assert classify(SimulatedFailure("x")) is ErrorKind.TRANSIENT


# --------------------------------------------------------------------------- targets

KEYED = {"openai_api_key": "sk-test-targets", "openai_base_url": "http://127.0.0.1:9/v1"}
CALLS = {
    "ari_url": "http://127.0.0.1:9",
    "ari_password": "secret",
    "rtpengine_ng": "127.0.0.1:9",
    "media_mode": "rtpengine",
}


@pytest.mark.parametrize(
    ("build", "settings", "targets"),
    [
        (
            llm_service.build,
            KEYED,
            {
                "llm": ["openai-chat:gpt-4o"],
                "llm-all": ["openai-chat:gpt-4o", "openai-chat:gpt-4o-mini"],
            },
        ),
        (llm_service.build, {}, {}),
        (stt_service.build, KEYED, {"stt": ["openai-stt:gpt-4o-mini-transcribe", "pocketsphinx"]}),
        (stt_service.build, {}, {"stt": ["pocketsphinx"]}),
        (tts_service.build, KEYED, {"tts": ["openai-tts:gpt-4o-mini-tts"]}),
        (tts_service.build, {}, {"tts": ["espeak-ng"]}),
        (call_controller.build, CALLS, {"ari": ["ari"], "rtpengine": ["rtpengine"]}),
        (call_controller.build, {}, {}),
    ],
)
async def test_each_service_declares_what_its_targets_fault(
    tmp_path: Path, build: Builder, settings: dict[str, Any], targets: dict[str, list[str]]
) -> None:
    store = RedisStore("redis://127.0.0.1:9/0")
    spec = build(Settings(home=tmp_path, **settings), store)
    try:
        assert spec.fault_targets == targets
    finally:
        for cleanup in spec.cleanup:
            await cleanup()
        await store.close()


# --------------------------------------------------------------------------- Dependency


async def test_error_counts_against_the_breaker_and_opens_it() -> None:
    dependency = Dependency(policy("drill-error", fail_max=3))
    operation = Counted()
    FAULTS.inject("llm", "error", 60, ["drill-error"])
    for expected in (1, 2):
        with pytest.raises(SimulatedFailure, match="simulated failure"):
            await dependency.call(operation)
        assert (dependency.breaker.state, dependency.breaker.fail_count) == ("closed", expected)
    with pytest.raises(SimulatedFailure):
        await dependency.call(operation)
    assert dependency.breaker.state == "open"
    with pytest.raises(BreakerOpenError):
        await dependency.call(operation)
    assert operation.calls == 0
    assert 'dependency="drill-error",kind="transient"' in metrics.render().decode()


async def test_error_is_retried_per_policy() -> None:
    dependency = Dependency(policy("drill-retry", attempts=3, fail_max=5))
    FAULTS.inject("llm", "error", 60, ["drill-retry"])
    with pytest.raises(SimulatedFailure):
        await dependency.call(Counted())
    assert dependency.breaker.fail_count == 3


async def test_timeout_is_cut_by_the_attempt_timeout_and_retried() -> None:
    dependency = Dependency(policy("drill-hang", timeout_s=0.15, attempts=2, fail_max=5))
    operation = Counted()
    FAULTS.inject("llm", "timeout", 60, ["drill-hang"])
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no answer within 0\.15s"):
        await dependency.call(operation, deadline=time.time() + 5)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.0  # two attempts of 0.15 s plus a short backoff
    assert dependency.breaker.fail_count == 2
    assert operation.calls == 0


async def test_timeout_is_bounded_by_the_deadline() -> None:
    dependency = Dependency(policy("drill-deadline", timeout_s=2.0, attempts=3))
    FAULTS.inject("llm", "timeout", 60, ["drill-deadline"])
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await dependency.call(Counted(), deadline=time.time() + 0.3)
    assert time.monotonic() - start < 0.8
    assert dependency.breaker.fail_count == 0  # our budget ran out: not the dependency's fault


async def test_slow_succeeds_late() -> None:
    dependency = Dependency(policy("drill-slow", timeout_s=0.4))
    operation = Counted()
    FAULTS.inject("llm", "slow", 60, ["drill-slow"])
    start = time.monotonic()
    assert await dependency.call(operation) == "ok"
    assert time.monotonic() - start >= SLOW_FRACTION * 0.4 - 0.01
    assert operation.calls == 1
    assert dependency.breaker.state == "closed"


async def test_restore_resets_the_breakers_the_drill_opened() -> None:
    dependency = Dependency(policy("drill-reset", fail_max=1))
    bystander = Dependency(policy("drill-bystander", fail_max=1))
    bystander.breaker.trip()
    FAULTS.inject("redis", "error", 60, ["drill-reset"])
    with pytest.raises(SimulatedFailure):
        await dependency.call(Counted())
    assert dependency.breaker.state == "open"
    FAULTS.restore("redis")
    assert dependency.breaker.state == "closed"
    assert await dependency.call(Counted()) == "ok"
    assert bystander.breaker.state == "open"  # a real outage is not the drill's to undo


async def test_expiry_resets_the_breakers_too() -> None:
    dependency = Dependency(policy("drill-expiry", fail_max=1))
    FAULTS.inject("redis", "error", 0.1, ["drill-expiry"])
    with pytest.raises(SimulatedFailure):
        await dependency.call(Counted())
    assert dependency.breaker.state == "open"
    await asyncio.sleep(0.15)
    assert FAULTS.active() == []
    assert dependency.breaker.state == "closed"


# --------------------------------------------------------------------------- walk


def local(name: str, floor_s: float = 0.0) -> Link[str]:
    async def run(deadline: float) -> str:
        return name

    return Link(name, "local", run, floor_s)


async def test_a_faulted_local_link_fails_and_the_next_serves() -> None:
    FAULTS.inject("tts", "error", 60, ["drill-espeak"])
    served = await walk("tts", [local("drill-espeak"), local("next")], time.time() + 1)
    assert served.value == "next"
    assert served.failures == (("drill-espeak", "transient"),)


async def test_a_hanging_link_is_bounded_by_its_deadline() -> None:
    FAULTS.inject("stt", "timeout", 60, ["drill-sphinx"])
    start = time.monotonic()
    links = [local("drill-sphinx"), local("next", floor_s=0.2)]
    served = await walk("stt", links, time.time() + 0.5)
    elapsed = time.monotonic() - start
    assert served.value == "next"
    assert served.failures == (("drill-sphinx", "transient"),)
    assert 0.25 <= elapsed < 0.45  # the hang ends at the link's deadline: 0.5 s - 0.2 s floor


# --------------------------------------------------------------------------- health


async def test_a_check_of_a_faulted_dependency_fails_until_restored() -> None:
    async def ping() -> CheckResult:
        return CheckResult("pass", "PONG")

    check = Check("drill:ping", "datastore", ping, timeout_s=0.2, cache_s=0, dependency="drill-db")
    monitor = HealthMonitor("svc", "1", [check])
    FAULTS.inject("redis", "error", 60, ["drill-db"])
    body = await monitor.report()
    entry = body["checks"]["drill:ping"][0]  # type: ignore[index]
    assert body["status"] == "unhealthy"
    assert "simulated failure (drill redis)" in entry["output"]
    FAULTS.inject("redis", "timeout", 60, ["drill-db"])
    entry = (await monitor.report())["checks"]["drill:ping"][0]  # type: ignore[index]
    assert entry["output"] == "no answer within 0.2s"
    FAULTS.restore("redis")
    assert (await monitor.report())["status"] == "healthy"


async def test_a_turn_on_the_primary_clears_the_fallback_warning() -> None:
    tracker = ServingTracker("llm", "primary")
    check = tracker.check()
    tracker.record("fallback", "openai:gpt-4o-mini", (("openai:gpt-4o", "transient"),))
    assert (await check.result())[0].status == "warn"
    tracker.record("primary", "openai:gpt-4o", ())
    assert (await check.result())[0].status == "pass"


# --------------------------------------------------------------------------- rtpengine


@pytest.fixture
def silent_ng() -> Iterator[str]:
    """A UDP port that never answers: only the drill can make these requests end fast."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_rtpengine_drill_errors_like_an_unreachable_daemon(silent_ng: str) -> None:
    FAULTS.inject("rtpengine", "error", 60, [RtpEngineClient.name])
    async with RtpEngineClient.from_address(silent_ng, timeout_s=5.0) as client:
        start = time.monotonic()
        with pytest.raises(RtpEngineConnectionError, match="simulated failure") as caught:
            await client.ping()
    assert time.monotonic() - start < 0.5
    assert caught.value.transient


async def test_rtpengine_drill_hangs_for_the_client_timeout(silent_ng: str) -> None:
    FAULTS.inject("rtpengine", "timeout", 60, [RtpEngineClient.name])
    async with RtpEngineClient.from_address(silent_ng, timeout_s=0.2) as client:
        start = time.monotonic()
        with pytest.raises(RtpEngineTimeoutError, match="simulated hang"):
            await client.offer("call-1", "tag", "v=0")
    assert 0.15 <= time.monotonic() - start < 0.6


# --------------------------------------------------------------------------- control API


def test_the_token_is_written_private_and_fresh(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    settings.run_dir.mkdir()
    assert read_token(settings) is None
    token_path(settings).write_text("old")
    token_path(settings).chmod(0o644)
    token = write_token(settings)
    assert len(token) == 64 and int(token, 16) >= 0
    assert read_token(settings) == token
    assert oct(token_path(settings).stat().st_mode & 0o777) == "0o600"
    assert write_token(settings) != token


def control_client(token_file: Path, host: str = "127.0.0.1") -> httpx.AsyncClient:
    control = ControlApi("svc", {"redis": ["redis"]}, token_file)
    app = create_app("svc", HealthMonitor("svc", "1", []), control)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=f"http://{host}")


async def test_without_a_token_file_the_control_api_is_503(tmp_path: Path) -> None:
    async with control_client(tmp_path / "control.token") as client:
        response = await client.get("/control/faults")
    assert response.status_code == 503
    assert response.json() == {"error": "no control token: start vagent with vagent up"}


@pytest.mark.parametrize(
    ("host", "code"),
    [("127.0.0.1", 200), ("[::1]", 200), ("[::ffff:127.0.0.1]", 200), ("10.1.2.3", 403)],
)
async def test_control_answers_on_loopback_addresses_only(
    tmp_path: Path, host: str, code: int
) -> None:
    token_file = tmp_path / "control.token"
    token_file.write_text("t0ken")
    async with control_client(token_file, host) as client:
        response = await client.get("/control/faults", headers={"Authorization": "Bearer t0ken"})
        assert response.status_code == code
        assert (await client.get("/health/live")).status_code == 200


async def test_an_unknown_target_cannot_be_restored(tmp_path: Path) -> None:
    token_file = tmp_path / "control.token"
    token_file.write_text("t0ken")
    async with control_client(token_file) as client:
        auth = {"Authorization": "Bearer t0ken"}
        assert (await client.delete("/control/faults/bogus", headers=auth)).status_code == 422
        restored = await client.delete("/control/faults/redis", headers=auth)
    assert restored.json() == {"service": "svc", "restored": []}
