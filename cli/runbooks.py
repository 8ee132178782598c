"""Which runbook page explains a failing check."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_BY_PREFIX = {
    "redis": "redis.md",
    "breaker:redis": "redis.md",
    "ari": "asterisk-ari.md",
    "breaker:ari": "asterisk-ari.md",
    "rtpengine": "rtpengine.md",
    "openai": "openai.md",
    "breaker:openai": "openai.md",
    "local": "local-engines.md",
    "prompts": "local-engines.md",
    "serving": "openai.md",
    "process": "crash-loop.md",
    "config": "configuration.md",
}


def runbook_for(check: str) -> Path:
    """The most specific page whose prefix matches the check name."""
    prefix = max((p for p in _BY_PREFIX if check.startswith(p)), key=len, default="process")
    return Path(str(resources.files("vagent") / "runbooks" / _BY_PREFIX[prefix]))
