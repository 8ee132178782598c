"""Health checks in the shape of the IETF health-check draft.

/health must answer quickly even when every dependency hangs, and must not
hammer a dependency when a monitoring system polls it hard. So each check
has its own timeout, its result is cached for a short while, and concurrent
requests share one probe in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from vagent.services import metrics
from vagent.services.faults import FAULTS
from vagent.services.resilience import AsyncBreaker

CheckStatus = Literal["pass", "warn", "fail"]
ServiceStatus = Literal["healthy", "degraded", "unhealthy"]

_STATUS_RANK: dict[CheckStatus, int] = {"pass": 0, "warn": 1, "fail": 2}
_SERVICE_STATUS: tuple[ServiceStatus, ...] = ("healthy", "degraded", "unhealthy")


class CheckFailed(Exception):
    """Raised by a probe: the message is the output, the check's `failure` the status."""


@dataclass(frozen=True)
class CheckResult:
    status: CheckStatus
    output: str = ""
    observed_value: float | None = None
    observed_unit: str | None = None


@dataclass
class Check:
    """One dependency check. `failure` is what an exception or a timeout means:
    "fail" when the service cannot work without the dependency, "warn" when a
    fallback keeps it serving. `dependency` names what the probe asks, for a
    probe that bypasses the policy layer: a drill on it fails the probe
    exactly like the real outage."""

    name: str
    component_type: str
    probe: Callable[[], Awaitable[CheckResult]]
    timeout_s: float = 1.0
    cache_s: float = 1.0
    failure: CheckStatus = "fail"
    dependency: str | None = None
    _last: CheckResult | None = field(default=None, init=False, repr=False)
    _last_time: str = field(default="", init=False, repr=False)
    _last_at: float = field(default=float("-inf"), init=False, repr=False)
    _inflight: asyncio.Task[CheckResult] | None = field(default=None, init=False, repr=False)

    async def result(self) -> tuple[CheckResult, str]:
        """The cached result while fresh, else one shared probe bounded by the timeout."""
        if self._last is not None and time.monotonic() - self._last_at < self.cache_s:
            return self._last, self._last_time
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._run())
        result = await asyncio.shield(self._inflight)
        return result, self._last_time

    async def _run(self) -> CheckResult:
        try:
            result = await asyncio.wait_for(self._probe(), self.timeout_s)
        except TimeoutError:
            result = CheckResult(self.failure, f"no answer within {self.timeout_s:g}s")
        except CheckFailed as exc:
            result = CheckResult(self.failure, str(exc))
        except Exception as exc:
            result = CheckResult(self.failure, f"{type(exc).__name__}: {exc}")
        self._last, self._last_at = result, time.monotonic()
        self._last_time = datetime.now(UTC).isoformat(timespec="milliseconds")
        metrics.HEALTH_CHECK_STATUS.labels(self.name).set(_STATUS_RANK[result.status])
        return result

    async def _probe(self) -> CheckResult:
        if self.dependency is not None:
            await FAULTS.before(self.dependency, self.timeout_s)
        return await self.probe()


def aggregate(statuses: list[CheckStatus]) -> ServiceStatus:
    """Any fail -> unhealthy; any warn -> degraded; else healthy."""
    worst = max((_STATUS_RANK[s] for s in statuses), default=0)
    return _SERVICE_STATUS[worst]


def http_status(status: ServiceStatus) -> int:
    return 503 if status == "unhealthy" else 200


class HealthMonitor:
    """Runs a service's checks concurrently and renders the /health body."""

    def __init__(self, service: str, version: str, checks: list[Check]) -> None:
        self.service = service
        self.version = version
        self.checks = checks

    async def report(self) -> dict[str, object]:
        results = await asyncio.gather(*(c.result() for c in self.checks))
        status = aggregate([r.status for r, _ in results])
        metrics.SERVICE_HEALTH.set(_SERVICE_STATUS.index(status))
        checks = {
            check.name: [_render(check, result, when)]
            for check, (result, when) in zip(self.checks, results, strict=True)
        }
        return {
            "status": status,
            "service": self.service,
            "version": self.version,
            "checks": checks,
        }


def _render(check: Check, result: CheckResult, when: str) -> dict[str, object]:
    body: dict[str, object] = {"status": result.status, "componentType": check.component_type}
    if result.observed_value is not None:
        body["observedValue"] = round(result.observed_value, 3)
        body["observedUnit"] = result.observed_unit
    body["time"] = when
    body["output"] = result.output
    return body


def breaker_check(breaker: AsyncBreaker) -> Check:
    """An open breaker means the service is on a fallback: degraded, not down."""

    async def probe() -> CheckResult:
        if breaker.state == "closed":
            return CheckResult("pass", "closed", breaker.fail_count, "failures")
        if breaker.state == "half-open" or breaker.retry_in() == 0:
            return CheckResult("warn", "half-open: the next call is a trial")
        return CheckResult("warn", f"open: failing fast, next trial in {breaker.retry_in():.0f}s")

    return Check(f"breaker:{breaker.name}", "component", probe, timeout_s=0.5, cache_s=0.0)


FALLBACK_WINDOW_S = 60.0


class ServingTracker:
    """Remembers who served a stage lately, so /health can say "degraded: on a fallback".

    A fallback is remembered until a turn is served by the expected provider
    again, or for `FALLBACK_WINDOW_S` when no turn comes: after an outage (or
    a drill) the first turn on the primary makes the stage pass again.
    """

    def __init__(self, stage: str, expected_kind: str) -> None:
        self.stage = stage
        self.expected_kind = expected_kind
        self._last_fallback: tuple[float, str] | None = None

    def record(self, kind: str, provider: str, failures: tuple[tuple[str, str], ...]) -> None:
        metrics.SERVED.labels(self.stage, kind).inc()
        if kind == self.expected_kind:
            self._last_fallback = None
            return
        failed = ", ".join(f"{name}: {reason}" for name, reason in failures)
        self._last_fallback = (time.monotonic(), f"{provider} ({failed or 'by design'})")

    def check(self) -> Check:
        async def probe() -> CheckResult:
            if self._last_fallback is None:
                return CheckResult("pass", f"served by {self.expected_kind}")
            at, detail = self._last_fallback
            age = time.monotonic() - at
            if age > FALLBACK_WINDOW_S:
                return CheckResult("pass", f"served by {self.expected_kind}")
            return CheckResult("warn", f"a turn {age:.0f}s ago was served by fallback {detail}")

        return Check(f"serving:{self.stage}", "component", probe, timeout_s=0.5, cache_s=0.0)
