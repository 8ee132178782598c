"""Ask every service for its /health, concurrently and with a bound."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from vagent.services.config import SERVICES, Settings


@dataclass(frozen=True)
class ServiceHealth:
    service: str
    url: str
    status: str  # healthy | degraded | unhealthy | unreachable
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""

    @property
    def failing(self) -> dict[str, dict[str, Any]]:
        return {name: c for name, c in self.checks.items() if c.get("status") != "pass"}


async def _fetch(client: httpx.AsyncClient, service: str, url: str) -> ServiceHealth:
    try:
        response = await client.get(f"{url}/health")
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return ServiceHealth(service, url, "unreachable", error=f"{type(exc).__name__}: {exc}")
    checks = {name: entries[0] for name, entries in body.get("checks", {}).items() if entries}
    return ServiceHealth(service, url, str(body.get("status", "unhealthy")), checks)


async def gather_health(settings: Settings, timeout_s: float = 3.0) -> dict[str, ServiceHealth]:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        results = await asyncio.gather(
            *(_fetch(client, s, settings.service_url(s)) for s in SERVICES)
        )
    return {r.service: r for r in results}


def fetch_health(settings: Settings, timeout_s: float = 3.0) -> dict[str, ServiceHealth]:
    return asyncio.run(gather_health(settings, timeout_s))
