"""supervisord: render its config, start it, and talk to it over XML-RPC.

The CLI never parses supervisorctl's text: process states, pids, logs and
restarts all come from supervisord's XML-RPC interface on a unix socket in
the run directory (mode 0700, never /tmp).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from vagent.services.config import ENV_FILE_VARIABLE, SERVICES, Settings, env_file
from vagent.services.control_token import write_token

STOP_MARGIN_S = 10  # supervisord waits the drain bound plus this before it kills

_SPAWNED = re.compile(r"spawned: '([^']+)' with pid")
_EXITED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ \w+ exited: (\S+) \((.*)\)$", re.MULTILINE
)
_STARTED = "supervisord started with pid"
# supervisord opens its own log before it applies the config's umask=077: started
# with this umask, every file it creates is private from the first byte.
PRIVATE_UMASK = 0o077
# sun_path holds 108 bytes with its terminating NUL: a longer socket path cannot be bound.
UNIX_SOCKET_PATH_MAX = 107


class SupervisorError(Exception):
    """supervisord could not be started or reached; the message says what to do."""


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str
    pid: int | None
    uptime_s: float | None
    exit_status: int | None
    description: str


def template_text() -> str:
    return (resources.files("vagent") / "supervisord.conf").read_text(encoding="utf-8")


def _drop_section(text: str, section: str) -> str:
    """Remove one [section] and its lines, keeping every other line and comment."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() == f"[{section}]"
        if not skipping:
            out.append(line)
    return "".join(out)


def render_config(settings: Settings, nodaemon: bool) -> str:
    redis_server = shutil.which("redis-server") or "redis-server"
    text = Template(template_text()).substitute(
        home=settings.home,
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        nodaemon="true" if nodaemon else "false",
        python=sys.executable,
        redis_server=redis_server,
        stop_wait_s=int(settings.drain_s) + STOP_MARGIN_S,
    )
    return text if settings.embedded_redis else _drop_section(text, "program:redis")


class Supervisor:
    """One vagent installation's supervisord, found through VAGENT_HOME."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.socket = settings.run_dir / "supervisor.sock"
        self.config_path = settings.run_dir / "supervisord.conf"

    @property
    def programs(self) -> list[str]:
        return (["redis"] if self.settings.embedded_redis else []) + list(SERVICES)

    def _proxy(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def rpc(self) -> Any:
        return self._proxy().supervisor

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(self.rpc().getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def prepare(self, nodaemon: bool) -> None:
        """Create the run and log dirs (0700), write the config and a fresh control token (0600)."""
        if self.settings.embedded_redis and shutil.which("redis-server") is None:
            raise SupervisorError(
                "redis-server is not installed: run `apt-get install redis-server`, "
                "or set VAGENT_REDIS_URL to an existing Redis"
            )
        self._check_socket_path()
        for directory in (self.settings.home, self.settings.run_dir, self.settings.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render_config(self.settings, nodaemon))
        write_token(self.settings)

    def _check_socket_path(self) -> None:
        """Refuse a home too deep for a unix socket, before supervisord fails on it
        with a bare `AF_UNIX path too long`."""
        length = len(os.fsencode(self.socket.absolute()))
        if length > UNIX_SOCKET_PATH_MAX:
            raise SupervisorError(
                f"VAGENT_HOME is too deep for a unix socket: {self.socket.absolute()} is "
                f"{length} bytes, the limit is {UNIX_SOCKET_PATH_MAX}; set VAGENT_HOME to a "
                f"shorter path (at most {UNIX_SOCKET_PATH_MAX - len('/run/supervisor.sock')} bytes)"
            )

    def environment(self) -> dict[str, str]:
        """What the services inherit: the admin's environment plus where to find the rest."""
        env = dict(os.environ)
        env["VAGENT_HOME"] = str(self.settings.home.resolve())
        env["PYTHONUNBUFFERED"] = "1"
        dotenv = env_file()
        if dotenv is not None:
            env[ENV_FILE_VARIABLE] = str(dotenv.resolve())
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config_path)]

    def start(self, timeout_s: float = 10.0) -> None:
        self.prepare(nodaemon=False)
        result = subprocess.run(
            self.command(),
            env=self.environment(),
            cwd=self.settings.home,
            capture_output=True,
            text=True,
            check=False,
            umask=PRIVATE_UMASK,
        )
        if result.returncode != 0:
            raise SupervisorError(f"supervisord did not start: {result.stderr.strip()[-500:]}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.1)
        raise SupervisorError(
            f"supervisord did not answer on {self.socket} within {timeout_s:g}s: "
            f"see {self.settings.log_dir / 'supervisord.log'}"
        )

    def exec_foreground(self) -> None:
        """Replace this process with supervisord, for systemd's Type=simple."""
        self.prepare(nodaemon=True)
        os.chdir(self.settings.home)
        os.umask(PRIVATE_UMASK)
        os.execve(sys.executable, self.command(), self.environment())

    def processes(self) -> list[ProcessInfo]:
        return [_process_info(raw) for raw in self.rpc().getAllProcessInfo()]

    def restarts(self) -> dict[str, int]:
        """Spawns after the first, per program, since supervisord last started.

        supervisord keeps no restart counter, but its main log (read over
        XML-RPC) records every spawn.
        """
        log = cast(str, self.rpc().readLog(-200_000, 0))
        start = log.rfind(_STARTED)
        spawns: dict[str, int] = {}
        for name in _SPAWNED.findall(log[max(start, 0) :]):
            spawns[name] = spawns.get(name, 0) + 1
        return {name: max(0, count - 1) for name, count in spawns.items()}

    def exits_since(self, since: float) -> dict[str, list[str]]:
        """Exits nobody asked for, per program, logged at or after `since` (epoch seconds):
        the reason of each, oldest first (`terminated by SIGKILL; not expected`).

        A crash loop shows as `exited:` lines in supervisord's main log; a stop
        that `vagent restart` or `down` requested logs `stopped:` instead, so an
        admin's restarts are not mistaken for crashes. supervisord stamps its log
        in local time, to the second.
        """
        log = cast(str, self.rpc().readLog(-200_000, 0))
        exits: dict[str, list[str]] = {}
        for stamp, name, reason in _EXITED.findall(log):
            if time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) >= since:
                exits.setdefault(name, []).append(reason)
        return exits

    def tail(self, name: str, offset: int, length: int) -> tuple[str, int]:
        data, new_offset, _overflow = self.rpc().tailProcessStdoutLog(name, offset, length)
        return cast(str, data), int(new_offset)

    def restart(self, names: list[str]) -> None:
        rpc = self.rpc()
        for name in names:
            try:
                rpc.stopProcess(name, True)
            except xmlrpc.client.Fault as fault:
                if "NOT_RUNNING" not in fault.faultString:
                    raise
        for name in names:
            rpc.startProcess(name, False)

    def shutdown(self, timeout_s: float) -> None:
        """Stop every program and supervisord itself, and wait until it is gone."""
        pid = self._pid()
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self.rpc().shutdown()
        deadline = time.monotonic() + timeout_s
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid is not None and _alive(pid):
            raise SupervisorError(f"supervisord (pid {pid}) did not stop within {timeout_s:g}s")

    def _pid(self) -> int | None:
        try:
            return int(self.rpc().getPID())
        except (OSError, xmlrpc.client.Error):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
    for line in status.splitlines():
        if line.startswith("State:"):
            return line.lower()
    return ""


def _process_info(raw: dict[str, Any]) -> ProcessInfo:
    running = raw["statename"] in ("RUNNING", "STARTING", "STOPPING")
    uptime = float(raw["now"] - raw["start"]) if running and raw["start"] else None
    return ProcessInfo(
        name=str(raw["name"]),
        state=str(raw["statename"]),
        pid=int(raw["pid"]) or None,
        uptime_s=uptime,
        exit_status=int(raw["exitstatus"]) if not running else None,
        description=str(raw.get("description", "")),
    )
