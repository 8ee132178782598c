"""What a failure drill observed, as data (`--json`) and as rich tables.

The experiment itself is in drill.py; this module only records and renders,
so the report's shape can be read (and tested) without running a drill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vagent.cli.control import DRILL_CHECK, Fault
from vagent.cli.health import ServiceHealth
from vagent.services.turn import LLM, STT, TTS

EXIT_HELD, EXIT_DEVIATED, EXIT_CANNOT_RUN, EXIT_NOT_APPLICABLE = 0, 1, 2, 3

# How bad a state is, whatever reported it: a check, a breaker, a whole service.
RANK = {
    "pass": 0,
    "closed": 0,
    "healthy": 0,
    "warn": 1,
    "half-open": 1,
    "degraded": 1,
    "open": 1,
    "fail": 2,
    "unhealthy": 2,
    "unreachable": 2,
}


def check_state(name: str, check: dict[str, Any]) -> str:
    """A check's state; for a breaker its position (closed, open, half-open), not just warn."""
    status = str(check.get("status", "fail"))
    if name.startswith("breaker:"):
        word = str(check.get("output", "")).split(":")[0].strip()
        return word if word in RANK else status
    return status


def states(health: dict[str, ServiceHealth]) -> dict[tuple[str, str], str]:
    """(service, check) -> state, with each service's own status under the name "health"."""
    found: dict[tuple[str, str], str] = {}
    for service, report in health.items():
        found[(service, "health")] = report.status
        for name, check in report.checks.items():
            found[(service, name)] = check_state(name, check)
    return found


def regressions(baseline: dict[str, ServiceHealth], now: dict[str, ServiceHealth]) -> list[str]:
    """What is worse now than at baseline; a running drill always counts."""
    before = states(baseline)
    worse = []
    for key, state in states(now).items():
        base = before.get(key, "pass")
        if RANK.get(state, 2) > RANK.get(base, 2) or (key[1] == DRILL_CHECK and state != "pass"):
            worse.append(f"{key[0]} {key[1]} {state} (was {base})")
    return worse


@dataclass(frozen=True)
class Turn:
    """One probe turn: what the caller would have heard, and who served each stage."""

    phase: str  # before | fault | after
    at_s: float  # start, seconds since the fault was injected (negative before it)
    heard: bool
    first_audio_ms: float | None
    stages: dict[str, dict[str, Any]]
    reply: str
    prompt: str | None = None  # the fixed prompt the caller heard instead of a reply
    characters: tuple[str, ...] = ()
    verdict: str = ""  # empty when the turn behaved as the hypothesis says

    def provider(self, stage: str) -> str:
        return str(self.stages.get(stage, {}).get("provider", "-"))

    def served(self, stage: str) -> str:
        """`kind (model)`, or just the kind when the model says nothing more."""
        record = self.stages.get(stage)
        if record is None:
            return "-"
        kind, model = record.get("provider", "-"), record.get("model")
        return f"{kind} ({model})" if model and model != kind else str(kind)

    def providers(self) -> dict[str, str]:
        return {stage: self.provider(stage) for stage in (STT, LLM, TTS) if stage in self.stages}

    def as_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "at_s": round(self.at_s, 2),
            "heard": self.heard,
            "first_audio_ms": self.first_audio_ms,
            "stages": self.stages,
            "reply": self.reply,
            "prompt": self.prompt,
            "characters": list(self.characters),
            "verdict": self.verdict or "as expected",
        }


@dataclass(frozen=True)
class HealthEvent:
    """A change seen by polling /health: a check, a breaker, or a service's status."""

    at_s: float
    service: str
    check: str
    before: str
    after: str
    output: str

    @property
    def breaker(self) -> bool:
        return self.check.startswith("breaker:")

    def as_json(self) -> dict[str, Any]:
        return {
            "at_s": round(self.at_s, 2),
            "service": self.service,
            "check": self.check,
            "from": self.before,
            "to": self.after,
            "output": self.output,
        }


@dataclass(frozen=True)
class SteadyState:
    health: dict[str, ServiceHealth]
    turn: Turn | None
    problems: tuple[str, ...] = ()  # why this is not the steady state (after the drill)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "problems": list(self.problems),
            "services": {
                name: {
                    "status": h.status,
                    "attention": {n: check_state(n, c) for n, c in h.failing.items()},
                }
                for name, h in self.health.items()
            },
            "turn": self.turn.as_json() if self.turn else None,
        }


@dataclass
class DrillReport:
    target: str
    mode: str
    duration_s: float
    hypothesis: str = ""
    injected: list[Fault] = field(default_factory=list)
    not_injected: dict[str, str] = field(default_factory=dict)
    before: SteadyState | None = None
    turns: list[Turn] = field(default_factory=list)
    events: list[HealthEvent] = field(default_factory=list)
    detected_s: float | None = None
    detected_by: str = ""
    restored: list[Fault] = field(default_factory=list)
    recovered_s: float | None = None
    after: SteadyState | None = None
    deviations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def deviated(self) -> bool:
        return bool(self.deviations)

    @property
    def exit_code(self) -> int:
        return EXIT_DEVIATED if self.deviated else EXIT_HELD

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode,
            "duration_s": self.duration_s,
            "hypothesis": self.hypothesis,
            "injected": [f.as_json() for f in self.injected],
            "not_injected": self.not_injected,
            "steady_state_before": self.before.as_json() if self.before else None,
            "turns": [t.as_json() for t in self.turns],
            "breaker_transitions": [e.as_json() for e in self.events if e.breaker],
            "health_events": [e.as_json() for e in self.events],
            "time_to_detect_s": _round(self.detected_s),
            "detected_by": self.detected_by,
            "restored": [f.as_json() for f in self.restored],
            "time_to_recover_s": _round(self.recovered_s),
            "steady_state_after": self.after.as_json() if self.after else None,
            "deviated": self.deviated,
            "deviations": self.deviations,
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _seconds(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.2f} s"


def _where(faults: list[Fault]) -> str:
    return "; ".join(f"{f.service}: {', '.join(f.dependencies)}" for f in faults) or "-"


def _steady(state: SteadyState | None) -> Text:
    if state is None:
        return Text("not reached", style="red")
    healthy = [n for n, h in state.health.items() if h.status == "healthy"]
    others = [f"{n} {h.status}" for n, h in state.health.items() if h.status != "healthy"]
    line = Text(", ".join([f"{len(healthy)} services healthy", *others]))
    if state.turn is not None:
        line.append(f"\nprobe turn: {_turn_line(state.turn)}")
    for problem in state.problems:
        line.append(f"\n{problem}", style="red")
    return line


def _turn_line(turn: Turn) -> str:
    heard = f"heard, first audio {turn.first_audio_ms} ms" if turn.heard else "nothing heard"
    served = ", ".join(f"{s} {turn.served(s)}" for s in (STT, LLM, TTS) if s in turn.stages)
    return f"{heard}; {served}" if served else heard


def summary_table(report: DrillReport) -> Table:
    grid = Table(
        title=f"vagent drill: {report.target} ({report.mode})",
        title_justify="left",
        show_header=False,
    )
    grid.add_column("what", style="bold", no_wrap=True)
    grid.add_column("result")
    grid.add_row("hypothesis", report.hypothesis)
    grid.add_row("before", _steady(report.before))
    grid.add_row("injected", f"{_where(report.injected)} (expires after {report.duration_s:g} s)")
    detected = _seconds(report.detected_s, "not detected")
    grid.add_row(
        "detected", f"{detected}" + (f": {report.detected_by}" if report.detected_by else "")
    )
    grid.add_row("restored", _where(report.restored))
    grid.add_row("recovered", _seconds(report.recovered_s, "not recovered"))
    grid.add_row("after", _steady(report.after))
    for note in report.notes:
        grid.add_row("note", note)
    if report.deviated:
        verdict = Text("DEVIATED\n", style="bold red")
        verdict.append("\n".join(report.deviations), style="red")
    else:
        verdict = Text("hypothesis held", style="bold green")
    grid.add_row("verdict", verdict)
    return grid


def turns_table(turns: list[Turn]) -> Table:
    grid = Table(title="probe turns", title_justify="left")
    for column in ("phase", "at", "heard", STT, LLM, TTS, "first audio", "verdict"):
        grid.add_column(column)
    for turn in turns:
        first = f"{turn.first_audio_ms} ms" if turn.first_audio_ms is not None else "-"
        verdict = Text(turn.verdict or "ok", style="red" if turn.verdict else "green")
        heard = turn.prompt or ("yes" if turn.heard else "no")
        grid.add_row(
            turn.phase,
            f"{turn.at_s:+.2f} s",
            heard,
            turn.served(STT),
            turn.served(LLM),
            turn.served(TTS),
            first,
            verdict,
        )
    return grid


def events_table(events: list[HealthEvent]) -> Table:
    grid = Table(title="health changes (breakers, checks)", title_justify="left")
    for column in ("at", "service", "check", "change", "output"):
        grid.add_column(column, no_wrap=column != "output")
    for event in events:
        style = (
            "red"
            if RANK.get(event.after, 2) >= 2
            else "yellow"
            if RANK.get(event.after)
            else "green"
        )
        grid.add_row(
            f"{event.at_s:+.2f} s",
            event.service,
            event.check,
            Text(f"{event.before} -> {event.after}", style=style),
            event.output,
        )
    return grid


def report_view(report: DrillReport) -> RenderableType:
    parts: list[RenderableType] = [summary_table(report)]
    turns = [t for t in [report.before.turn if report.before else None, *report.turns] if t]
    if report.after and report.after.turn:
        turns.append(report.after.turn)
    parts.append(turns_table(turns))
    if report.events:
        parts.append(events_table(report.events))
    return Group(*parts)


def held_view(target: str, mode: str, faults: list[Fault], unasked: list[str]) -> Table:
    """What `simulate-failure --hold` left running, and which services could not be asked."""
    grid = Table(title=f"vagent drill held: {target} ({mode})", title_justify="left")
    for column in ("service", "faulted", "ends by itself in"):
        grid.add_column(column)
    for fault in faults:
        grid.add_row(fault.service, ", ".join(fault.dependencies), f"{fault.remaining_s:.0f} s")
    for line in unasked:
        service, _, error = line.partition(": ")
        grid.add_row(service, Text(f"not asked: {error}", style="red"), "-")
    return grid


def restored_view(faults: list[Fault]) -> Table:
    grid = Table(title="vagent restore", title_justify="left")
    for column in ("service", "drill", "restored"):
        grid.add_column(column)
    for fault in faults:
        grid.add_row(fault.service, f"{fault.target} ({fault.mode})", ", ".join(fault.dependencies))
    return grid
