"""How a doctor run is shown: a table, one fix line per problem, a summary, or JSON.

Every string that leaves doctor passes through the secrets scrubber here, as
a last line of defence: a check that echoes a library's error text (a URL
with a password, a key in a header) must still not print a secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vagent.cli.doctor.model import Finding, Status, exit_code, worst
from vagent.cli.runbooks import runbook_for, runbook_path
from vagent.services.logs import scrubber

STATUS_STYLE: dict[Status, str] = {
    "pass": "green",
    "warn": "yellow",
    "fail": "bold red",
    "unknown": "magenta",
}
_MARK: dict[Status, str] = {"pass": "✓", "warn": "!", "fail": "✗", "unknown": "?"}
# The summary's words are a monitoring plugin's: critical, warning, unknown, ok.
_SUMMARY: tuple[tuple[Status, str, str], ...] = (
    ("fail", "critical", "critical"),
    ("warn", "warning", "warnings"),
    ("unknown", "unknown", "unknown"),
    ("pass", "ok", "ok"),
)


@dataclass(frozen=True)
class DoctorReport:
    """The findings of one run, how long it took, and what must never be printed."""

    findings: list[Finding]
    duration_s: float
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def status(self) -> Status:
        return worst([f.status for f in self.findings])

    @property
    def exit_code(self) -> int:
        return exit_code(self.findings)

    def scrub(self, text: str) -> str:
        return scrubber(self.secrets)(text)


def _scrub_value(value: Any, scrub: Callable[[str], str]) -> Any:
    """Scrub every string inside a JSON-able value (observed values can be dicts or lists)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(str(k)): _scrub_value(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v, scrub) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))  # a Path, a datetime...: printed as text, so scrubbed as text


def runbook_of(finding: Finding) -> str:
    """The installed path of the page that explains a finding."""
    return str(runbook_path(finding.runbook) if finding.runbook else runbook_for(finding.id))


def table(report: DoctorReport) -> Table:
    grid = Table(title="vagent doctor", title_justify="left")
    grid.add_column("check", no_wrap=True)
    grid.add_column("status", no_wrap=True)
    grid.add_column("detail")
    for finding in report.findings:
        grid.add_row(
            finding.id,
            Text(finding.status, style=STATUS_STYLE[finding.status]),
            Text(report.scrub(finding.output)),
        )
    return grid


def fix_lines(report: DoctorReport) -> list[Text]:
    """One line per problem, with what to do and the runbook page to read."""
    lines = []
    for finding in report.findings:
        if finding.status == "pass":
            continue
        line = Text(f"{_MARK[finding.status]} ", style=STATUS_STYLE[finding.status])
        line.append(f"{finding.id}: ", style="bold")
        line.append(report.scrub(finding.fix or finding.output))
        line.append(f"\n    read {runbook_of(finding)}", style="dim")
        lines.append(line)
    return lines


def summary(report: DoctorReport) -> str:
    """`doctor: 2 critical, 3 warnings, 14 ok in 1.2s` (zero counts left out, but ok)."""
    counts = {status: 0 for status, _, _ in _SUMMARY}
    for finding in report.findings:
        counts[finding.status] += 1
    parts = [
        f"{counts[status]} {one if counts[status] == 1 else many}"
        for status, one, many in _SUMMARY
        if counts[status] or status == "pass"
    ]
    return f"doctor: {', '.join(parts)} in {report.duration_s:.1f}s"


def print_report(report: DoctorReport, console: Console) -> None:
    console.print(table(report))
    for line in fix_lines(report):
        console.print(line, highlight=False)
    style = STATUS_STYLE[report.status]
    console.print(Text(summary(report), style=style), highlight=False)


def as_json(report: DoctorReport) -> dict[str, Any]:
    scrub = scrubber(report.secrets)
    return {
        "status": report.status,
        "exit_code": report.exit_code,
        "duration_ms": round(report.duration_s * 1000, 1),
        "checks": [_scrub_value(f.as_json(), scrub) for f in report.findings],
    }


def report_json(report: DoctorReport) -> str:
    return json.dumps(as_json(report), indent=2)
