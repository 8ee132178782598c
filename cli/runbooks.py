"""Which runbook page explains a failing check, and where it is installed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_BY_PREFIX = {
    "redis": "redis.md",
    "breaker:redis": "redis.md",
    "ari": "asterisk-ari.md",
    "breaker:ari": "asterisk-ari.md",
    "ari_conf": "asterisk-config.md",
    "http_conf": "asterisk-config.md",
    "rtpengine": "rtpengine.md",
    "openai": "openai.md",
    "breaker:openai": "openai.md",
    "local": "local-engines.md",
    "prompts": "local-engines.md",
    "serving": "openai.md",
    "process": "crash-loop.md",
    "health": "crash-loop.md",
    "config": "configuration.md",
    "security": "security.md",
    "drill": "game-days.md",
}


def runbook_path(page: str) -> Path:
    """The installed file of a page, given as `redis.md` or `redis`."""
    name = page if page.endswith(".md") else f"{page}.md"
    return Path(str(resources.files("vagent") / "runbooks" / name))


def runbook_for(check: str) -> Path:
    """The most specific page whose prefix matches the check name."""
    prefix = max((p for p in _BY_PREFIX if check.startswith(p)), key=len, default="process")
    return runbook_path(_BY_PREFIX[prefix])
