"""Health aggregation, per-check timeouts and caching."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from vagent.services.health import (
    Check,
    CheckResult,
    HealthMonitor,
    aggregate,
    breaker_check,
    http_status,
)
from vagent.services.resilience import AsyncBreaker
from vagent.services.runtime import create_app


def constant(status: str, output: str = "") -> Check:
    async def probe() -> CheckResult:
        return CheckResult(status, output)  # type: ignore[arg-type]

    return Check(f"dep:{status}", "component", probe)


@pytest.mark.parametrize(
    ("statuses", "expected", "code"),
    [
        ([], "healthy", 200),
        (["pass", "pass"], "healthy", 200),
        (["pass", "warn"], "degraded", 200),
        (["warn", "fail", "pass"], "unhealthy", 503),
    ],
)
def test_aggregation(statuses: list[str], expected: str, code: int) -> None:
    status = aggregate(statuses)  # type: ignore[arg-type]
    assert status == expected
    assert http_status(status) == code


async def test_hanging_check_is_bounded_by_its_timeout() -> None:
    async def hang() -> CheckResult:
        await asyncio.sleep(30)
        return CheckResult("pass")

    monitor = HealthMonitor(
        "svc", "1", [Check("redis:ping", "datastore", hang, timeout_s=0.2), constant("pass")]
    )
    start = time.perf_counter()
    body = await monitor.report()
    assert time.perf_counter() - start < 0.5
    assert body["status"] == "unhealthy"
    entry = body["checks"]["redis:ping"][0]  # type: ignore[index]
    assert entry["status"] == "fail"
    assert "no answer within 0.2s" in entry["output"]


async def test_exception_maps_to_the_checks_failure_severity() -> None:
    async def boom() -> CheckResult:
        raise ConnectionRefusedError("refused")

    monitor = HealthMonitor("svc", "1", [Check("openai:models", "component", boom, failure="warn")])
    body = await monitor.report()
    assert body["status"] == "degraded"
    assert "ConnectionRefusedError: refused" in body["checks"]["openai:models"][0]["output"]  # type: ignore[index]


async def test_results_are_cached_and_concurrent_requests_share_one_probe() -> None:
    calls = 0

    async def slow() -> CheckResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return CheckResult("pass", observed_value=1.5, observed_unit="ms")

    check = Check("dep:slow", "component", slow, timeout_s=1.0, cache_s=0.5)
    monitor = HealthMonitor("svc", "1", [check])
    await asyncio.gather(*(monitor.report() for _ in range(20)))
    assert calls == 1
    await monitor.report()
    assert calls == 1
    await asyncio.sleep(0.6)
    await monitor.report()
    assert calls == 2


async def test_body_has_the_ietf_draft_shape() -> None:
    async def probe() -> CheckResult:
        return CheckResult("pass", "PONG", 0.42, "ms")

    body = await HealthMonitor(
        "llm_service", "9.9", [Check("redis:ping", "datastore", probe)]
    ).report()
    assert set(body) == {"status", "service", "version", "checks"}
    assert body["service"] == "llm_service" and body["version"] == "9.9"
    entry = body["checks"]["redis:ping"][0]  # type: ignore[index]
    assert entry["status"] == "pass"
    assert entry["componentType"] == "datastore"
    assert entry["observedValue"] == 0.42 and entry["observedUnit"] == "ms"
    assert entry["output"] == "PONG"
    assert entry["time"].endswith("+00:00")


async def test_breaker_states_show_in_health() -> None:
    breaker = AsyncBreaker("openai-chat", fail_max=3, reset_timeout_s=30)
    monitor = HealthMonitor("svc", "1", [breaker_check(breaker)])
    assert (await monitor.report())["status"] == "healthy"
    breaker.trip()
    body = await monitor.report()
    assert body["status"] == "degraded"
    assert "open" in body["checks"]["breaker:openai-chat"][0]["output"]  # type: ignore[index]


async def test_http_endpoints() -> None:
    monitor = HealthMonitor("svc", "1", [constant("fail", "redis down")])
    app = create_app("svc", monitor)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        live = await client.get("/health/live")
        assert live.status_code == 200 and live.json()["status"] == "pass"
        metrics = await client.get("/metrics")
        assert 'vagent_health_check_status{check="dep:fail"} 2.0' in metrics.text
        assert "vagent_service_health 2.0" in metrics.text
