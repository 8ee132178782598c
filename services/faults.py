"""Drills: faults injected at the policy layer, that end by themselves.

An admin rehearses an outage with `vagent simulate-failure TARGET`: the
services concerned get a `Fault` through their control API, and from then on
every call to a faulted dependency meets the drill *before* it leaves the
process, in the one place every such call passes: the policy layer
(`Dependency._attempt`, `walk`, a health `Check`, `RtpEngineClient.request`
call `FAULTS.before`). So the retries, breakers, fallback chains, health and
metrics react exactly as they would to the real outage, and nothing else in
the code knows about drills.

Layering: this module sits *below* the policy layer. It imports nothing of
vagent but the metrics, so resilience.py and health.py can call the hook
without an import cycle. That is why a drill's error is `SimulatedFailure`, a
`ConnectionError`, and not one of resilience's `DependencyError`s: the policy
layer sorts any unknown error as transient, which is what an unreachable
dependency is. When a fault ends, the policy layer heals what the drill broke
(it resets the breakers, see `on_release`): the drill opened them, not reality.

A fault expires by itself: expired faults are dropped lazily, by the next
call that looks at the registry (every hook call, /health's `drill:faults`
check, the control API), so no background task is needed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from vagent.services import metrics

log = logging.getLogger("vagent.drill")

Mode = Literal["error", "timeout", "slow"]
Target = Literal["llm", "llm-all", "stt", "tts", "redis", "ari", "rtpengine"]
MODES: tuple[Mode, ...] = get_args(Mode)
TARGETS: tuple[Target, ...] = get_args(Target)

SLOW_FRACTION = 0.75
"""A "slow" dependency answers after this share of the time it was given: late, but in time."""


class SimulatedFailure(ConnectionError):
    """A drill's error: to every layer above, an outage like any other (transient)."""


@dataclass(frozen=True)
class Fault:
    """One drill on one target: which dependencies it faults, how, and until when.

    `started_at` and `expires_at` are time.time() epochs.
    """

    target: str
    mode: Mode
    dependencies: tuple[str, ...]
    started_at: float
    expires_at: float

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.expires_at - time.time())

    def view(self) -> dict[str, object]:
        """The JSON shape of the control API."""
        return {
            "target": self.target,
            "mode": self.mode,
            "dependencies": list(self.dependencies),
            "started_at": round(self.started_at, 3),
            "expires_at": round(self.expires_at, 3),
            "remaining_s": round(self.remaining_s, 1),
        }

    def describe(self) -> str:
        deps = ", ".join(self.dependencies)
        return f"drill {self.target} ({self.mode}) on {deps}, {self.remaining_s:.0f}s left"


Release = Callable[[tuple[str, ...]], object]


class FaultRegistry:
    """The process's active faults, by target, and the hook the policy layer calls."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._by_dependency: dict[str, Fault] = {}
        self._next_expiry = math.inf
        self._releases: list[Release] = []

    def on_release(self, release: Release) -> None:
        """Call `release(names)` with the dependencies a drill stops faulting (restore, expiry)."""
        self._releases.append(release)

    def inject(
        self, target: str, mode: Mode, duration_s: float, dependencies: Iterable[str]
    ) -> Fault:
        """Fault `dependencies` for `duration_s`; replaces a fault of the same target."""
        names = tuple(dependencies)
        if duration_s <= 0 or not names:
            raise ValueError("a fault needs a positive duration and at least one dependency")
        now = time.time()
        fault = Fault(target, mode, names, now, now + duration_s)
        replaced = self._faults.pop(target, None)
        self._faults[target] = fault
        self._reindex()
        metrics.DRILL_FAULTS_ACTIVE.labels(target).set(1)
        metrics.DRILL_FAULTS.labels(target, mode).inc()
        log.warning(
            "drill: %s (%s) on %s for %gs%s",
            target,
            mode,
            ", ".join(names),
            duration_s,
            f", replacing the {replaced.mode} drill" if replaced else "",
        )
        return fault

    def restore(self, target: str | None = None) -> list[Fault]:
        """End the fault of `target` (None: every fault); returns the faults ended."""
        self._prune()
        ended = [f for t, f in self._faults.items() if target is None or t == target]
        self._end(ended, "restored")
        return ended

    def active(self) -> list[Fault]:
        self._prune()
        return list(self._faults.values())

    def matching(self, name: str) -> Fault | None:
        """The active fault of dependency `name`; the latest drill wins when two cover it."""
        self._prune()
        return self._by_dependency.get(name)

    async def before(self, name: str, budget_s: float) -> None:
        """The hook, before every attempt at dependency `name` that may take `budget_s`.

        No drill: returns at once (this is on every call's hot path). "error"
        raises at once, "timeout" hangs for the whole budget (an enclosing
        timeout fires first, like a real hang), "slow" spends most of it and
        lets the call go on.
        """
        if not self._faults:
            return
        fault = self.matching(name)
        if fault is None:
            return
        drill = f"drill {fault.target}"
        if fault.mode == "error":
            raise SimulatedFailure(f"{name}: simulated failure ({drill})")
        if fault.mode == "timeout":
            await asyncio.sleep(max(0.0, budget_s))
            raise TimeoutError(f"{name}: simulated hang ({drill})")
        await asyncio.sleep(SLOW_FRACTION * max(0.0, budget_s))

    def _prune(self) -> None:
        now = time.time()
        if now < self._next_expiry:
            return
        self._end([f for f in self._faults.values() if f.expires_at <= now], "expired")

    def _end(self, faults: list[Fault], how: str) -> None:
        for fault in faults:
            del self._faults[fault.target]
            metrics.DRILL_FAULTS_ACTIVE.labels(fault.target).set(0)
            log.warning("drill: %s (%s) %s", fault.target, fault.mode, how)
        self._reindex()
        released = tuple(
            {n: None for f in faults for n in f.dependencies if n not in self._by_dependency}
        )
        if released:
            for release in self._releases:
                release(released)

    def _reindex(self) -> None:
        self._by_dependency = {n: f for f in self._faults.values() for n in f.dependencies}
        self._next_expiry = min((f.expires_at for f in self._faults.values()), default=math.inf)


FAULTS = FaultRegistry()
"""The process's one registry: the control API writes it, the policy layer reads it."""
