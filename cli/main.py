"""The `vagent` command: start, watch and stop the voice agent's services."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner

from vagent import __version__
from vagent.cli import control
from vagent.cli.status import (
    ServiceStatus,
    as_json,
    collect,
    drill_lines,
    exit_code,
    problems,
    table,
)
from vagent.cli.supervisor import STOP_MARGIN_S, Supervisor, SupervisorError
from vagent.services.config import SERVICES, ConfigError, Settings, env_file, load_settings

# The probe and the drills import the whole service runtime (bus, policy layer,
# openai): they are imported by their commands, so `vagent status` starts fast.

app = typer.Typer(
    help="vagent: a resilient AI voice agent for Asterisk. Start it with `vagent up`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
console = Console()
errors = Console(stderr=True)

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL = 0, 1, 2


def _fail(message: str, code: int = EXIT_CRITICAL) -> NoReturn:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        _fail(f"configuration is invalid\n{error}")


def _supervisor() -> Supervisor:
    return Supervisor(_settings())


def _require_running(sup: Supervisor) -> None:
    if not sup.is_running():
        _fail("vagent is not running: start it with `vagent up`")


def _wait_ready(sup: Supervisor, timeout_s: float) -> list[ServiceStatus]:
    """Poll supervisord and /health until every service answers: a live table on a
    terminal, the final table alone in a log or a pipe (where Live would not end its
    last line)."""
    if not console.is_terminal:
        rows = _poll_ready(sup, timeout_s, lambda _rows: None)
        console.print(table(rows))
        return rows
    spinner = Spinner("dots", text="waiting for the services to become ready")
    rows = collect(sup, sup.settings, timeout_s=1.0)
    with Live(Group(spinner, table(rows)), console=console, transient=False) as live:
        rows = _poll_ready(sup, timeout_s, lambda now: live.update(Group(spinner, table(now))))
        live.update(table(rows))
    return rows


def _poll_ready(
    sup: Supervisor, timeout_s: float, show: Callable[[list[ServiceStatus]], None]
) -> list[ServiceStatus]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = collect(sup, sup.settings, timeout_s=1.0)
        show(rows)
        services = [r for r in rows if r.name in SERVICES]
        settled = all(r.ready for r in services) or any(r.state == "FATAL" for r in rows)
        if settled or time.monotonic() >= deadline:
            return rows
        time.sleep(0.5)


def _report(rows: list[ServiceStatus], sup: Supervisor) -> int:
    code = exit_code(rows)
    for line in problems(rows, include_warnings=code == EXIT_WARNING):
        console.print(f"  [yellow]![/yellow] {line}", highlight=False)
    for row in rows:
        if row.state in ("FATAL", "BACKOFF", "EXITED"):
            tail, _ = sup.tail(row.name, 0, 2000)
            console.print(f"[red]{row.name} last output:[/red]\n{tail.strip()}", highlight=False)
    return code


@app.command()
def up(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every service.")] = 60.0,
    foreground: Annotated[
        bool, typer.Option(help="Run supervisord in the foreground (for systemd).")
    ] = False,
) -> None:
    """Start every service under supervisord and wait until each answers /health.

    Exit code: 0 all healthy, 1 some degraded, 2 some not ready in time.
    """
    sup = _supervisor()
    if sup.is_running():
        console.print(f"vagent is already up (run dir {sup.settings.run_dir}).")
        console.print(table(collect(sup, sup.settings)))
        raise typer.Exit(EXIT_OK)
    try:
        if foreground:
            sup.exec_foreground()
        sup.start()
    except SupervisorError as error:
        _fail(str(error))
    rows = _wait_ready(sup, timeout)
    code = _report(rows, sup)
    summary = {0: "[green]all services healthy[/green]", 1: "[yellow]up, degraded[/yellow]"}
    console.print(summary.get(code, "[red]not every service is ready[/red]"))
    raise typer.Exit(code)


@app.command()
def down(
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for a clean stop (default: the drain bound + 20)."),
    ] = None,
) -> None:
    """Stop the services, the embedded Redis and supervisord. Safe to run twice.

    Live calls get VAGENT_DRAIN_S to end before the controller hangs them up.
    """
    sup = _supervisor()
    timeout = timeout if timeout is not None else sup.settings.drain_s + 2 * STOP_MARGIN_S
    if not sup.is_running():
        console.print("vagent is not running.")
        raise typer.Exit(EXIT_OK)
    try:
        sup.shutdown(timeout)
    except SupervisorError as error:
        _fail(str(error))
    console.print("vagent stopped.")


@app.command()
def status(
    as_json_flag: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per service: process state, pid, uptime, restarts, health and failing checks.

    Exit code: 0 healthy, 1 degraded, 2 down or unhealthy.
    """
    sup = _supervisor()
    rows = collect(sup, sup.settings)
    code = exit_code(rows)
    if as_json_flag:
        print(json.dumps(as_json(rows), indent=2))
        raise typer.Exit(code)
    if not sup.is_running():
        console.print("vagent is not running: start it with `vagent up`.")
        raise typer.Exit(code)
    console.print(table(rows))
    for line in drill_lines(rows):
        console.print(f"  [yellow]drill[/yellow] {line}", highlight=False)
    for line in problems(rows, include_warnings=False):
        console.print(f"  [red]![/red] {line}", highlight=False)
    raise typer.Exit(code)


@app.command()
def logs(
    service: Annotated[
        str, typer.Argument(help="call_controller, stt_service, llm_service, tts_service or redis.")
    ],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing.")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show.")] = 50,
) -> None:
    """Show a service's log (read from supervisord)."""
    sup = _supervisor()
    if service not in sup.programs:
        _fail(f"unknown service {service!r}: choose one of {', '.join(sup.programs)}")
    _require_running(sup)
    text, offset = sup.tail(service, 0, 256 * 1024)
    for line in text.splitlines()[-lines:] if lines > 0 else []:
        print(line)
    while follow:
        try:
            time.sleep(0.5)
            text, offset = sup.tail(service, offset, 256 * 1024)
        except KeyboardInterrupt:
            break
        sys.stdout.write(text)
        sys.stdout.flush()


@app.command()
def restart(
    service: Annotated[str | None, typer.Argument(help="One service; all when omitted.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for health.")] = 60.0,
) -> None:
    """Restart one service or all of them, then wait until they answer /health."""
    sup = _supervisor()
    _require_running(sup)
    if service is not None and service not in sup.programs:
        _fail(f"unknown service {service!r}: choose one of {', '.join(sup.programs)}")
    sup.restart([service] if service else list(SERVICES))
    raise typer.Exit(_report(_wait_ready(sup, timeout), sup))


@app.command("probe")
def probe_command(
    text: Annotated[
        str | None, typer.Option(help="Skip speech recognition: send this text to the LLM.")
    ] = None,
    wav: Annotated[
        Path | None, typer.Option(help="A WAV file to use as the caller's utterance.")
    ] = None,
    as_json_flag: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the whole reply.")] = 15.0,
) -> None:
    """Send one synthetic caller turn through the running stack (no Asterisk needed).

    Without --text or --wav the utterance is spoken locally with espeak-ng.
    Reports the transcript, the reply, which provider served each stage and
    the time to first audio. Exit code: 0 the caller would hear an answer,
    2 nothing came back.
    """
    from vagent.cli.probe import ProbeError, probe_table, run_probe

    if text is not None and wav is not None:
        _fail("give --text or --wav, not both")
    if wav is not None and not wav.is_file():
        _fail(f"{wav} is not a readable file")
    settings = _settings()
    try:
        result = run_probe(settings, text, wav, timeout)
    except ProbeError as error:
        _fail(str(error))
    if as_json_flag:
        print(json.dumps(result.as_json(), indent=2))
    else:
        console.print(probe_table(result))
    raise typer.Exit(EXIT_OK if result.heard else EXIT_CRITICAL)


@app.command()
def doctor(
    as_json_flag: Annotated[
        bool,
        typer.Option(
            "--json", help="Print JSON: every check's id, status, observed value, output, fix."
        ),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            metavar="CHECK",
            help="Run only these checks (repeat it, or comma-separate): a group such as "
            "redis or security, or a finding id prefix such as health.llm_service.",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1, metavar="S", help="Seconds each check may take; they all run at once."
        ),
    ] = 3.0,
) -> None:
    """Check everything vagent needs, at once, and say how to fix each problem.

    Asterisk's http.conf and ari.conf, ARI (credentials, the Stasis app), Redis,
    RTPEngine, the OpenAI key and models, the processes and crash loops, each
    service's /health, file permissions and secrets. Each problem gets one fix
    line and the runbook page to read. Safe before `vagent up`; changes nothing.

    Exit code, like a monitoring plugin: 0 ok, 1 warning, 2 critical (an invalid
    configuration too), 3 unknown (or an unknown --only name).
    """
    # Imported here: the checks' modules are only needed by this command.
    from vagent.cli.doctor.report import print_report, report_json
    from vagent.cli.doctor.runner import UnknownCheck, diagnose

    try:
        result = diagnose(only or [], timeout)
    except UnknownCheck as error:
        _fail(str(error), code=3)
    if as_json_flag:
        print(report_json(result))
    else:
        print_report(result, console)
    raise typer.Exit(result.exit_code)


@app.command("systemd-unit")
def systemd_unit() -> None:
    """Print a systemd unit that runs vagent at boot (`vagent up --foreground`)."""
    settings = _settings()
    vagent = shutil.which("vagent") or f"{sys.executable} -m vagent.cli.main"
    dotenv = env_file()
    lines = [
        "[Unit]",
        "Description=vagent AI voice agent for Asterisk",
        "After=network-online.target asterisk.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"Environment=VAGENT_HOME={settings.home.resolve()}",
    ]
    if dotenv is not None:
        lines.append(f"Environment=VAGENT_ENV_FILE={dotenv.resolve()}")
    lines += [
        f"ExecStart={vagent} up --foreground",
        f"ExecStop={vagent} down",
        f"TimeoutStopSec={int(settings.drain_s) + 3 * STOP_MARGIN_S}",
        "Restart=on-failure",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    print("\n".join(lines))


@app.command("simulate-failure")
def simulate_failure(
    target: Annotated[str, typer.Argument(help="llm, llm-all, stt, tts, redis, ari or rtpengine.")],
    mode: Annotated[str, typer.Option(help="error, timeout or slow.")] = "error",
    duration: Annotated[
        str, typer.Option(help="The fault ends by itself after this long: 60s, 2m, 90.")
    ] = "60s",
    turns: Annotated[int, typer.Option(min=1, max=20, help="Probe turns during the fault.")] = 3,
    recover_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for steady state after the restore.")
    ] = 60.0,
    hold: Annotated[
        bool,
        typer.Option(help="Inject and return, no experiment: the fault stays for --duration."),
    ] = False,
    as_json_flag: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rehearse a failure on the running stack and check that the fallback serves.

    Targets: llm (the primary model), llm-all (every model), stt, tts, redis,
    ari, rtpengine. Modes: error (every call fails), timeout (every call hangs
    until its timeout), slow (every call takes 3/4 of its timeout, then works).
    The drill is an experiment: steady state before (health and a probe turn),
    the fault, probe turns while /health is watched, restore, steady state
    after; the report gives the hypothesis, the observations, the time to
    detect and the time to recover. With --hold the fault is only injected,
    for a game day with real calls: end it with `vagent restore TARGET`.
    Every fault ends by itself after --duration, even if this command dies.

    Exit code: 0 the hypothesis held, 1 it deviated, 2 the drill could not
    run, 3 the target does not apply to this configuration.
    """
    from vagent.cli.drill import DrillAborted, Plan, run_drill
    from vagent.cli.drill_report import EXIT_NOT_APPLICABLE, report_view

    if target not in control.TARGETS:
        _fail(f"unknown target {target!r}: choose one of {', '.join(control.TARGETS)}")
    if mode not in control.MODES:
        _fail(f"unknown mode {mode!r}: choose one of {', '.join(control.MODES)}")
    try:
        duration_s = control.parse_duration(duration)
    except ValueError as error:
        _fail(str(error))
    sup = _supervisor()
    _require_running(sup)
    if hold:
        _hold_drill(sup.settings, target, mode, duration_s, as_json_flag)
    plan = Plan(target, mode, duration_s, turns, recover_timeout)
    try:
        report = run_drill(sup.settings, plan)
    except KeyboardInterrupt:
        errors.print(f"interrupted: the fault was restored (to be sure: vagent restore {target})")
        raise typer.Exit(130) from None
    except DrillAborted as aborted:
        if as_json_flag:
            print(json.dumps({"target": target, "mode": mode, "error": str(aborted)}, indent=2))
        if aborted.code == EXIT_NOT_APPLICABLE:
            errors.print(f"[yellow]not applicable:[/yellow] {aborted}", highlight=False)
            raise typer.Exit(aborted.code) from None
        _fail(str(aborted), aborted.code)
    if as_json_flag:
        print(json.dumps(report.as_json(), indent=2))
    else:
        console.print(report_view(report))
    raise typer.Exit(report.exit_code)


def _hold_drill(
    settings: Settings, target: str, mode: str, duration_s: float, as_json_flag: bool
) -> NoReturn:
    """`simulate-failure --hold`: inject, say where and until when, and return."""
    from vagent.cli.drill import not_applicable
    from vagent.cli.drill_report import EXIT_NOT_APPLICABLE, held_view

    try:
        answers = asyncio.run(control.inject(settings, target, mode, duration_s))
    except control.ControlError as error:
        _fail(str(error))
    faults = control.faults_of(answers)
    skipped = {a.service: a.reason or a.error for a in answers if not a.faults}
    if as_json_flag:
        body = {"target": target, "mode": mode, "duration_s": duration_s}
        injected = [f.as_json() for f in faults]
        print(json.dumps({**body, "injected": injected, "not_injected": skipped}, indent=2))
    elif faults:
        console.print(held_view(target, mode, faults, control.failures_of(answers)))
        console.print(
            f"The fault ends by itself in {duration_s:g} s. Watch it with `vagent status`; "
            f"end it now with `vagent restore {target}`."
        )
    if not faults:
        why = not_applicable(target, answers)
        errors.print(f"[yellow]not applicable:[/yellow] {why}", highlight=False)
        raise typer.Exit(EXIT_NOT_APPLICABLE)
    raise typer.Exit(EXIT_OK)


@app.command()
def restore(
    target: Annotated[
        str | None, typer.Argument(help="The drill to end: llm, llm-all, stt, tts, redis...")
    ] = None,
    all_drills: Annotated[bool, typer.Option("--all", help="End every drill.")] = False,
    as_json_flag: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """End failure drills now (they also end by themselves), and reset the breakers they opened.

    Exit code: 0 done (also when no drill was running), 2 a service could not be asked.
    """
    from vagent.cli.drill_report import restored_view

    if (target is None) != all_drills:
        _fail("give a TARGET or --all (one of them)")
    if target is not None and target not in control.TARGETS:
        _fail(f"unknown target {target!r}: choose one of {', '.join(control.TARGETS)}")
    sup = _supervisor()
    _require_running(sup)
    try:
        answers = asyncio.run(control.restore(sup.settings, target))
    except control.ControlError as error:
        _fail(str(error))
    faults, failures = control.faults_of(answers), control.failures_of(answers)
    if as_json_flag:
        restored = [f.as_json() for f in faults]
        print(json.dumps({"restored": restored, "errors": failures}, indent=2))
    elif faults:
        console.print(restored_view(faults))
    else:
        console.print(f"no {'drill' if target is None else target + ' drill'} was running.")
    for line in failures:
        errors.print(f"[red]error:[/red] {line}", highlight=False)
    raise typer.Exit(EXIT_CRITICAL if failures else EXIT_OK)


@app.command()
def version() -> None:
    """Print vagent's version."""
    print(__version__)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
