"""One log line per event, tagged with the service and the call it belongs to.

Secrets are scrubbed in one place, a filter on the root handler, so that no
code path (a library's exception text, a URL with a password) can leak them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime

call_id_var: ContextVar[str | None] = ContextVar("call_id", default=None)

REDACTED = "***"


def scrubber(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces every secret in a text by ***: the one rule for logs and output.

    Longest first, so a secret that contains another is hidden whole.
    """
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, REDACTED)
        return text

    return scrub


class _ContextFilter(logging.Filter):
    """Adds the service name and the current call_id, and scrubs secrets."""

    def __init__(self, service: str, secrets: Iterable[str]) -> None:
        super().__init__()
        self.service = service
        self.scrub = scrubber(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.call_id = call_id_var.get()
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self.scrub(message)
        record.args = None
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        call_id = getattr(record, "call_id", None)
        call = f" call={call_id}" if call_id else ""
        service = getattr(record, "service", "-")
        return f"{stamp}Z {record.levelname:<7} {service}{call} {record.name}: {record.msg}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "logger": record.name,
            "message": record.msg,
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            line["call_id"] = call_id
        return json.dumps(line, ensure_ascii=False)


def configure_logging(service: str, fmt: str, level: str, secrets: Iterable[str]) -> None:
    """Route every logger (ours, uvicorn's, libraries') through one scrubbing handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service, secrets))
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
