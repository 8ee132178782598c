"""`vagent doctor` as an admin runs it, against real processes.

The embedded default before and after `vagent up` (no Asterisk, no OpenAI:
warnings that say so), a frozen supervisord, hanging dependencies, a crash
loop; then a fully configured stack (external Redis, the OpenAI and ARI
doubles, the real rtpengine, the lab's Asterisk config files): green.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from conftest import Stack, configured_stack, make_stack, status, wait_for
from vagent.cli.supervisor import Supervisor
from vagent.services.config import SERVICES, Settings

pytestmark = pytest.mark.slow

OPENAI_KEY = "sk-test-doctor-SECRET-key-9191"
ARI_PASSWORD = "ari-doctor-SECRET-password-31"
SUMMARY = re.compile(
    r"^doctor: (\d+ critical, )?(\d+ warnings?, )?(\d+ unknown, )?\d+ ok in \d+\.\ds$"
)


def doctor(stack: Stack, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `vagent doctor`, optionally with settings only this run sees; and its wall time."""
    target = Stack(stack.home, {**stack.env, **env}) if env else stack
    start = time.monotonic()
    result = target.vagent("doctor", *args, timeout=60)
    return result, time.monotonic() - start


def checks(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    body = json.loads(result.stdout)
    assert body["exit_code"] == result.returncode
    return {c["id"]: c for c in body["checks"]}


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    """No traceback, and no secret, anywhere doctor wrote."""
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything
    assert OPENAI_KEY not in everything and ARI_PASSWORD not in everything


def summary_line(result: subprocess.CompletedProcess[str]) -> str:
    line = result.stdout.rstrip().splitlines()[-1]
    assert SUMMARY.match(line), line
    return line


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The embedded default, with doctor run before `vagent up` and after it."""
    workdir = tmp_path_factory.mktemp("doctor")
    stack = make_stack(workdir, VAGENT_ASTERISK_CONFIG_DIR=str(workdir / "no-asterisk"))
    before = doctor(stack)[0], doctor(stack, "--json")[0]
    up = stack.vagent("up", "--timeout", "60")
    try:
        wait_for(lambda: status(stack)[0] == 1, 30, "every service up; degraded: no ARI")
        yield {"stack": stack, "before": before, "up": up}
    finally:
        stack.vagent("down")


def test_before_up_it_warns_that_vagent_is_not_running(embedded: dict[str, Any]) -> None:
    table, as_json = embedded["before"]
    for result in (table, as_json):
        assert result.returncode == 1, result.stdout + result.stderr
        assert_clean(result)
    assert "vagent is not running" in table.stdout
    assert "vagent up" in table.stdout
    assert "warnings" in summary_line(table)
    found = checks(as_json)
    assert found["processes"]["status"] == "warn"
    assert found["health"]["status"] == "warn"
    assert found["openai.key"]["status"] == "warn"
    assert [i for i, c in found.items() if c["status"] in ("fail", "unknown")] == []


def test_after_up_the_embedded_default_is_a_truthful_table(embedded: dict[str, Any]) -> None:
    stack = embedded["stack"]
    table, _ = doctor(stack)
    assert table.returncode == 1, table.stdout
    assert_clean(table)
    assert "vagent doctor" in table.stdout and "runbooks/" in table.stdout
    result, _ = doctor(stack, "--json")
    found = checks(result)
    statuses = {i: c["status"] for i, c in found.items()}
    for program in ("redis", *SERVICES):
        assert statuses[f"processes.{program}"] == "pass"
        assert "RUNNING, pid" in found[f"processes.{program}"]["output"]
    assert "local engines" in found["openai.key"]["output"] and statuses["openai.key"] == "warn"
    assert statuses["ari.configured"] == "warn"
    assert statuses["health.call_controller.ari:info"] == "warn"
    for group in ("http_conf", "ari_conf"):
        assert statuses[f"{group}.file"] == "warn"
        assert "no-asterisk" in found[f"{group}.file"]["output"]
    for service in ("stt_service", "llm_service", "tts_service"):
        assert statuses[f"health.{service}"] == "pass"
    # A loaded host can push the PING over redis.reachable's latency warning: still reachable.
    assert "answers PING" in found["redis.reachable"]["output"]
    assert statuses["security.permissions"] == "pass"
    assert statuses["security.listeners"] == "pass"
    assert [i for i, s in statuses.items() if s in ("fail", "unknown")] == []
    for entry in found.values():
        assert set(entry) >= {"id", "status", "observed", "output", "fix", "runbook"}
        assert (entry["fix"] != "") == (entry["status"] != "pass"), entry


def test_only_narrows_and_an_unknown_name_exits_3(embedded: dict[str, Any]) -> None:
    stack = embedded["stack"]
    result, _ = doctor(stack, "--json", "--only", "health.llm_service,processes")
    assert set(checks(result)) == {"health.llm_service"} | {
        f"processes.{p}" for p in ("redis", *SERVICES)
    }
    assert result.returncode == 0
    unknown, _ = doctor(stack, "--only", "dns")
    assert unknown.returncode == 3
    assert "no check named 'dns'" in unknown.stderr and "http_conf" in unknown.stderr
    assert_clean(unknown)


def hanging_listener() -> socket.socket:
    """A TCP port that completes the handshake (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def test_hanging_dependencies_are_bounded_by_the_timeout(embedded: dict[str, Any]) -> None:
    timeout = 1.0
    with hanging_listener() as ari, hanging_listener() as api:
        result, took = doctor(
            embedded["stack"],
            "--json",
            "--timeout",
            f"{timeout:g}",
            VAGENT_ARI_URL=f"http://127.0.0.1:{ari.getsockname()[1]}",
            VAGENT_ARI_PASSWORD=ARI_PASSWORD,
            OPENAI_API_KEY=OPENAI_KEY,
            OPENAI_BASE_URL=f"http://127.0.0.1:{api.getsockname()[1]}/v1",
        )
    assert_clean(result)
    found = checks(result)
    assert found["ari.reachable"]["status"] == "fail"
    assert found["openai.key"]["status"] == "fail"
    duration_s = json.loads(result.stdout)["duration_ms"] / 1000
    assert timeout <= duration_s < timeout + 3, duration_s  # each waited; none added up
    assert took < timeout + 10, took  # the interpreter's start and imports on a loaded host


def test_a_frozen_supervisord_is_a_timeout_not_a_hang(embedded: dict[str, Any]) -> None:
    stack = embedded["stack"]
    pid = int((Path(stack.env["VAGENT_HOME"]) / "run" / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        result, took = doctor(stack, "--json", "--timeout", "1")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert_clean(result)
    found = checks(result)
    for group in ("processes", "health"):
        assert found[group]["status"] == "fail"
        assert found[group]["output"].startswith("no answer within 1s")
    assert found["security.permissions"]["status"] == "pass"  # the others still answered
    assert result.returncode == 2
    assert json.loads(result.stdout)["duration_ms"] < 4000
    assert took < 12, took


def test_three_kills_in_a_row_are_a_crash_loop(embedded: dict[str, Any]) -> None:
    stack = embedded["stack"]
    rpc = Supervisor(Settings(home=Path(stack.env["VAGENT_HOME"]))).rpc()

    def running_pid() -> int | None:
        info = rpc.getProcessInfo("stt_service")
        return int(info["pid"]) if info["statename"] == "RUNNING" else None

    def respawned(killed: int) -> bool:
        return running_pid() not in (None, killed)

    for _ in range(3):
        killed = running_pid()
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_for(partial(respawned, killed), 30, "stt_service RUNNING again")
    result, _ = doctor(stack, "--json", "--only", "processes")
    loop = checks(result)["processes.stt_service"]
    assert result.returncode == 2
    assert loop["status"] == "fail"
    assert loop["output"].startswith("crash loop: 3 unexpected exits in the last 10 min")
    assert "SIGKILL" in loop["output"]
    assert loop["observed"]["unexpected_exits"] == 3
    assert "vagent logs stt_service" in loop["fix"]
    table, _ = doctor(stack, "--only", "processes")
    assert "crash-loop.md" in table.stdout
    assert summary_line(table).startswith("doctor: 1 critical, 4 ok")


# --------------------------------------------------------------------------- configured


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("doctor-configured")
    with configured_stack(
        workdir, openai_key=OPENAI_KEY, ari_password=ARI_PASSWORD, asterisk_config=True
    ) as world:
        wait_for(lambda: status(world.stack)[0] == 0, 30, "every service healthy")
        yield {"stack": world.stack, "openai": world.ai, "ari": world.ari}


# Checks a loaded test host can turn yellow for a moment on a healthy stack: Redis's
# PING latency warning (20 ms) measures the host, not the configuration.
LOAD_SENSITIVE = {"redis.reachable"}


def green(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Doctor's answer on a healthy stack, tried again (3 times at most) only while the
    sole problems are load-sensitive ones."""
    for _ in range(3):
        result, _ = doctor(stack, *args)
        if result.returncode == 0:
            return result
        problems = {
            i: c["output"]
            for i, c in checks(doctor(stack, "--json")[0]).items()
            if c["status"] != "pass"
        }
        assert set(problems) <= LOAD_SENSITIVE, problems
    raise AssertionError(f"not green 3 times in a row: {problems}")


def test_a_fully_configured_stack_is_green(configured: dict[str, Any]) -> None:
    stack = configured["stack"]
    table = green(stack)
    assert_clean(table)
    assert summary_line(table).startswith("doctor: ")
    assert "critical" not in summary_line(table) and "warning" not in summary_line(table)
    result = green(stack, "--json")
    found = checks(result)
    assert {c["status"] for c in found.values()} == {"pass"}
    for finding in (
        "http_conf.ari_url",
        "ari_conf.password_match",
        "ari.credentials",
        "ari.app",
        "redis.version",
        "rtpengine.ping",
        "openai.key",
        "openai.model.llm",
        "security.ari_password",
    ):
        assert finding in found, finding
    assert "processes.redis" not in found  # external Redis: no embedded program
    assert_clean(result)


def test_a_default_ari_password_is_critical_and_never_printed(configured: dict[str, Any]) -> None:
    result, _ = doctor(configured["stack"], "--json", VAGENT_ARI_PASSWORD="CHANGEME")
    found = checks(result)
    assert found["security.ari_password"]["status"] == "fail"
    assert "well-known default" in found["security.ari_password"]["output"]
    assert found["ari.credentials"]["status"] == "fail"  # the double wants the real one
    assert result.returncode == 2
    assert "CHANGEME" not in result.stdout + result.stderr
    assert_clean(result)


def test_a_rejected_key_and_a_hanging_api_never_leak_the_key(configured: dict[str, Any]) -> None:
    stack, openai = configured["stack"], configured["openai"]
    wrong = "sk-test-doctor-WRONG-key-5555"
    rejected, _ = doctor(stack, "--json", "--only", "openai", OPENAI_API_KEY=wrong)
    assert checks(rejected)["openai.key"]["status"] == "fail"
    assert "401" in checks(rejected)["openai.key"]["output"]
    assert wrong not in rejected.stdout + rejected.stderr
    openai.hang("models")
    try:
        hung, took = doctor(stack, "--json", "--only", "openai", "--timeout", "1")
        table, _ = doctor(stack, "--only", "openai", "--timeout", "1")
    finally:
        openai.clear_faults()
    assert checks(hung)["openai.key"]["status"] == "fail"
    assert json.loads(hung.stdout)["duration_ms"] < 4000
    assert took < 12, took
    for result in (rejected, hung, table):
        assert_clean(result)
