"""What the double saw and did: every request, every event, every contract breach.

Tests assert on behaviour through these records ("the controller answered
before it bridged", "nothing was sent after ApplicationReplaced"), so they
survive restarts of the simulated Asterisk and are safe to read from the test
thread while the server thread appends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class RequestRecord:
    """One HTTP request or websocket upgrade that reached ``/ari``."""

    time: float
    kind: str  # "rest" | "websocket"
    method: str
    path: str
    query: list[tuple[str, str]]
    body: Any
    status: int | None = None
    response: Any = None
    operation: str | None = None
    outcome: str = "answered"  # answered | fault | abandoned

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["query"] = [list(item) for item in self.query]
        return data


@dataclass
class EventRecord:
    """One event addressed to an application."""

    time: float
    application: str
    event: dict[str, Any]
    delivered: bool
    session_id: str | None = None

    @property
    def type(self) -> str:
        return str(self.event.get("type", ""))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Violation:
    """A request that departs from the Swagger contract (Asterisk may accept it)."""

    time: float
    method: str
    path: str
    operation: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Journal:
    """Thread-safe, append-only logs with a condition for waiters."""

    requests: list[RequestRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def add_request(self, record: RequestRecord) -> RequestRecord:
        with self._cond:
            self.requests.append(record)
            self._cond.notify_all()
        return record

    def request_done(self) -> None:
        """Wake waiters after a request record was completed in place."""
        with self._cond:
            self._cond.notify_all()

    def add_event(self, record: EventRecord) -> None:
        with self._cond:
            self.events.append(record)
            self._cond.notify_all()

    def add_violation(self, method: str, path: str, operation: str, message: str) -> None:
        with self._cond:
            self.violations.append(Violation(time.time(), method, path, operation, message))

    def snapshot_requests(self) -> list[RequestRecord]:
        with self._cond:
            return list(self.requests)

    def snapshot_events(self) -> list[EventRecord]:
        with self._cond:
            return list(self.events)

    def snapshot_violations(self) -> list[Violation]:
        with self._cond:
            return list(self.violations)

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.events.clear()
            self.violations.clear()

    def wait_for(self, probe: Callable[[], T | None], timeout: float) -> T:
        """Block until ``probe()`` returns something, re-checking on every append."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = probe()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout:.1f} s")
                self._cond.wait(min(remaining, 0.05))
