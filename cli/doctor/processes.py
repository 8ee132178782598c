"""Doctor's view of vagent's own processes: supervisord's states, crash loops, /health.

supervisord is asked over XML-RPC (sync, so in a thread: a stuck supervisord
must not hold up the other checks). A crash loop is counted from exits in the
last minutes, not since start: a service that crashed once last week and has
run since is fine today.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from vagent.cli.doctor.model import DoctorCheck, DoctorContext, Finding, Status
from vagent.cli.health import ServiceHealth, gather_health
from vagent.cli.runbooks import runbook_for
from vagent.cli.status import _uptime
from vagent.cli.supervisor import ProcessInfo, Supervisor
from vagent.services.config import SERVICES
from vagent.services.logs import scrubber

CRASH_WINDOW_S = 600.0
CRASH_LOOP_EXITS = 3  # this many unrequested exits in the window is a crash loop
TAIL_BYTES = 4000
TAIL_LINES = 4
RUNBOOK = "crash-loop.md"
NOT_RUNNING_FIX = "start it with `vagent up` (doctor may run before it)"
_HEALTHY_STATES = ("RUNNING",)
_TRANSIENT_STATES = ("STARTING", "STOPPING")

# What to do about a failing /health check, by the check's name prefix.
_HEALTH_FIXES = {
    "redis": "Redis does not answer: embedded, `vagent logs redis`; external, "
    '`redis-cli -u "$VAGENT_REDIS_URL" ping`',
    "breaker:redis": "the Redis breaker opened after repeated failures; it closes by itself "
    "once Redis answers (`vagent doctor --only redis`)",
    "ari": "check Asterisk and VAGENT_ARI_URL, VAGENT_ARI_USER, VAGENT_ARI_PASSWORD "
    "(`vagent doctor --only ari`), then `vagent restart call_controller`",
    "breaker:ari": "the ARI breaker opened after repeated failures (`vagent doctor --only ari`)",
    "rtpengine": "rtpengine does not answer on VAGENT_RTPENGINE_NG "
    "(`vagent doctor --only rtpengine`)",
    "openai": "check OPENAI_API_KEY and the configured models (`vagent doctor --only openai`)",
    "breaker:openai": "an OpenAI breaker opened after repeated failures: the fallback serves "
    "until it closes (`vagent doctor --only openai`)",
    "local": "a local engine cannot serve: see the output, then `vagent restart`",
    "prompts": "the fixed prompts are not rendered yet: wait a few seconds; if it lasts, "
    "espeak-ng and OpenAI TTS both fail",
    "serving": "a fallback serves this stage because its primary provider fails "
    "(`vagent doctor --only openai`)",
    "drill": "a failure drill is running: it ends by itself, or now with `vagent restore --all`",
}


def _health_fix(check: str) -> str:
    prefix = max((p for p in _HEALTH_FIXES if check.startswith(p)), key=len, default="")
    return _HEALTH_FIXES.get(prefix, "see the output and the runbook")


@dataclass(frozen=True)
class _Snapshot:
    """What supervisord said, read in one thread hop."""

    processes: dict[str, ProcessInfo]
    exits: dict[str, list[str]]  # program -> reason of each recent unrequested exit
    tails: dict[str, str] = field(default_factory=dict)


def _not_running(sup: Supervisor) -> Finding:
    stale = sup.socket.exists()
    output = (
        f"supervisord does not answer on {sup.socket} (a stale socket: it stopped or crashed)"
        if stale
        else "vagent is not running"
    )
    return Finding(
        "processes",
        "warn",
        output,
        observed={"supervisord": "stale socket" if stale else "not running"},
        fix=NOT_RUNNING_FIX,
        runbook=RUNBOOK,
    )


def _read(sup: Supervisor) -> _Snapshot | None:
    """supervisord's process table, recent exits, and the last output of dead programs.

    Only a dead program's last lines say why it died; a crash-looping one that
    runs again shows its new start-up there, so it gets the exit reasons instead.
    """
    if not sup.is_running():
        return None
    processes = {p.name: p for p in sup.processes()}
    exits = sup.exits_since(time.time() - CRASH_WINDOW_S)
    dead = [
        name
        for name, proc in processes.items()
        if proc.state not in _HEALTHY_STATES + _TRANSIENT_STATES
    ]
    tails = {name: sup.tail(name, 0, TAIL_BYTES)[0] for name in dead}
    return _Snapshot(processes, exits, tails)


def _last_lines(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-TAIL_LINES:])


def _verdict(name: str, proc: ProcessInfo, exits: list[str]) -> tuple[Status, str, str]:
    """(status, what happened, fix) of one program."""
    logs = f"`vagent logs {name} -n 100`"
    if proc.state not in _HEALTHY_STATES + _TRANSIENT_STATES:
        detail = f"{proc.state}" + (f" ({proc.description})" if proc.description else "")
        if proc.state == "STOPPED":
            return "fail", detail, f"it was stopped: `vagent restart {name}`"
        return "fail", detail, f"read why it died: {logs}; fix it, then `vagent restart {name}`"
    now = f"{proc.state}, pid {proc.pid}, up {_uptime(proc.uptime_s)}"
    recent = f"in the last {CRASH_WINDOW_S / 60:g} min (last: {exits[-1]})" if exits else ""
    if len(exits) >= CRASH_LOOP_EXITS:
        detail = f"crash loop: {len(exits)} unexpected exits {recent}; {now}"
        return "fail", detail, f"read why it keeps dying: {logs}"
    if exits:
        times = "exit" if len(exits) == 1 else "exits"
        return "warn", f"{len(exits)} unexpected {times} {recent}; {now}", f"read why: {logs}"
    if proc.state in _TRANSIENT_STATES:
        return "warn", now, f"wait a few seconds; if it stays {proc.state}: {logs}"
    return "pass", now, ""


def _program(name: str, snapshot: _Snapshot, secrets: list[str]) -> Finding:
    proc = snapshot.processes.get(name)
    if proc is None:
        return Finding(
            f"processes.{name}",
            "fail",
            "supervisord does not know this program (its config is older than vagent's)",
            fix="reload it: `vagent down && vagent up`",
            runbook=RUNBOOK,
        )
    exits = snapshot.exits.get(name, [])
    status, detail, fix = _verdict(name, proc, exits)
    tail = _last_lines(snapshot.tails.get(name, ""))
    output = f"{detail}\nlast output:\n{tail}" if tail and status != "pass" else detail
    observed: dict[str, Any] = {
        "state": proc.state,
        "pid": proc.pid,
        "uptime_s": proc.uptime_s,
        "unexpected_exits": len(exits),
        "window_s": CRASH_WINDOW_S,
    }
    return Finding(
        f"processes.{name}",
        status,
        scrubber(secrets)(output),
        observed=observed,
        fix=fix,
        runbook=RUNBOOK,
    )


async def check_processes(ctx: DoctorContext) -> list[Finding]:
    """Every program supervisord runs: its state, and whether it keeps dying."""
    sup = Supervisor(ctx.settings)
    snapshot = await asyncio.to_thread(_read, sup)
    if snapshot is None:
        return [_not_running(sup)]
    secrets = ctx.settings.secrets()
    return [_program(name, snapshot, secrets) for name in sup.programs]


def _service(health: ServiceHealth) -> list[Finding]:
    """One finding per non-passing check of a service, or one pass line when all pass."""
    base = f"health.{health.service}"
    if health.status == "unreachable":
        return [
            Finding(
                base,
                "fail",
                f"/health unreachable at {health.url}: {health.error}",
                fix=f"is it running? `vagent status`; why not: `vagent logs {health.service}`",
                runbook=RUNBOOK,
            )
        ]
    failing = health.failing
    if not failing:
        status: Status = "pass" if health.status in ("healthy", "degraded") else "fail"
        output = f"{health.status}: {len(health.checks)} checks pass"
        return [Finding(base, status, output, observed=health.status)]
    return [
        Finding(
            f"{base}.{name}",
            _status(check.get("status")),
            str(check.get("output", "")),
            observed=check.get("observedValue"),
            fix=_health_fix(name),
            runbook=runbook_for(name).name,
        )
        for name, check in failing.items()
    ]


_CHECK_STATUS: dict[str, Status] = {"pass": "pass", "warn": "warn", "fail": "fail"}


def _status(value: object) -> Status:
    """A /health check status as a finding status; anything else is not known."""
    return _CHECK_STATUS.get(str(value), "unknown")


async def check_health(ctx: DoctorContext) -> list[Finding]:
    """What each service says about itself: its /health, check by check."""
    sup = Supervisor(ctx.settings)
    if not await asyncio.to_thread(sup.is_running):
        return [
            Finding(
                "health",
                "warn",
                "vagent is not running: no service to ask",
                fix=NOT_RUNNING_FIX,
                runbook=RUNBOOK,
            )
        ]
    results = await gather_health(ctx.settings, ctx.timeout_s)
    return [finding for name in SERVICES for finding in _service(results[name])]


CHECKS = [
    DoctorCheck("processes", "supervisord and every program", check_processes, RUNBOOK),
    DoctorCheck("health", "each service's /health", check_health, RUNBOOK),
]
