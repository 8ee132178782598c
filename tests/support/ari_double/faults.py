"""Fault injection: the ways a real Asterisk lets its clients down.

Faults are set from the test thread (or over the control HTTP API) and read by
the server thread on every request, hence the lock. They outlive a simulated
restart: a test that refuses credentials keeps refusing them after Asterisk
"comes back", as a wrong password in ari.conf would.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http import HTTPStatus


@dataclass
class FailRule:
    """Answer the next ``remaining`` matching requests with ``status``
    (0: reset the TCP connection without any answer)."""

    status: int
    remaining: int
    pattern: re.Pattern[str] | None
    message: str | None

    def matches(self, request_line: str) -> bool:
        return self.pattern is None or self.pattern.search(request_line) is not None

    def body_message(self) -> str:
        if self.message is not None:
            return self.message
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Injected failure"


class FaultInjector:
    """Current faults; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FailRule] = []
        self._hung = False
        self._refuse_credentials = False

    def fail_next(
        self, status: int, count: int = 1, match: str | None = None, message: str | None = None
    ) -> None:
        """Queue a failure for the next ``count`` requests whose
        ``"METHOD /ari/path"`` matches the regex ``match`` (None: every request)."""
        if not (status == 0 or 100 <= status <= 599) or count < 1:
            raise ValueError("fail_next needs an HTTP status (or 0) and a positive count")
        pattern = re.compile(match) if match else None
        with self._lock:
            self._rules.append(FailRule(status, count, pattern, message))

    def take_failure(self, request_line: str) -> FailRule | None:
        """Consume one failure for this request, if one is queued for it."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(request_line):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    def set_hang(self, enabled: bool) -> None:
        with self._lock:
            self._hung = enabled

    @property
    def hung(self) -> bool:
        with self._lock:
            return self._hung

    def set_refuse_credentials(self, enabled: bool) -> None:
        with self._lock:
            self._refuse_credentials = enabled

    @property
    def refuse_credentials(self) -> bool:
        with self._lock:
            return self._refuse_credentials

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._hung = False
            self._refuse_credentials = False

    def describe(self) -> dict[str, object]:
        with self._lock:
            return {
                "hang": self._hung,
                "refuse_credentials": self._refuse_credentials,
                "fail_next": [
                    {
                        "status": r.status,
                        "remaining": r.remaining,
                        "match": r.pattern.pattern if r.pattern else None,
                        "message": r.message,
                    }
                    for r in self._rules
                ],
            }
