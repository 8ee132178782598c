"""The whole stack as an admin runs it: real supervisord, redis-server, uvicorn.

The tests share one stack and run in file order: up, crash each service,
lose Redis, get it back, restart, down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Stack, make_stack, services_by_name, status, wait_for
from vagent.cli.supervisor import Supervisor
from vagent.services.config import SERVICES, Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("stack"))
    s.up = s.vagent("up", "--timeout", "60")  # type: ignore[attr-defined]
    yield s
    s.vagent("down")


def supervisor(stack: Stack) -> Supervisor:
    return Supervisor(Settings(home=Path(stack.env["VAGENT_HOME"])))


def test_up_starts_every_service_and_reports_degraded_without_asterisk(stack: Stack) -> None:
    up = stack.up  # type: ignore[attr-defined]
    assert up.returncode == 1, up.stdout + up.stderr
    assert "ARI not configured" in up.stdout
    assert "asterisk-ari.md" in up.stdout
    # In a log or a pipe: the final table once, its last line ended, then the problems.
    lines = up.stdout.splitlines()
    assert sum(line.startswith("vagent services") for line in lines) == 1
    bottom = [line for line in lines if line.startswith("└")]
    assert len(bottom) == 1 and bottom[0].rstrip().endswith("┘"), up.stdout
    code, body = status(stack)
    assert code == 1
    services = services_by_name(body)
    assert list(services) == list(SERVICES)
    for name, service in services.items():
        assert service["state"] == "RUNNING"
        assert service["pid"] > 0
        assert service["restarts"] == 0
        assert service["url"].startswith("http://127.0.0.1:")
        expected = "degraded" if name == "call_controller" else "healthy"
        assert service["health"] == expected, service
    ari = {c["name"]: c for c in services["call_controller"]["checks"]}["ari:info"]
    assert ari["status"] == "warn"
    assert [i["name"] for i in body["infrastructure"]] == ["redis"]


def test_local_engines_say_they_are_the_embedded_default(stack: Stack) -> None:
    for offset, check in ((2, "local:pocketsphinx"), (3, "local:scripted"), (4, "local:espeak-ng")):
        body = httpx.get(stack.url(offset) + "/health", timeout=5).json()
        entry = body["checks"][check][0]
        assert entry["status"] == "pass"
        assert "embedded default" in entry["output"] and "no OPENAI_API_KEY" in entry["output"]
        assert "openai:models" not in body["checks"]


def test_up_again_says_so(stack: Stack) -> None:
    again = stack.vagent("up")
    assert again.returncode == 0
    assert "already up" in again.stdout


def _listening_addresses() -> dict[int, str]:
    """Port -> local address of every listening TCP socket, from /proc/net."""
    listeners: dict[int, str] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            listeners[int(port, 16)] = address if width == 32 else _ipv4(address)
    return listeners


def _ipv4(hex_address: str) -> str:
    return ".".join(str(int(hex_address[i : i + 2], 16)) for i in (6, 4, 2, 0))


def test_every_listener_is_on_loopback(stack: Stack) -> None:
    listeners = _listening_addresses()
    base = int(stack.env["VAGENT_PORT_BASE"])
    for offset in range(1, 5):
        assert listeners[base + offset] == "127.0.0.1"
    sock = Path(stack.env["VAGENT_HOME"]) / "run" / "supervisor.sock"
    assert oct(sock.stat().st_mode & 0o777) == "0o700"
    assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"


def test_metrics_are_prometheus_text(stack: Stack) -> None:
    text = httpx.get(stack.url(3) + "/metrics", timeout=5).text
    assert 'vagent_breaker_state{dependency="redis"} 0.0' in text
    assert "vagent_service_health 0.0" in text


@pytest.mark.parametrize("service", SERVICES)
def test_kill_9_is_restarted_and_counted(stack: Stack, service: str) -> None:
    _, body = status(stack)
    before = services_by_name(body)[service]
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> bool:
        now = services_by_name(status(stack)[1])[service]
        return now["pid"] not in (None, before["pid"]) and now["health"] in ("healthy", "degraded")

    wait_for(back, 30, f"{service} to come back after kill -9")
    after = services_by_name(status(stack)[1])[service]
    assert after["restarts"] == before["restarts"] + 1


def test_redis_loss_is_reported_and_recovered_without_restarts(stack: Stack) -> None:
    rpc = supervisor(stack).rpc()
    pids = {n: s["pid"] for n, s in services_by_name(status(stack)[1]).items()}
    rpc.stopProcess("redis")
    try:

        def all_unhealthy() -> bool:
            services = services_by_name(status(stack)[1]).values()
            return all(s["health"] == "unhealthy" for s in services)

        took = wait_for(all_unhealthy, 10, "every service to report redis down")
        assert took < 5
        code, body = status(stack)
        assert code == 2
        for service in body["services"]:
            redis_check = {c["name"]: c for c in service["checks"]}["redis:ping"]
            assert redis_check["status"] == "fail"
        human = stack.vagent("status")
        assert human.returncode == 2
        assert "redis:ping fail" in human.stdout and "redis.md" in human.stdout
    finally:
        rpc.startProcess("redis")

    def all_back() -> bool:
        services = services_by_name(status(stack)[1]).values()
        return all(s["health"] in ("healthy", "degraded") for s in services)

    wait_for(all_back, 15, "every service to recover once redis is back")
    after = {n: s["pid"] for n, s in services_by_name(status(stack)[1]).items()}
    assert after == pids


def test_logs_show_a_services_lines(stack: Stack) -> None:
    result = stack.vagent("logs", "llm_service", "-n", "3")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(" llm_service " in line for line in lines)
    unknown = stack.vagent("logs", "nope")
    assert unknown.returncode == 2 and "unknown service" in unknown.stderr


def test_restart_one_service(stack: Stack) -> None:
    before = services_by_name(status(stack)[1])["tts_service"]["pid"]
    result = stack.vagent("restart", "tts_service")
    assert result.returncode in (0, 1), result.stdout
    after = services_by_name(status(stack)[1])["tts_service"]
    assert after["pid"] != before and after["health"] == "healthy"


def test_systemd_unit_runs_up_in_the_foreground(stack: Stack) -> None:
    unit = stack.vagent("systemd-unit").stdout
    assert "ExecStart=" in unit and "up --foreground" in unit
    assert f"Environment=VAGENT_HOME={stack.env['VAGENT_HOME']}" in unit


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(int(proc.name))
    return found


def test_down_leaves_no_process_and_is_safe_twice(stack: Stack) -> None:
    home = stack.env["VAGENT_HOME"]
    assert len(_processes_mentioning(home)) >= 6  # supervisord, redis, four services
    down = stack.vagent("down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert _processes_mentioning(home) == []
    again = stack.vagent("down")
    assert again.returncode == 0 and "not running" in again.stdout
    code, body = status(stack)
    assert code == 2
    assert all(s["state"] == "NOT RUNNING" for s in body["services"])


def test_up_in_the_foreground_runs_until_signalled(tmp_path: Path) -> None:
    """What the systemd unit runs: supervisord in the foreground, stopped by SIGTERM."""
    fg = make_stack(tmp_path)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "vagent"), "up", "--foreground"],
        env=fg.env,
        cwd=fg.home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: status(fg)[0] in (0, 1), 60, "the foreground stack to be ready")
        assert services_by_name(status(fg)[1])["llm_service"]["state"] == "RUNNING"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert _processes_mentioning(fg.env["VAGENT_HOME"]) == []


def test_a_home_too_deep_for_a_unix_socket_is_refused_with_the_fix(tmp_path: Path) -> None:
    """supervisord alone says only `AF_UNIX path too long`; up names the path and the fix,
    and starts nothing."""
    s = make_stack(tmp_path)
    s.home = tmp_path / ("d" * 100)
    s.home.mkdir()
    s.env["VAGENT_HOME"] = str(s.home)
    result = s.vagent("up", "--timeout", "10")
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "VAGENT_HOME is too deep for a unix socket" in message
    assert "set VAGENT_HOME to a shorter path" in message
    assert not (s.home / "run" / "supervisor.sock").exists()
    assert _processes_mentioning(s.env["VAGENT_HOME"]) == []
