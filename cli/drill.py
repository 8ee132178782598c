"""`vagent simulate-failure`: a failure drill run as an experiment.

1. Steady state before: every service answers /health (none unhealthy, no
   drill running) and one `vagent probe` turn is heard. Its health is the
   baseline.
2. Inject the fault through the control API of every service concerned.
3. During the fault: `turns` probe turns, while /health is polled every
   POLL_S recording each change (breakers, checks, service status). After the
   turns the drill waits, up to EVIDENCE_WAIT_S, for the health evidence the
   hypothesis expects (e.g. `ari:info` failing).
4. Restore, then steady state after: polled until no check is worse than at
   baseline, no drill is left, and a probe turn is served by the same
   providers as before, within `recover_timeout_s`.

Times, all from the moment every service acknowledged the injection (t0):

* time to detect: to the first sign of the fault, whichever comes first:
  a health poll showing a check (other than `drill:faults`) or a service
  worse than at baseline (a breaker open, a failing check, a
  `serving:<stage>` warning), or the first audio of a probe turn that shows
  it: served the way the hypothesis predicts (e.g. by the fallback model),
  or at least twice and SLOWER_MS slower than the steady-state turn. None
  when nothing showed (a slow dependency can stay invisible).
* time to recover: from the restore's acknowledgement to the first moment
  both conditions of step 4 hold.

The hypothesis per target is data (EXPECTED, SLOW below). The drill deviates
when a turn is not heard as predicted, the expected health evidence never
shows, or steady state does not come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, replace

from vagent.cli import control
from vagent.cli.drill_hypotheses import KINDS, NEEDS, NEXT, expectation, next_kind
from vagent.cli.drill_report import (
    EXIT_CANNOT_RUN,
    EXIT_NOT_APPLICABLE,
    RANK,
    DrillReport,
    HealthEvent,
    SteadyState,
    Turn,
    regressions,
    states,
)
from vagent.cli.drill_watch import HEALTH_TIMEOUT_S, POLL_S, HealthWatch
from vagent.cli.health import gather_health
from vagent.cli.probe import DEFAULT_UTTERANCE, ProbeError, ProbeResult, probe_turn, spoken_wav
from vagent.services.config import Settings
from vagent.services.responses import load_responses
from vagent.services.turn import GRACE_S, LLM, STT

EVIDENCE_WAIT_S = 10.0
NO_ANSWER_MARGIN_S = 1.5
AFTER_TURN_EVERY_S = 1.0
SLOWER_MS = 250.0  # a turn this much (and twice) slower than steady state shows the fault
# Changes that prove nothing about the fault: the drill's own check, and the service
# status it degrades by itself being there.
UNATTRIBUTABLE = (control.DRILL_CHECK, "health")


class DrillAborted(Exception):
    """The drill cannot run (exit 2) or does not apply here (exit 3)."""

    def __init__(self, message: str, code: int = EXIT_CANNOT_RUN) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Plan:
    target: str
    mode: str
    duration_s: float
    turns: int = 3
    recover_timeout_s: float = 60.0


class Drill:
    """One run of the experiment described in the module docstring."""

    def __init__(self, settings: Settings, plan: Plan) -> None:
        self.settings = settings
        self.plan = plan
        self.expect = expectation(plan.target, plan.mode)
        self.report = DrillReport(plan.target, plan.mode, plan.duration_s)
        self.prompts = load_responses(settings.fallback_responses).templates
        # A turn that should be answered gets until its deadline; one that should not
        # (the bus is down) proves it once the turn's budget and a margin have passed.
        budget_s = settings.turn_budget_ms / 1000
        self.turn_timeout_s = budget_s + GRACE_S + 0.5
        self.fault_turn_timeout_s = self.turn_timeout_s
        if self.expect.answered is False:
            self.fault_turn_timeout_s = budget_s + NO_ANSWER_MARGIN_S
        self.deadline_ms = (budget_s + GRACE_S) * 1000
        self.utterance = b""
        self.t0 = time.monotonic()
        self.expected_kind = ""

    async def run(self) -> DrillReport:
        if self.expect.speech:
            try:
                self.utterance = await asyncio.to_thread(spoken_wav, DEFAULT_UTTERANCE)
            except ProbeError as exc:
                raise DrillAborted(str(exc)) from None
        before = await self._steady_before()
        self.report.before = before
        self._state_hypothesis(before)
        await self._inject()
        watch = HealthWatch(self.settings, before.health, self.t0)
        poller = asyncio.create_task(watch.run())
        try:
            try:
                await self._observe_fault(watch)
            finally:
                await self._restore()
            await self._steady_after(watch, before)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        self.report.events = watch.events
        self._detection(watch.events)
        return self.report

    def _state_hypothesis(self, before: SteadyState) -> None:
        if self.expect.served_by == NEXT and before.turn is not None:
            self.expected_kind = next_kind(self.plan.target, self.settings, before.turn)
        else:
            self.expected_kind = self.expect.served_by or ""
        named = KINDS.get(self.expected_kind, self.expected_kind)
        self.report.hypothesis = self.expect.hypothesis.format(next=named)
        if self.expect.note:
            self.report.notes.append(self.expect.note)

    async def _turn(self, phase: str) -> Turn:
        started = time.monotonic()
        text = None if self.expect.speech else DEFAULT_UTTERANCE
        timeout_s = self.fault_turn_timeout_s if phase == "fault" else self.turn_timeout_s
        try:
            result = await probe_turn(self.settings, text, self.utterance, timeout_s)
        except ProbeError as exc:
            raise DrillAborted(str(exc)) from None
        return self._record(result, phase, started - self.t0)

    def _record(self, result: ProbeResult, phase: str, at_s: float) -> Turn:
        stages = {
            stage: {k: v for k, v in record.items() if k != "text"}
            for stage, record in result.stages.items()
        }
        prompt = None
        if LLM not in stages and result.reply:  # the turn ended at STT: a fixed prompt
            prompt = next((n for n, t in self.prompts.items() if t == result.reply), None)
        return Turn(
            phase,
            at_s,
            result.heard,
            result.first_audio_ms,
            stages,
            result.reply,
            prompt,
            tuple(result.spoken_by_asterisk),
        )

    async def _steady_before(self) -> SteadyState:
        health = await gather_health(self.settings, HEALTH_TIMEOUT_S * 2)
        if all(h.status == "unreachable" for h in health.values()):
            raise DrillAborted(control.NOT_RUNNING)
        bad = [f"{n} {h.status}" for n, h in health.items() if RANK.get(h.status, 2) >= 2]
        if bad:
            raise DrillAborted(
                f"no steady state before the drill ({', '.join(bad)}): fix that first "
                "(`vagent status`, `vagent doctor`)"
            )
        running = [
            n
            for n, h in health.items()
            if h.checks.get(control.DRILL_CHECK, {}).get("status") not in (None, "pass")
        ]
        if running:
            raise DrillAborted(
                f"a drill is already running in {', '.join(running)}: "
                "end it with `vagent restore --all`"
            )
        self.t0 = time.monotonic()
        turn = await self._turn("before")
        if not turn.heard:
            raise DrillAborted(
                "no steady state before the drill: a probe turn got no answer "
                "(`vagent probe` shows it)"
            )
        # After the turn: its own serving:<stage> checks are part of the baseline.
        return SteadyState(await gather_health(self.settings, HEALTH_TIMEOUT_S * 2), turn)

    async def _inject(self) -> None:
        plan = self.plan
        try:
            answers = await control.inject(self.settings, plan.target, plan.mode, plan.duration_s)
        except control.ControlError as exc:
            raise DrillAborted(str(exc)) from None
        injected_at = time.monotonic()
        self._shift_before(injected_at - self.t0)
        self.t0 = injected_at
        self.report.injected = control.faults_of(answers)
        self.report.not_injected = {a.service: a.reason or a.error for a in answers if not a.faults}
        if not self.report.injected:
            raise DrillAborted(not_applicable(plan.target, answers), EXIT_NOT_APPLICABLE)
        self.report.notes += [f"not asked: {line}" for line in control.failures_of(answers)]

    def _shift_before(self, by_s: float) -> None:
        """Time the steady-state turn from the injection too (it comes before: negative)."""
        before = self.report.before
        if before is not None and before.turn is not None:
            turn = replace(before.turn, at_s=before.turn.at_s - by_s)
            self.report.before = replace(before, turn=turn)

    async def _observe_fault(self, watch: HealthWatch) -> None:
        for _ in range(self.plan.turns):
            turn = await self._turn("fault")
            self.report.turns.append(replace(turn, verdict=self._judge(turn)))
        services = list(watch.latest)
        for evidence in self.expect.evidence:
            left = self.plan.duration_s - (time.monotonic() - self.t0) - 0.5
            shown = functools.partial(evidence.shown, watch.events, services)
            found = await watch.until(shown, min(EVIDENCE_WAIT_S, left))
            if not found:
                self.report.deviations.append(f"never observed: {evidence.describe()}")
        await watch.last_look()
        if time.monotonic() - self.t0 >= self.plan.duration_s:
            self.report.notes.append(
                f"the fault expired by itself ({self.plan.duration_s:g} s) before the drill was "
                "done observing: give a longer --duration"
            )
        self.report.deviations += [
            f"turn {i} at {t.at_s:+.1f} s: {t.verdict}"
            for i, t in enumerate(self.report.turns, 1)
            if t.verdict
        ]

    def _judge(self, turn: Turn) -> str:
        """Why this turn contradicts the hypothesis, or "" when it agrees."""
        expect = self.expect
        late = turn.first_audio_ms is not None and turn.first_audio_ms > self.deadline_ms
        if expect.answered is True and (not turn.heard or late):
            return "the caller heard nothing in time"
        if expect.answered is False and turn.heard:
            return "answered over the bus although the services' Redis was faulted"
        if expect.stage is None or not turn.heard:
            return ""
        if expect.served_by in self.prompts:  # a fixed prompt instead of a reply
            ok = turn.prompt == expect.served_by
            got = f"prompt {turn.prompt}" if turn.prompt else f"stt {turn.served(STT)}"
        else:
            ok = turn.provider(expect.stage) == self.expected_kind
            got = f"{expect.stage} {turn.served(expect.stage)}"
        return "" if ok else f"{got} instead of {self.expected_kind}"

    async def _restore(self) -> None:
        try:
            answers = await control.restore(self.settings, self.plan.target)
        except control.ControlError as exc:
            self.report.deviations.append(f"restore failed ({exc}): the fault expires by itself")
            return
        self.report.restored = control.faults_of(answers)
        self.report.notes += [f"restore not asked: {e}" for e in control.failures_of(answers)]

    async def _steady_after(self, watch: HealthWatch, before: SteadyState) -> None:
        restored_at = time.monotonic()
        deadline = restored_at + self.plan.recover_timeout_s
        wanted = before.turn.providers() if before.turn else {}
        turn: Turn | None = None
        turn_at = 0.0
        problems: list[str] = ["not checked"]
        while True:
            # A new turn when the last one was wrong, or now and then while health is not
            # back: a turn served as before is what clears a `serving:<stage>` warning (one
            # left by a turn queued during the fault and answered late, say).
            stale = bool(problems) and time.monotonic() - turn_at >= AFTER_TURN_EVERY_S
            if turn is None or not turn.heard or turn.providers() != wanted or stale:
                turn_at = time.monotonic()
                turn = await self._turn("after")
            health = await watch.fresh()
            problems = regressions(before.health, health)
            if not turn.heard:
                problems.append("the probe turn got no answer")
            elif turn.providers() != wanted:
                problems.append(f"served by {turn.providers()}, before by {wanted}")
            if not problems:
                self.report.recovered_s = time.monotonic() - restored_at
                break
            if time.monotonic() >= deadline:
                self.report.deviations.append(
                    f"steady state not back {self.plan.recover_timeout_s:g} s after restore: "
                    + "; ".join(problems)
                )
                break
            await asyncio.sleep(POLL_S)
        self.report.after = SteadyState(watch.latest, turn, tuple(problems))

    def _detection(self, events: list[HealthEvent]) -> None:
        """The earliest sign of the fault (see the module docstring), if any showed."""
        baseline = states(self.report.before.health) if self.report.before else {}
        candidates: list[tuple[float, str]] = []
        for event in events:
            base = baseline.get((event.service, event.check), "pass")
            if event.check not in UNATTRIBUTABLE and RANK.get(event.after, 2) > RANK.get(base, 2):
                change = f"{event.service} {event.check} {event.before} -> {event.after}"
                candidates.append((event.at_s, change))
                break
        for turn in self.report.turns:
            sign = self._sign(turn)
            if sign and turn.first_audio_ms is not None:
                candidates.append((turn.at_s + turn.first_audio_ms / 1000, sign))
                break
        if candidates:
            self.report.detected_s, self.report.detected_by = min(candidates)

    def _sign(self, turn: Turn) -> str:
        """How this turn shows the fault: served as predicted, or much slower than before."""
        if turn.heard and not turn.verdict and self.expect.stage:
            stage = self.expect.stage
            served = f"prompt {turn.prompt}" if turn.prompt else f"{stage} {turn.served(stage)}"
            return f"a turn served as predicted ({served})"
        before = self.report.before.turn if self.report.before else None
        usual = before.first_audio_ms if before else None
        took = turn.first_audio_ms
        if usual is not None and took is not None and took > max(2 * usual, usual + SLOWER_MS):
            return f"a turn's first audio took {took:.0f} ms (steady state: {usual:.0f} ms)"
        return ""


def not_applicable(target: str, answers: list[control.ServiceAnswer]) -> str:
    """Why nothing was injected, phrased for the admin: usually a missing setting."""
    needs = f" (it needs {NEEDS[target]})" if target in NEEDS else ""
    failed = control.failures_of(answers)
    asked = f"; not asked: {'; '.join(failed)}" if failed else ""
    return f"no service has anything to fault for {target} in this configuration{needs}{asked}"


def run_drill(settings: Settings, plan: Plan) -> DrillReport:
    """Run one drill to its end; a drill interrupted (Ctrl-C) still restores on its way out."""
    return asyncio.run(Drill(settings, plan).run())
