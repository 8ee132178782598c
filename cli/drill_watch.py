"""Watch every service's /health during a drill, and remember each change.

Polled every POLL_S: a breaker that opens and closes again between two
polls is missed, which is why the drill also judges its probe turns. The
state the fault leaves is always seen (`last_look`): the restore closes the
breakers it opened, often within a poll of the last turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from vagent.cli.drill_report import HealthEvent, states
from vagent.cli.health import ServiceHealth, gather_health
from vagent.services.config import Settings

POLL_S = 0.15
HEALTH_TIMEOUT_S = 1.0


class HealthWatch:
    """Polls every service's /health, records each change, hands out fresh snapshots."""

    def __init__(self, settings: Settings, baseline: dict[str, ServiceHealth], t0: float) -> None:
        self.settings = settings
        self.t0 = t0
        self.latest = baseline
        self.events: list[HealthEvent] = []
        self._waiting: list[asyncio.Future[dict[str, ServiceHealth]]] = []

    async def run(self) -> None:
        while True:
            waiting, self._waiting = self._waiting, []
            snapshot = await gather_health(self.settings, HEALTH_TIMEOUT_S)
            self._observe(snapshot, time.monotonic() - self.t0)
            for future in waiting:
                if not future.done():
                    future.set_result(snapshot)
            await asyncio.sleep(POLL_S)

    async def fresh(self) -> dict[str, ServiceHealth]:
        """The first snapshot whose poll starts after this call."""
        future: asyncio.Future[dict[str, ServiceHealth]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append(future)
        return await future

    async def last_look(self) -> None:
        """Wait for one poll that starts now (bounded by a poll's own timeout)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.fresh(), POLL_S + HEALTH_TIMEOUT_S + 1.0)

    async def until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Whether `condition` (over the events so far) holds within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.fresh(), left + HEALTH_TIMEOUT_S)
        return True

    def _observe(self, snapshot: dict[str, ServiceHealth], at_s: float) -> None:
        old, new = states(self.latest), states(snapshot)
        for key, state in new.items():
            if old.get(key, "pass") != state:
                service, check = key
                output = snapshot[service].checks.get(check, {}).get("output", "")
                self.events.append(
                    HealthEvent(at_s, service, check, old.get(key, "-"), state, str(output or ""))
                )
        self.latest = snapshot
