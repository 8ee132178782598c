"""vagent doctor, unit by unit: the runner's bounds, the report, the security and process checks."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from vagent.cli import runbooks
from vagent.cli.doctor import processes, security
from vagent.cli.doctor.model import DoctorCheck, DoctorContext, Finding, Status
from vagent.cli.doctor.report import DoctorReport, as_json, print_report, summary
from vagent.cli.doctor.runner import (
    TIMEOUT_MARGIN_S,
    UnknownCheck,
    all_checks,
    diagnose,
    run_checks,
    select,
)
from vagent.cli.health import ServiceHealth
from vagent.cli.main import app
from vagent.cli.supervisor import ProcessInfo, Supervisor
from vagent.services.config import Settings

SECRET = "sk-doctor-SECRET-key-0042"
ARI_SECRET = "ari-doctor-SECRET-pw-77"
RUNBOOKS_DIR = Path(__file__).resolve().parents[1] / "runbooks"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No admin setting leaks in; VAGENT_HOME is a fresh directory; no .env in the cwd."""
    for key in list(os.environ):
        if key.startswith(("VAGENT_", "OPENAI_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("VAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VAGENT_ASTERISK_CONFIG_DIR", str(tmp_path / "asterisk"))
    monkeypatch.chdir(tmp_path)


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(home=tmp_path / "home", asterisk_config_dir=tmp_path / "asterisk", **values)


def check(check_id: str, run: Callable[[DoctorContext], Awaitable[list[Finding]]]) -> DoctorCheck:
    return DoctorCheck(check_id, check_id, run, runbook="redis.md")


def passing(check_id: str) -> DoctorCheck:
    async def run(ctx: DoctorContext) -> list[Finding]:
        return [
            Finding(f"{check_id}.one", "pass", "fine"),
            Finding(f"{check_id}.two", "warn", "meh"),
        ]

    return check(check_id, run)


def sleeping(check_id: str) -> DoctorCheck:
    async def run(ctx: DoctorContext) -> list[Finding]:
        await asyncio.sleep(3600)
        return []

    return check(check_id, run)


def blocked_thread(check_id: str) -> DoctorCheck:
    """Sync work that never returns (a stuck XML-RPC call), in a thread as checks do it."""

    async def run(ctx: DoctorContext) -> list[Finding]:
        await asyncio.to_thread(threading.Event().wait)
        return []

    return check(check_id, run)


def raising(check_id: str, error: Exception) -> DoctorCheck:
    async def run(ctx: DoctorContext) -> list[Finding]:
        raise error

    return check(check_id, run)


def run_sync(checks: list[DoctorCheck], ctx: DoctorContext) -> tuple[list[Finding], float]:
    """Like the CLI: a fresh asyncio.run, so its executor shutdown is part of the time."""
    start = time.monotonic()
    findings = asyncio.run(run_checks(select(checks, []), ctx))
    return findings, time.monotonic() - start


# --------------------------------------------------------------------------- the runner


def test_the_run_is_bounded_by_one_timeout_not_their_sum(tmp_path: Path) -> None:
    timeout = 0.4
    checks = [sleeping(f"hang{i}") for i in range(4)] + [
        blocked_thread(f"stuck{i}") for i in range(4)
    ]
    findings, took = run_sync(
        [*checks, passing("fine")], DoctorContext(settings(tmp_path), timeout)
    )
    bound = timeout + TIMEOUT_MARGIN_S
    assert bound <= took < bound + 1.0, took  # one bound; in sequence it would be 8 of them
    hung = {f.id: f for f in findings if f.id.startswith(("hang", "stuck"))}
    assert len(hung) == 8
    for finding in hung.values():
        assert finding.status == "fail"
        assert finding.output.startswith(f"no answer within {timeout:g}s")
        assert finding.runbook == "redis.md"
        assert "--timeout" in finding.fix
    assert [f.id for f in findings if f.id.startswith("fine")] == ["fine.one", "fine.two"]


def test_a_stuck_thread_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    """asyncio.run joins its executor, the interpreter its pool: doctor's threads are daemons."""
    script = f"""
import asyncio, threading
from vagent.cli.doctor.model import DoctorCheck, DoctorContext
from vagent.cli.doctor.runner import run_checks, select
from vagent.services.config import Settings

async def stuck(ctx):
    await asyncio.to_thread(threading.Event().wait)

checks = [DoctorCheck("stuck", "stuck", stuck)]
ctx = DoctorContext(Settings(home={str(tmp_path)!r}), 0.3)
print(asyncio.run(run_checks(select(checks, []), ctx))[0].status)
"""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fail"
    assert took < 10, took  # interpreter start and imports included; a join would never end


def test_a_raising_check_is_unknown_with_its_error_and_others_still_report(
    tmp_path: Path,
) -> None:
    checks = [
        raising("broken", RuntimeError("boom: the parser met a tab")),
        raising("early", TimeoutError("socket timed out")),  # its own, not the runner's bound
        passing("fine"),
    ]
    findings, took = run_sync(checks, DoctorContext(settings(tmp_path), 2.0))
    assert took < 2.0
    by_id = {f.id: f for f in findings}
    assert by_id["broken"].status == "unknown"
    assert (
        by_id["broken"].output
        == "the check could not run: RuntimeError: boom: the parser met a tab"
    )
    assert "Traceback" not in by_id["broken"].output
    assert by_id["early"].status == "unknown"
    assert "TimeoutError: socket timed out" in by_id["early"].output
    assert by_id["fine.one"].status == "pass"


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], 0),
        (["pass", "pass"], 0),
        (["pass", "warn"], 1),
        (["warn", "fail", "pass"], 2),
        (["unknown", "pass"], 3),
        (["unknown", "warn"], 1),  # a known warning beats "could not tell"
        (["unknown", "fail"], 2),
    ],
)
def test_exit_codes_are_a_monitoring_plugins(statuses: list[Status], code: int) -> None:
    report = DoctorReport([Finding(f"c{i}", s, "") for i, s in enumerate(statuses)], 0.1)
    assert report.exit_code == code
    assert as_json(report)["exit_code"] == code


def test_only_selects_groups_and_finding_prefixes() -> None:
    checks = [passing("ari"), passing("ari_conf"), passing("health")]
    assert [c.id for c in select(checks, []).checks] == ["ari", "ari_conf", "health"]
    assert [c.id for c in select(checks, ["ari"]).checks] == ["ari"]  # not ari_conf
    assert [c.id for c in select(checks, ["ari_conf,health"]).checks] == ["ari_conf", "health"]
    narrow = select(checks, ["health.llm_service"])
    assert [c.id for c in narrow.checks] == ["health"]
    assert narrow.keeps(Finding("health.llm_service.redis:ping", "fail", ""))
    assert not narrow.keeps(Finding("health.tts_service", "pass", ""))
    assert narrow.keeps(Finding("health", "fail", "no answer"))  # the group's own timeout
    with pytest.raises(UnknownCheck) as error:
        select(checks, ["redis", "ari"])
    assert "'redis'" in str(error.value)
    assert "choose from ari, ari_conf, health" in str(error.value)


def test_the_registry_has_every_group_of_the_issue() -> None:
    ids = [c.id for c in all_checks()]
    expected = {"http_conf", "ari_conf", "ari", "redis", "rtpengine", "openai"}
    assert expected | {"processes", "health", "security"} <= set(ids)
    assert len(ids) == len(set(ids))
    for group in all_checks():
        if group.runbook:
            assert runbooks.runbook_path(group.runbook).is_file(), group.runbook


# --------------------------------------------------------------------------- the report


def report_with_secrets() -> DoctorReport:
    findings = [
        Finding("redis.reachable", "pass", "PONG in 0.4 ms", observed=0.4),
        Finding(
            "openai.key",
            "fail",
            f"key {SECRET} rejected (401)",
            observed={"key": SECRET, "tried": [SECRET, "x"], "path": Path(f"/tmp/{SECRET}")},
            fix=f"replace {SECRET}",
            runbook="openai.md",
        ),
        Finding("ari.auth", "warn", f"password {ARI_SECRET} is short", fix="rotate it"),
        Finding("health", "unknown", "the check could not run"),
    ]
    return DoctorReport(findings, 1.234, (SECRET, ARI_SECRET))


def test_json_has_every_checks_id_status_observed_output_and_fix() -> None:
    body = json.loads(json.dumps(as_json(report_with_secrets())))
    assert body["status"] == "fail"
    assert body["exit_code"] == 2
    assert body["duration_ms"] == 1234.0
    assert [c["id"] for c in body["checks"]] == [
        "redis.reachable",
        "openai.key",
        "ari.auth",
        "health",
    ]
    for entry in body["checks"]:
        assert {"id", "status", "observed", "output", "fix", "runbook"} <= set(entry)
    assert body["checks"][0]["observed"] == 0.4


def test_secrets_never_reach_the_table_the_fix_lines_or_the_json() -> None:
    report = report_with_secrets()
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    print_report(report, console)
    text = console.export_text()
    dumped = json.dumps(as_json(report))
    for output in (text, dumped):
        assert SECRET not in output and ARI_SECRET not in output
        assert "***" in output
    assert "replace ***" in text  # the fix line is scrubbed too, not dropped
    assert "key *** rejected (401)" in text


def test_table_fix_lines_runbooks_and_summary() -> None:
    report = report_with_secrets()
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    print_report(report, console)
    text = console.export_text()
    assert "openai.key" in text and "redis.reachable" in text
    assert f"read {runbooks.runbook_path('openai.md')}" in text
    assert f"read {runbooks.runbook_for('ari.auth')}" in text  # no runbook: by its id
    assert "✗ openai.key: replace ***" in text
    assert "! ari.auth: rotate it" in text
    assert "? health: the check could not run" in text  # no fix: the output stands in
    assert "redis.reachable: " not in text  # a pass gets no fix line
    assert summary(report) == "doctor: 1 critical, 1 warning, 1 unknown, 1 ok in 1.2s"
    assert text.rstrip().endswith("doctor: 1 critical, 1 warning, 1 unknown, 1 ok in 1.2s")


def test_every_runbook_page_exists_and_is_in_the_index() -> None:
    index = (RUNBOOKS_DIR / "README.md").read_text()
    pages = {p.name for p in RUNBOOKS_DIR.glob("*.md")} - {"README.md"}
    assert {"asterisk-config.md", "security.md", "openai.md", "crash-loop.md"} <= pages
    for page in pages:
        assert f"({page})" in index, f"{page} is not linked from runbooks/README.md"
    for name in ("http_conf.bindaddr", "ari_conf.user", "security.env_file", "processes.x"):
        assert runbooks.runbook_for(name).is_file(), name
    assert runbooks.runbook_for("ari_conf.user").name == "asterisk-config.md"
    assert runbooks.runbook_for("ari.stasis_app").name == "asterisk-ari.md"
    assert runbooks.runbook_for("drill:faults").name == "game-days.md"


# --------------------------------------------------------------------------- the CLI in-process


def test_cli_unknown_only_exits_3_and_lists_the_ids() -> None:
    result = CliRunner().invoke(app, ["doctor", "--only", "nope"])
    assert result.exit_code == 3
    assert "no check named 'nope'" in result.output
    assert "security" in result.output


def test_cli_invalid_configuration_is_a_critical_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAGENT_PORT_BASE", "eighty")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 2
    body = json.loads(result.output)
    assert [c["id"] for c in body["checks"]] == ["config"]
    assert "VAGENT_PORT_BASE is invalid" in body["checks"][0]["output"]
    assert "Traceback" not in result.output and SECRET not in result.output


def test_diagnose_before_up_warns_and_writes_nothing(tmp_path: Path) -> None:
    report = diagnose(["processes", "health", "security"], 1.0)
    by_id = {f.id: f for f in report.findings}
    assert by_id["processes"].status == "warn"
    assert "vagent up" in by_id["processes"].fix
    assert by_id["health"].status == "warn"
    assert report.exit_code == 1
    assert not (tmp_path / "home").exists()  # doctor never creates anything


# --------------------------------------------------------------------------- security


def write_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, mode: int) -> Path:
    path = tmp_path / "vagent.env"
    path.write_text(text)
    path.chmod(mode)
    monkeypatch.setenv("VAGENT_ENV_FILE", str(path))
    return path


@pytest.mark.parametrize(
    ("text", "mode", "status"),
    [
        (f"OPENAI_API_KEY={SECRET}\n", 0o644, "fail"),
        (f"OPENAI_API_KEY={SECRET}\n", 0o640, "warn"),
        ("VAGENT_LOG_LEVEL=DEBUG\n", 0o644, "warn"),
        (f"VAGENT_ARI_PASSWORD={ARI_SECRET}\n", 0o600, "pass"),
        ("VAGENT_REDIS_URL=redis://:hunter2@10.0.0.5:6379/0\n", 0o604, "fail"),
        ("VAGENT_LOG_LEVEL=DEBUG\n", 0o602, "fail"),  # anyone may rewrite the settings
    ],
)
def test_env_file_mode_and_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, mode: int, status: Status
) -> None:
    path = write_env(tmp_path, monkeypatch, text, mode)
    finding = security.check_env_file()
    assert finding.status == status
    assert finding.observed["mode"] == f"{mode:04o}"
    dumped = json.dumps(finding.as_json())
    assert SECRET not in dumped and ARI_SECRET not in dumped and "hunter2" not in dumped
    if status != "pass":
        assert finding.fix == f"chmod 600 {path}"
        assert finding.runbook == "security.md"
    if text.startswith("OPENAI_API_KEY") and status == "fail":
        assert "OPENAI_API_KEY" in finding.output


def test_no_env_file_is_fine() -> None:
    assert security.check_env_file().status == "pass"


def make_run_dir(tmp_path: Path) -> Settings:
    s = settings(tmp_path)
    s.run_dir.mkdir(parents=True, mode=0o700)
    s.log_dir.mkdir(mode=0o700)
    for name in ("supervisor.sock", "supervisord.conf", "control.token"):
        (s.run_dir / name).touch(mode=0o600)
    return s


def test_private_files_pass_when_owner_only(tmp_path: Path) -> None:
    findings = security.check_permissions(make_run_dir(tmp_path))
    assert [(f.id, f.status) for f in findings] == [("security.permissions", "pass")]


def test_open_run_dir_socket_token_and_ari_conf_are_reported(tmp_path: Path) -> None:
    s = make_run_dir(tmp_path)
    s.run_dir.chmod(0o755)
    (s.run_dir / "supervisor.sock").chmod(0o666)
    (s.run_dir / "control.token").chmod(0o640)
    s.log_dir.chmod(0o750)
    s.asterisk_config_dir.mkdir()
    (s.asterisk_config_dir / "ari.conf").write_text("[vagent]\ntype=user\npassword=x\n")
    (s.asterisk_config_dir / "ari.conf").chmod(0o644)
    found = {f.id: f for f in security.check_permissions(s)}
    assert found["security.run_dir"].status == "fail"
    assert found["security.run_dir"].fix == f"chmod 700 {s.run_dir}"
    assert "every user" in found["security.run_dir"].output
    assert found["security.supervisor_socket"].status == "fail"
    assert found["security.control_token"].status == "fail"
    assert "its group" in found["security.control_token"].output
    assert found["security.log_dir"].status == "warn"
    assert found["security.ari_conf"].status == "warn"
    assert "security.supervisord_conf" not in found
    (s.asterisk_config_dir / "ari.conf").chmod(0o640)  # Asterisk's group may read it
    assert "security.ari_conf" not in {f.id for f in security.check_permissions(s)}


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("listen_on", "bind_host", "status", "words"),
    [
        ("127.0.0.1", "127.0.0.1", "pass", "on loopback only"),
        ("0.0.0.0", "0.0.0.0", "warn", "reachable from the network"),
        ("0.0.0.0", "127.0.0.1", "fail", "another program"),
        ("::", "::", "warn", "reachable from the network"),
        (None, "0.0.0.0", "warn", "once up"),
        (None, "127.0.0.1", "pass", "nothing listening"),
    ],
)
def test_listeners_beyond_loopback(
    tmp_path: Path, listen_on: str | None, bind_host: str, status: Status, words: str
) -> None:
    port = free_port()
    s = settings(tmp_path, port_base=port - 2, bind_host=bind_host)  # port = llm_service's
    sock = listen(listen_on, port) if listen_on else None
    try:
        finding = security.check_listeners(s)
    finally:
        if sock:
            sock.close()
    assert finding.status == status, finding
    assert words in finding.output
    if listen_on:
        endpoint = f"[{listen_on}]:{port}" if ":" in listen_on else f"{listen_on}:{port}"
        assert finding.observed["listeners"] == [endpoint]
        assert endpoint in finding.output or status == "pass"


def test_proc_net_addresses_decode() -> None:
    assert str(security._address("0100007F")) == "127.0.0.1"
    assert str(security._address("00000000")) == "0.0.0.0"
    assert str(security._address("00000000000000000000000001000000")) == "::1"
    mapped = security._address("0000000000000000FFFF00000100007F")
    assert mapped == ipaddress.ip_address("::ffff:127.0.0.1") and security._is_loopback(mapped)
    assert not security._is_loopback(security._address("0000000000000000FFFF00000500000A"))


@pytest.mark.parametrize(
    ("password", "status"),
    [
        ("CHANGEME", "fail"),
        ("asterisk", "fail"),
        ("vagent", "fail"),  # also the user's name
        ("s3cret!", "warn"),
        ("d4c1b0b5e7f2a9c8e1f0a7b6", "pass"),
    ],
)
def test_default_ari_password_fails_without_printing_it(
    tmp_path: Path, password: str, status: Status
) -> None:
    finding = security.check_ari_password(settings(tmp_path, ari_password=password))
    assert finding.status == status
    assert password not in f"{finding.output} {finding.observed}"


# --------------------------------------------------------------------------- processes and health


def proc(name: str, state: str, description: str = "") -> ProcessInfo:
    running = state in ("RUNNING", "STARTING")
    return ProcessInfo(
        name, state, 4242 if running else None, 75.0 if running else None, 0, description
    )


@pytest.mark.parametrize(
    ("state", "exits", "status", "words"),
    [
        ("RUNNING", [], "pass", "RUNNING, pid 4242, up 1m15s"),
        ("RUNNING", ["terminated by SIGKILL; not expected"], "warn", "1 unexpected exit"),
        ("RUNNING", ["exit status 1; not expected"] * 3, "fail", "crash loop: 3 unexpected exits"),
        ("STARTING", [], "warn", "STARTING"),
        ("FATAL", [], "fail", "FATAL (Exited too quickly)"),
        ("BACKOFF", [], "fail", "BACKOFF"),
        ("EXITED", [], "fail", "EXITED"),
        ("STOPPED", [], "fail", "STOPPED"),
    ],
)
def test_program_states_and_crash_loops(
    state: str, exits: list[str], status: Status, words: str
) -> None:
    tail = f"boot\nValueError: bad key {SECRET}\nexiting\n"
    snapshot = processes._Snapshot(
        {"llm_service": proc("llm_service", state, "Exited too quickly")},
        {"llm_service": exits},
        {"llm_service": tail} if state in ("FATAL", "BACKOFF", "EXITED", "STOPPED") else {},
    )
    finding = processes._program("llm_service", snapshot, [SECRET])
    assert finding.id == "processes.llm_service"
    assert finding.status == status
    assert words in finding.output
    assert SECRET not in finding.output
    if status == "fail" and state != "RUNNING":
        assert "ValueError: bad key ***" in finding.output  # the last output, scrubbed
    if exits:
        assert f"(last: {exits[-1]})" in finding.output
    assert finding.observed["unexpected_exits"] == len(exits)
    assert (finding.fix == "") == (status == "pass")


def test_a_program_supervisord_does_not_know_fails() -> None:
    finding = processes._program("tts_service", processes._Snapshot({}, {}), [])
    assert finding.status == "fail" and "vagent down && vagent up" in finding.fix


class FakeRpc:
    def __init__(self, log: str) -> None:
        self.log = log

    def readLog(self, offset: int, length: int) -> str:
        return self.log


def test_exits_are_counted_in_the_window_and_requested_stops_are_not(tmp_path: Path) -> None:
    def stamp(ago_s: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S,123", time.localtime(time.time() - ago_s))

    log = "\n".join(
        [
            f"{stamp(3600)} INFO supervisord started with pid 1",
            f"{stamp(1200)} WARN exited: llm_service (terminated by SIGKILL; not expected)",
            f"{stamp(300)} WARN exited: llm_service (exit status 1; not expected)",
            f"{stamp(200)} INFO stopped: tts_service (terminated by SIGTERM)",
            f"{stamp(100)} INFO exited: stt_service (exit status 0; expected)",
            f"{stamp(10)} WARN exited: llm_service (terminated by SIGSEGV; not expected)",
            f"{stamp(5)} INFO spawned: 'llm_service' with pid 99",
        ]
    )
    sup = Supervisor(settings(tmp_path))
    sup.rpc = lambda: FakeRpc(log)  # type: ignore[method-assign]
    exits = sup.exits_since(time.time() - 600)
    assert exits == {
        "llm_service": ["exit status 1; not expected", "terminated by SIGSEGV; not expected"],
        "stt_service": ["exit status 0; expected"],
    }


def test_health_findings_one_per_failing_check_with_its_runbook() -> None:
    degraded = ServiceHealth(
        "call_controller",
        "http://127.0.0.1:8701",
        "degraded",
        {
            "redis:ping": {"status": "pass", "output": "PONG"},
            "ari:info": {"status": "warn", "output": "ARI not configured"},
            "rtpengine:ping": {"status": "fail", "output": "no answer", "observedValue": 1.0},
        },
    )
    found = {f.id: f for f in processes._service(degraded)}
    assert set(found) == {
        "health.call_controller.ari:info",
        "health.call_controller.rtpengine:ping",
    }
    assert found["health.call_controller.ari:info"].status == "warn"
    assert found["health.call_controller.ari:info"].runbook == "asterisk-ari.md"
    assert found["health.call_controller.rtpengine:ping"].runbook == "rtpengine.md"
    assert found["health.call_controller.rtpengine:ping"].observed == 1.0
    assert "rtpengine" in found["health.call_controller.rtpengine:ping"].fix

    healthy = ServiceHealth("llm_service", "u", "healthy", {"redis:ping": {"status": "pass"}})
    assert [(f.id, f.status) for f in processes._service(healthy)] == [
        ("health.llm_service", "pass")
    ]

    down = ServiceHealth("tts_service", "http://127.0.0.1:8704", "unreachable", error="refused")
    (finding,) = processes._service(down)
    assert finding.status == "fail" and "unreachable at http://127.0.0.1:8704" in finding.output
    assert "vagent logs tts_service" in finding.fix
