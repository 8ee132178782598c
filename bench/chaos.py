"""The chaos soak (`make chaos`): calls go on while the stack is broken on purpose.

    python bench/chaos.py --calls 8 --faults 100 --seed 7 --max-minutes 15 \\
        --report build/chaos-report.json [--doc docs/RELIABILITY.md] [--workdir DIR]

N simulated callers (the ARI double carrying real RTP, the OpenAI double
with a random everyday latency) talk to a fully configured stack on
loopback while a driver, one fault at a time, kill -9s a service, restarts
redis-server, cuts the ARI events websocket, makes the AI provider fail for
a few seconds, or holds a `vagent simulate-failure` drill. After each fault
it waits for recovery: every service answering /health healthy or degraded
with the ARI websocket up, and a turn whose speech ended after the fault
ending in audio. Bounded in faults and minutes; the same --seed draws the
same faults, pauses and call lengths (timings still vary with the host).

What counts as a turn, lost, silent and duplicate is in chaos_calls.py and
docs/RELIABILITY.md. Exit status: 0 when no turn was lost, none was silent
beyond the budget and no reply was heard twice; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_calls import (
    ENDPOINTING_S,
    TOLERANCE_S,
    Board,
    Caller,
    CallerPlan,
    CallRecord,
    TurnResult,
)
from chaos_rig import TRANSCRIPT, ProviderFault, Rig, rig
from stack import SERVICES

from vagent.cli.probe import spoken_wav
from vagent.services.audio import read_wav

RECOVERY_BOUND_S = 60.0
COOLDOWN_S = 45.0  # the last turns finish and the calls hang up
FAULT_GAP_S = (0.5, 2.5)
AMBIENT_DELAY_S = (0.0, 0.25)  # everyday provider latency, redrawn before each fault
AMBIENT_CHUNK_DELAY_S = 0.005  # between streamed chunks (tokens, 100 ms of audio)
KINDS = (("kill", 40), ("redis", 12), ("ari-websocket", 15), ("provider", 23), ("drill", 10))
PROVIDER_FAULTS: tuple[dict[str, Any], ...] = (
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 503},
    {"kind": "status", "status": 429, "retry_after": 1},
    {"kind": "hang"},
    {"kind": "stream_silent"},
    {"kind": "stream_cut", "after_chunks": 1},
    {"kind": "slow_first_byte", "delay": 3.0},
)
PROVIDER_ROUTES = ("chat", "speech", "transcriptions", "*")
DRILLS = (("llm", "error"), ("llm-all", "timeout"), ("tts", "error"), ("stt", "timeout"))


@dataclass
class FaultRecord:
    """One fault and the recovery after it (times are time.time())."""

    kind: str
    target: str
    injected_at: float
    lifted_at: float = 0.0
    settled_at: float | None = None
    audio_at: float | None = None
    skipped: str = ""

    @property
    def recovery_s(self) -> float | None:
        """From the fault's end until the stack serves again and a caller heard audio."""
        if self.settled_at is None or self.audio_at is None:
            return None
        return max(self.settled_at, self.audio_at) - self.lifted_at

    def as_json(self) -> dict[str, Any]:
        held = self.lifted_at - self.injected_at
        return {
            "kind": self.kind,
            "target": self.target,
            "at": round(self.injected_at, 3),
            "held_s": round(held, 2),
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            "skipped": self.skipped,
        }


@dataclass
class Soak:
    """What to run: the bounds (faults, minutes) and the seed that draws everything."""

    calls: int
    faults: int
    seed: int
    max_minutes: float
    budget_ms: int = 1500
    started: float = field(default_factory=time.time)

    @property
    def fault_phase_end(self) -> float:
        return self.started + self.max_minutes * 60 - COOLDOWN_S


# --------------------------------------------------------------------------- the driver


class Driver:
    """Injects faults one at a time, each after the stack recovered from the last."""

    def __init__(self, the_rig: Rig, board: Board, soak: Soak, rng: random.Random) -> None:
        self.rig, self.board, self.soak, self.rng = the_rig, board, soak, rng
        self.log: list[FaultRecord] = []
        self.drills = the_rig.drills_available()
        kinds = [kind for kind, _ in KINDS if kind != "drill" or self.drills]
        self._first = rng.sample(kinds, len(kinds))  # every kind once, then by weight
        self._victims = rng.sample(SERVICES, len(SERVICES))  # every service once, then any

    def run(self) -> None:
        while len(self.log) < self.soak.faults and time.time() < self.soak.fault_phase_end:
            time.sleep(self.rng.uniform(*FAULT_GAP_S))
            self.rig.set_ambient_latency(self.rng.uniform(*AMBIENT_DELAY_S), AMBIENT_CHUNK_DELAY_S)
            record = self._inject()
            if not record.skipped:
                self._await_recovery(record)
            self.log.append(record)
            print(_fault_line(len(self.log), record), flush=True)
        self.rig.set_ambient_latency(None)

    def _inject(self) -> FaultRecord:
        kind = self._kind()
        injector: dict[str, Callable[[], tuple[str, str]]] = {
            "kill": self._kill,
            "redis": self._redis,
            "ari-websocket": self._websocket,
            "provider": self._provider,
            "drill": self._drill,
        }
        record = FaultRecord(kind, "", time.time())
        record.target, record.skipped = injector[kind]()
        record.lifted_at = time.time()
        return record

    def _kind(self) -> str:
        if self._first:
            return self._first.pop()
        kinds = [(k, w) for k, w in KINDS if k != "drill" or self.drills]
        return self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]

    def _kill(self) -> tuple[str, str]:
        service = self._victims.pop() if self._victims else self.rng.choice(SERVICES)
        self.rig.kill(service)
        return service, ""

    def _redis(self) -> tuple[str, str]:
        downtime = self.rng.uniform(0.2, 2.0)
        self.rig.restart_redis(downtime)
        return f"down {downtime:.1f}s", ""

    def _websocket(self) -> tuple[str, str]:
        self.rig.drop_websocket()
        return "events", ""

    def _provider(self) -> tuple[str, str]:
        spec = dict(self.rng.choice(PROVIDER_FAULTS), route=self.rng.choice(PROVIDER_ROUTES))
        fault = ProviderFault(spec, self.rng.uniform(2.0, 6.0))
        self.rig.provider_fault(fault)
        return f"{fault.label} {fault.hold_s:.1f}s", ""

    def _drill(self) -> tuple[str, str]:
        target, mode = self.rng.choice(DRILLS)
        hold = self.rng.uniform(3.0, 6.0)
        done = self.rig.drill(target, mode, hold)
        return f"{target} {mode} {hold:.1f}s", "" if done else "simulate-failure refused"

    def _await_recovery(self, record: FaultRecord) -> None:
        deadline = record.lifted_at + RECOVERY_BOUND_S
        while time.time() < deadline and (record.settled_at is None or record.audio_at is None):
            if record.settled_at is None and self.rig.settled():
                record.settled_at = time.time()
            record.audio_at = self.board.first_audio_after(record.lifted_at)
            time.sleep(0.2)


def _fault_line(number: int, record: FaultRecord) -> str:
    recovery = record.recovery_s
    outcome = record.skipped or (
        f"recovered in {recovery:.1f}s" if recovery is not None else "NOT RECOVERED"
    )
    return f"fault {number:3d}: {record.kind:13s} {record.target:32s} {outcome}"


# --------------------------------------------------------------------------- the soak


def run(soak: Soak, workdir: Path | None = None) -> dict[str, Any]:
    rng = random.Random(soak.seed)
    plan = _plan(soak.budget_ms)
    board, stop = Board(), threading.Event()
    with rig(soak.budget_ms, workdir) as the_rig:
        callers = [
            Caller(f"caller-{i}", the_rig.ari, plan, board, random.Random(rng.random()), stop)
            for i in range(soak.calls)
        ]
        for caller in callers:
            caller.start()
            time.sleep(0.7)  # stagger the calls, so turns do not move in lockstep
        driver = Driver(the_rig, board, soak, random.Random(rng.random()))
        try:
            driver.run()
        finally:
            stop.set()
            until = time.monotonic() + COOLDOWN_S
            for caller in callers:
                caller.join(max(0.0, until - time.monotonic()))
        violations = len(the_rig.ari.violations)
    calls = [call for caller in callers for call in caller.calls]
    errors = [repr(c.error) for c in callers if c.error is not None]
    return report(soak, plan, calls, driver.log, violations, errors)


def _plan(budget_ms: int) -> CallerPlan:
    wav = spoken_wav(TRANSCRIPT)
    audio = read_wav(wav)
    return CallerPlan(
        speech=wav,
        speech_s=len(audio.pcm) / 2 / audio.rate,
        trailing_s=_trailing_silence_s(audio.pcm, audio.rate),
        budget_s=budget_ms / 1000,
    )


def _trailing_silence_s(pcm: bytes, rate: int) -> float:
    """The silence espeak-ng leaves after the words: the caller stopped speaking before."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 300)[0]
    return (len(samples) - int(loud[-1])) / rate if len(loud) else 0.0


# --------------------------------------------------------------------------- the report


def report(
    soak: Soak,
    plan: CallerPlan,
    calls: list[CallRecord],
    faults: list[FaultRecord],
    violations: int,
    errors: list[str],
) -> dict[str, Any]:
    turns = [t for call in calls for t in call.turns]
    limit = ENDPOINTING_S + plan.budget_s + TOLERANCE_S
    outages = controller_outages(faults)
    lost = [t for t in turns if not t.ended_in_audio]
    late = [t for t in turns if (t.latency_s or 0.0) > limit]
    unheard = [t for t in late if during_outage(t, outages)]
    silent = [t for t in late if t not in unheard]
    repeats = [t for t in turns if t.duplicate is not None]
    resaid = [t for t in repeats if said_again_after_crash(t, outages)]
    duplicates = [t for t in repeats if t not in resaid]
    injected = [f for f in faults if not f.skipped]
    return {
        "command": " ".join(["python", "bench/chaos.py", *sys.argv[1:]]),
        "date": datetime.fromtimestamp(soak.started, UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.time() - soak.started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "settings": {**asdict(soak), "silent_limit_s": round(limit, 2)},
        "turns": {
            "attempted": len(turns),
            "ended_in_audio": len(turns) - len(lost),
            "lost": len(lost),
            "silent_beyond_budget": len(silent),
            "silent_while_no_controller": len(unheard),
            "duplicate_replies": len(duplicates),
            "said_again_after_controller_crash": len(resaid),
            "first_audio_s": _distribution([t.latency_s for t in turns if t.latency_s]),
        },
        "calls": _calls_summary(calls, late),
        "faults": {
            "injected": len(injected),
            "skipped": len(faults) - len(injected),
            "not_recovered": sum(1 for f in injected if f.recovery_s is None),
            "recovery_s": _recovery_by_kind(injected),
        },
        "double_violations": violations,
        "caller_errors": errors,
        "bad_turns": [
            *(_bad_turn("lost", t, faults) for t in lost),
            *(_bad_turn(f"silent > {limit:.2f} s", t, faults) for t in silent),
            *(_bad_turn("silent while no controller ran", t, faults) for t in unheard),
            *(_bad_turn("repeated", t, faults) for t in duplicates),
            *(_bad_turn("said again after a controller crash", t, faults) for t in resaid),
        ],
        "turn_log": [t.as_json() for t in turns],
        "fault_log": [f.as_json() for f in faults],
        "call_log": [c.as_json() for c in calls],
    }


def controller_outages(faults: list[FaultRecord]) -> list[tuple[float, float]]:
    """When no call_controller held the calls: from its kill -9 until a new one held the
    ARI websocket again (the stack settled)."""
    return [
        (f.injected_at, f.settled_at or f.lifted_at + RECOVERY_BOUND_S)
        for f in faults
        if f.kind == "kill" and f.target == "call_controller"
    ]


def during_outage(turn: TurnResult, outages: list[tuple[float, float]]) -> bool:
    """The caller finished speaking while no controller ran, or the controller died before
    the turn's first audio: nothing was left that could hear or answer it in time."""
    answered = turn.first_audio or turn.window_end
    return any(start <= answered and turn.speech_end <= end for start, end in outages)


def said_again_after_crash(turn: TurnResult, outages: list[tuple[float, float]]) -> bool:
    """The repeat is a prompt the next controller said again: the first copy was cut
    short by the crash, and the new process cannot know how much of it was heard."""
    copy = turn.duplicate
    return copy is not None and any(copy.first_at <= at <= copy.second_at for at, _ in outages)


def _calls_summary(calls: list[CallRecord], silent: list[TurnResult]) -> dict[str, int]:
    return {
        "placed": len(calls),
        "handed_back": sum(1 for c in calls if c.handed_back),
        "stuck_without_media": sum(1 for c in calls if c.stuck),
        "never_heard_anything": sum(1 for c in calls if c.first_audio is None),
        "heard_silence_beyond_budget": len({t.call for t in silent}),
        "dial_refusals": sum(c.dial_refusals for c in calls),
    }


def _distribution(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 2),
        "p95": round(p95, 2),
        "max": round(ordered[-1], 2),
    }


def _recovery_by_kind(faults: list[FaultRecord]) -> dict[str, dict[str, float | int]]:
    kinds: dict[str, list[float]] = {}
    for fault in faults:
        label = f"kill {fault.target}" if fault.kind == "kill" else fault.kind
        if fault.recovery_s is not None:
            kinds.setdefault(label, []).append(fault.recovery_s)
    return {kind: _distribution(values) for kind, values in sorted(kinds.items())}


def _bad_turn(problem: str, turn: TurnResult, faults: list[FaultRecord]) -> dict[str, Any]:
    """A bad turn, with the last fault injected before its first audio (or its end)."""
    reference = turn.first_audio or turn.window_end
    before = [f for f in faults if f.injected_at <= reference]
    cause = before[-1] if before else None
    return {
        "problem": problem,
        **turn.as_json(),
        "last_fault": None
        if cause is None
        else {**cause.as_json(), "before_s": round(turn.speech_end - cause.injected_at, 2)},
    }


def summary(result: dict[str, Any]) -> str:
    turns, calls, faults = result["turns"], result["calls"], result["faults"]
    lines = [
        f"chaos soak: {result['duration_s']:.0f} s, {result['settings']['calls']} concurrent "
        f"calls, seed {result['settings']['seed']}",
        f"turns attempted {turns['attempted']}, ended in audio {turns['ended_in_audio']}, "
        f"lost {turns['lost']}, silent beyond {result['settings']['silent_limit_s']} s "
        f"{turns['silent_beyond_budget']} (+{turns['silent_while_no_controller']} while no "
        f"controller ran), duplicate replies {turns['duplicate_replies']} "
        f"(+{turns['said_again_after_controller_crash']} said again after a controller crash)",
        f"first audio after speech: {turns['first_audio_s']}",
        f"calls placed {calls['placed']}, handed back {calls['handed_back']}, stuck without "
        f"media {calls['stuck_without_media']}, never heard anything "
        f"{calls['never_heard_anything']}, heard silence beyond budget "
        f"{calls['heard_silence_beyond_budget']}, dial refusals {calls['dial_refusals']}",
        f"faults injected {faults['injected']} (skipped {faults['skipped']}), "
        f"not recovered {faults['not_recovered']}",
    ]
    for kind, stats in faults["recovery_s"].items():
        lines.append(f"  recovery {kind:22s} {stats}")
    if result["double_violations"] or result["caller_errors"]:
        lines.append(f"double violations {result['double_violations']}, {result['caller_errors']}")
    return "\n".join(lines)


def passed(result: dict[str, Any]) -> bool:
    turns = result["turns"]
    return (
        turns["attempted"] > 0
        and turns["lost"] == 0
        and turns["silent_beyond_budget"] == 0
        and turns["duplicate_replies"] == 0
        and not result["caller_errors"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--budget-ms", type=int, default=1500)
    parser.add_argument("--report", type=Path, default=Path("build/chaos-report.json"))
    parser.add_argument("--doc", type=Path, help="write the figures into this markdown file")
    parser.add_argument("--workdir", type=Path, help="keep the stack's home and logs here")
    args = parser.parse_args(argv)
    soak = Soak(args.calls, args.faults, args.seed, args.max_minutes, args.budget_ms)
    result = run(soak, args.workdir)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    if args.doc is not None:
        write_figures(args.doc, result)
    return 0 if passed(result) else 1


# --------------------------------------------------------------------------- the document

BEGIN, END = "<!-- chaos:figures -->", "<!-- /chaos:figures -->"


def write_figures(document: Path, result: dict[str, Any]) -> None:
    """Replace the figures between the markers of the document (the prose stays)."""
    text = document.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{document} has no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    document.write_text(f"{head}{BEGIN}\n{figures(result)}\n{END}{tail}")


def figures(result: dict[str, Any]) -> str:
    turns, calls, faults = result["turns"], result["calls"], result["faults"]
    first = turns["first_audio_s"]
    rows = [
        f"Last run: `{result['command']}`, {result['date']}, {result['machine']}, "
        f"{result['duration_s'] / 60:.1f} min.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| concurrent calls | {result['settings']['calls']} ({calls['placed']} calls placed) |",
        f"| faults injected | {faults['injected']} (not recovered: {faults['not_recovered']}) |",
        f"| turns attempted | {turns['attempted']} |",
        f"| turns that ended in audio | {turns['ended_in_audio']} |",
        f"| turns lost | {turns['lost']} |",
        f"| turns silent beyond the budget "
        f"(> {result['settings']['silent_limit_s']} s) | {turns['silent_beyond_budget']} |",
        f"| turns spoken while no call_controller process ran (all silent beyond the budget) "
        f"| {turns['silent_while_no_controller']} |",
        f"| calls that heard silence beyond the budget (either kind) "
        f"| {calls['heard_silence_beyond_budget']} |",
        f"| duplicate replies | {turns['duplicate_replies']} |",
        f"| prompts said again by the next controller after a crash cut them "
        f"| {turns['said_again_after_controller_crash']} |",
        f"| calls handed back to the dialplan | {calls['handed_back']} |",
        f"| calls stuck without media / never heard anything | "
        f"{calls['stuck_without_media']} / {calls['never_heard_anything']} |",
        f"| dial attempts refused (app not registered) | {calls['dial_refusals']} |",
        f"| first audio after end of speech (median / p95 / max) | "
        f"{first.get('median')} / {first.get('p95')} / {first.get('max')} s |",
        "",
        "| fault | count | recovery median / p95 / max (s) |",
        "|---|---|---|",
    ]
    for kind, stats in faults["recovery_s"].items():
        rows.append(
            f"| {kind} | {stats['n']} | {stats['median']} / {stats['p95']} / {stats['max']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
