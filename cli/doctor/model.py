"""What every doctor check returns, and how findings become an exit code.

A check group (`DoctorCheck`) runs one concern (Redis, the ARI config files,
...) and reports one `Finding` per fact it established, so a single
unreachable Redis does not hide behind a single red line, and each problem
gets its own fix line and runbook page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from vagent.services.config import Settings

Status = Literal["pass", "warn", "fail", "unknown"]

# Like a monitoring plugin (Nagios/Icinga): 0 ok, 1 warning, 2 critical, 3 unknown.
EXIT_CODES: dict[Status, int] = {"pass": 0, "warn": 1, "fail": 2, "unknown": 3}
_SEVERITY: dict[Status, int] = {"pass": 0, "unknown": 1, "warn": 2, "fail": 3}


@dataclass(frozen=True)
class Finding:
    """One fact a check established.

    `id` is stable and dotted by group (`redis.version`, `ari_conf.user`), so
    scripts can key on it. `fix` is one line an admin can act on; empty when
    the status is pass. `runbook` is the page name under runbooks/.
    """

    id: str
    status: Status
    output: str
    observed: Any = None
    fix: str = ""
    runbook: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DoctorContext:
    """What every check may read. Checks never write anything."""

    settings: Settings
    timeout_s: float

    @property
    def asterisk_config_dir(self) -> Path:
        return self.settings.asterisk_config_dir


@dataclass(frozen=True)
class DoctorCheck:
    """One concern. `id` is what `--only` selects; `run` must not hang on purpose,
    but the runner bounds it by the context's timeout anyway."""

    id: str
    title: str
    run: Callable[[DoctorContext], Awaitable[list[Finding]]]
    runbook: str = ""


def worst(statuses: list[Status]) -> Status:
    """fail beats warn beats unknown beats pass."""
    return max(statuses, key=_SEVERITY.__getitem__, default="pass")


def exit_code(findings: list[Finding]) -> int:
    """2 if anything failed, else 1 for a warning, else 3 if something is unknown, else 0.

    A monitoring system must page on a known failure even when another check
    could not tell; so a fail or warn wins over unknown.
    """
    return EXIT_CODES[worst([f.status for f in findings])]
