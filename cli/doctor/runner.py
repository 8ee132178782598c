"""Run doctor's checks: all at once, each bounded, none able to crash the run.

An admin runs doctor when something is already wrong, often because a
dependency hangs. So every check group runs concurrently under its own
timeout, and the whole run takes as long as the slowest single timeout, not
their sum. A check that raises becomes an `unknown` finding: doctor says what
it could not tell, and never prints a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from vagent.cli.doctor import asterisk_checks, dependencies, processes, security
from vagent.cli.doctor.model import DoctorCheck, DoctorContext, Finding
from vagent.cli.doctor.report import DoctorReport
from vagent.services.config import ConfigError, load_settings

# A check bounds its own I/O by the context's timeout; the runner's bound is a
# backstop for one that does not, a little later so it does not race the check.
TIMEOUT_MARGIN_S = 0.5

P = ParamSpec("P")
T = TypeVar("T")


def all_checks() -> list[DoctorCheck]:
    """Every check group, in the order the table shows them: outside in."""
    return [*asterisk_checks.CHECKS, *dependencies.CHECKS, *processes.CHECKS, *security.CHECKS]


class UnknownCheck(ValueError):
    """--only named something that is no check; the message lists the valid ids."""


@dataclass(frozen=True)
class Selection:
    """The groups to run, and which of their findings to keep (`--only health.llm_service`)."""

    checks: list[DoctorCheck]
    selectors: tuple[str, ...] = ()

    def keeps(self, finding: Finding) -> bool:
        """A finding under a selector, or a group-level one (a timeout, a crash)."""
        if not self.selectors or any(finding.id == c.id for c in self.checks):
            return True
        return any(finding.id.startswith(s) for s in self.selectors)


def _group(selector: str, checks: Sequence[DoctorCheck]) -> DoctorCheck | None:
    return next(
        (c for c in checks if selector == c.id or selector.startswith(f"{c.id}.")),
        None,
    )


def select(checks: Sequence[DoctorCheck], only: Sequence[str]) -> Selection:
    """Resolve `--only` (repeated or comma-separated) to groups, before anything runs."""
    selectors = tuple(s.strip() for item in only for s in item.split(",") if s.strip())
    unknown = [s for s in selectors if _group(s, checks) is None]
    if unknown:
        valid = ", ".join(c.id for c in checks)
        raise UnknownCheck(
            f"no check named {', '.join(map(repr, unknown))}: choose from {valid}, "
            "or a finding id under one of them (e.g. health.llm_service)"
        )
    chosen = {group.id for s in selectors if (group := _group(s, checks)) is not None}
    return Selection([c for c in checks if not selectors or c.id in chosen], selectors)


class _DaemonThreads(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor during a run: one daemon thread per job, never joined.

    Checks do their sync work (XML-RPC to supervisord, file reads) in
    `asyncio.to_thread`. When that work hangs, the group's timeout gives up on
    it, but asyncio.run would still join the default executor's threads before
    returning, and the interpreter its pool's workers before exiting: doctor
    would hang with the dependency. A daemon thread is simply left behind.
    """

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # handed to the awaiting check, like a pool would
                future.set_exception(error)
            else:
                future.set_result(result)

        threading.Thread(target=work, name="vagent-doctor-check", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to join: the threads are daemons."""


def _timed_out(check: DoctorCheck, ctx: DoctorContext) -> Finding:
    return Finding(
        check.id,
        "fail",
        f"no answer within {ctx.timeout_s:g}s: something it talks to hangs",
        observed={"timeout_s": ctx.timeout_s},
        fix=f"see whether it is only slow: `vagent doctor --only {check.id} --timeout 15`",
        runbook=check.runbook,
    )


def _crashed(check: DoctorCheck, error: Exception) -> Finding:
    return Finding(
        check.id,
        "unknown",
        f"the check could not run: {type(error).__name__}: {error}",
        fix=f"run `vagent doctor --only {check.id}` again; if it persists, report it as a bug",
        runbook=check.runbook,
    )


async def _run_group(check: DoctorCheck, ctx: DoctorContext) -> list[Finding]:
    """One group under its bound; its timeout or exception becomes one finding."""
    bound = asyncio.timeout(ctx.timeout_s + TIMEOUT_MARGIN_S)
    try:
        async with bound:
            return await check.run(ctx)
    except Exception as error:  # a check must never take the run down with it
        return [_timed_out(check, ctx) if bound.expired() else _crashed(check, error)]


async def run_checks(selection: Selection, ctx: DoctorContext) -> list[Finding]:
    """Every selected group at once; findings in the groups' order."""
    asyncio.get_running_loop().set_default_executor(_DaemonThreads())
    groups = await asyncio.gather(*(_run_group(check, ctx) for check in selection.checks))
    return [finding for group in groups for finding in group if selection.keeps(finding)]


def _config_finding(error: ConfigError) -> Finding:
    """An invalid configuration is a known failure: nothing can start (critical)."""
    return Finding(
        "config",
        "fail",
        f"configuration is invalid: {error}",
        fix="fix the variable named above (in .env, the systemd unit or your shell)",
        runbook="configuration.md",
    )


def diagnose(only: Sequence[str], timeout_s: float) -> DoctorReport:
    """Load the settings and run the selected checks. Raises UnknownCheck for a bad --only."""
    selection = select(all_checks(), only)
    start = time.monotonic()
    try:
        settings = load_settings()
    except ConfigError as error:
        return DoctorReport([_config_finding(error)], time.monotonic() - start)
    findings = asyncio.run(run_checks(selection, DoctorContext(settings, timeout_s)))
    return DoctorReport(findings, time.monotonic() - start, tuple(settings.secrets()))
