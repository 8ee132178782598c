"""The state of a vagent installation: supervisord's view joined with /health."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from vagent.cli.control import DRILL_CHECK, ControlError, list_faults
from vagent.cli.health import ServiceHealth, fetch_health
from vagent.cli.runbooks import runbook_for
from vagent.cli.supervisor import ProcessInfo, Supervisor
from vagent.services.config import SERVICES, Settings

HEALTH_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "unreachable": "red",
    "starting": "cyan",
    "-": "dim",
}
STATE_STYLE = {"RUNNING": "green", "STARTING": "cyan", "BACKOFF": "yellow", "FATAL": "red"}


@dataclass
class ServiceStatus:
    name: str
    state: str
    pid: int | None
    uptime_s: float | None
    restarts: int
    health: str
    url: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    drills: list[dict[str, Any]] = field(default_factory=list)  # active failure drills

    @property
    def ready(self) -> bool:
        return self.state == "RUNNING" and self.health in ("healthy", "degraded")


def _checks(health: ServiceHealth | None) -> list[dict[str, Any]]:
    if health is None:
        return []
    return [
        {"name": name, "status": c.get("status"), "output": c.get("output", "")}
        for name, c in health.checks.items()
    ]


def _drills(
    settings: Settings, health: dict[str, ServiceHealth]
) -> dict[str, list[dict[str, Any]]]:
    """Active drills per service. /health says which services have one (no token needed);
    only then is the control API asked for the details (target, mode, time left)."""
    busy = {
        name: str(h.checks[DRILL_CHECK].get("output", ""))
        for name, h in health.items()
        if h.checks.get(DRILL_CHECK, {}).get("status", "pass") != "pass"
    }
    if not busy:
        return {}
    try:
        answers = asyncio.run(list_faults(settings))
    except ControlError:
        answers = []
    found = {a.service: [f.as_json() for f in a.faults] for a in answers if a.faults}
    for name, output in busy.items():  # the control API could not say: /health's words will do
        found.setdefault(name, [{"service": name, "output": output}])
    return found


def collect(sup: Supervisor, settings: Settings, timeout_s: float = 2.0) -> list[ServiceStatus]:
    """One row per program; health (and active drills) only for the four services."""
    running = sup.is_running()
    procs: dict[str, ProcessInfo] = {p.name: p for p in sup.processes()} if running else {}
    restarts = sup.restarts() if running else {}
    health = fetch_health(settings, timeout_s) if running else {}
    drills = _drills(settings, health)
    rows = []
    for name in sup.programs:
        proc = procs.get(name)
        service_health = health.get(name)
        if name not in SERVICES or service_health is None:
            status = "-"
        elif proc is not None and proc.state == "STARTING":
            status = "starting"
        else:
            status = service_health.status
        rows.append(
            ServiceStatus(
                name=name,
                state=proc.state if proc else "NOT RUNNING",
                pid=proc.pid if proc else None,
                uptime_s=round(proc.uptime_s, 1) if proc and proc.uptime_s is not None else None,
                restarts=restarts.get(name, 0),
                health=status,
                url=settings.service_url(name) if name in SERVICES else "",
                checks=_checks(service_health),
                drills=drills.get(name, []),
            )
        )
    return rows


def as_json(rows: list[ServiceStatus]) -> dict[str, Any]:
    services = [
        {k: v for k, v in asdict(r).items() if k != "drills"} for r in rows if r.name in SERVICES
    ]
    infrastructure = [
        {k: v for k, v in asdict(r).items() if k not in ("health", "url", "checks", "drills")}
        for r in rows
        if r.name not in SERVICES
    ]
    drills = [d for r in rows for d in r.drills]
    return {"services": services, "infrastructure": infrastructure, "drills": drills}


def exit_code(rows: list[ServiceStatus]) -> int:
    """Like a monitoring plugin: 0 healthy, 1 degraded, 2 down or unhealthy."""
    services = [r for r in rows if r.name in SERVICES]
    if any(not r.ready for r in services):
        return 2
    return 1 if any(r.health == "degraded" for r in services) else 0


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def drill_lines(rows: list[ServiceStatus]) -> list[str]:
    """One line per active drill (a target faulted in several services is one drill)."""
    lines = []
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for drill in (d for r in rows for d in r.drills):
        if "target" in drill:
            grouped.setdefault((drill["target"], drill["mode"]), []).append(drill)
        else:
            lines.append(f"{drill['service']}: {drill['output']}")
    for (target, mode), parts in grouped.items():
        faulted = {", ".join(d["dependencies"]) for d in parts}
        if len(faulted) == 1:  # e.g. redis in every service: say it once
            where = f"{', '.join(d['service'] for d in parts)} ({faulted.pop()})"
        else:
            where = ", ".join(f"{d['service']} ({', '.join(d['dependencies'])})" for d in parts)
        left = min(d["remaining_s"] for d in parts)
        lines.append(
            f"{target} ({mode}), {left:.0f} s left, in {where}: `vagent restore {target}` ends it"
        )
    return lines


def table(rows: list[ServiceStatus]) -> Table:
    grid = Table(title="vagent services", title_justify="left")
    for column in ("service", "process", "pid", "uptime", "restarts", "health", "checks"):
        grid.add_column(column, no_wrap=column != "checks")
    for row in rows:
        attention = Text()
        for check in row.checks:
            if check["status"] != "pass":
                style = "red" if check["status"] == "fail" else "yellow"
                attention.append(f"{check['name']} ", style=style)
        grid.add_row(
            row.name,
            Text(row.state, style=STATE_STYLE.get(row.state, "red")),
            str(row.pid or "-"),
            _uptime(row.uptime_s),
            str(row.restarts),
            Text(row.health, style=HEALTH_STYLE.get(row.health, "red")),
            attention if attention else Text("-", style="dim"),
        )
    return grid


def problems(rows: list[ServiceStatus], include_warnings: bool) -> list[str]:
    """One line per failing check, with the runbook page that explains it."""
    lines = []
    for row in rows:
        if row.name in SERVICES and row.state != "RUNNING":
            lines.append(f"{row.name} is {row.state}: see {runbook_for('process')}")
        for check in row.checks:
            if check["status"] == "fail" or (include_warnings and check["status"] == "warn"):
                lines.append(
                    f"{row.name} {check['name']} {check['status']}: {check['output']}\n"
                    f"    read {runbook_for(check['name'])}"
                )
    return lines
