"""Security of a running stack, checked from outside the way an attacker or an
auditor would (issue 7, part 3):

* with the default configuration no socket of the stack listens beyond
  loopback: every process supervisord runs (and supervisord itself) is
  inspected through /proc, TCP listeners and unconnected UDP sockets alike,
  during a call so that the controller's RTP socket is there too; the
  embedded redis-server listens on a unix socket only;
* the control endpoints of every service refuse a missing, wrong, or
  right-length-but-wrong token, and never echo the real one;
* secrets (OpenAI key, ARI password, Redis password, the control token) never
  appear in any output, log, /health, /metrics, file under VAGENT_HOME or
  process command line, after a full run: probe turns, a drill, status,
  doctor, logs. Each is searched whole, by its first 12 characters, and (the
  ARI login) as the base64 of HTTP Basic auth;
* the modes of the run dir, the supervisord socket, the token file,
  supervisord.conf and the logs keep everything from other accounts.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from conftest import (
    RedisServer,
    Stack,
    configured_stack,
    make_stack,
    services_by_name,
    status,
    wait_for,
)
from support.ari_double import AriDouble

pytestmark = pytest.mark.slow

OPENAI_KEY = "sk-Zq8vN3xP0wLr7TfK2mYc9HdS-security"
ARI_USER = "vagent"
ARI_PASSWORD = "Ar1Pw9kLmQz7XvB3nT-security"
REDIS_PASSWORD = "Rd5Xk2pQw8ZrN4vLm7-security"
SECRETS = (OPENAI_KEY, ARI_PASSWORD, REDIS_PASSWORD)
SERVICES = ("call_controller", "stt_service", "llm_service", "tts_service")
_TCP_LISTEN = "0A"
GONE = (FileNotFoundError, ProcessLookupError)  # exited, or closed its fd, meanwhile


@dataclass(frozen=True)
class Socket:
    """One inet socket of a process of the stack, as /proc/net tells it."""

    process: str
    pid: int
    proto: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    listening: bool  # TCP in LISTEN, or UDP not connected: anyone may send to it

    def __str__(self) -> str:
        return f"{self.process}[{self.pid}] {self.proto} {self.address}:{self.port}"

    @property
    def on_loopback(self) -> bool:
        address = self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


# --------------------------------------------------------------------------- the stack


def _redis_with_password(workdir: Path) -> tuple[RedisServer, str]:
    """conftest's redis-server, then `requirepass`: the URL carries a password."""
    server = RedisServer(workdir)
    server.start()
    redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
    return server, f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"


def _asterisk_configs(directory: Path) -> Path:
    """http.conf and ari.conf holding the ARI password, for doctor to read."""
    directory.mkdir()
    (directory / "http.conf").write_text("[general]\nenabled = yes\nbindaddr = 127.0.0.1\n")
    (directory / "ari.conf").write_text(
        f"[general]\nenabled = yes\n[{ARI_USER}]\ntype = user\nread_only = no\n"
        f"password = {ARI_PASSWORD}\npassword_format = plain\n"
    )
    return directory


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack with every secret configured: Redis, OpenAI and ARI passwords."""
    workdir = tmp_path_factory.mktemp("security")
    server, redis_url = _redis_with_password(workdir)
    try:
        with configured_stack(
            workdir,
            openai_key=OPENAI_KEY,
            ari_password=ARI_PASSWORD,
            ari_user=ARI_USER,
            redis_url=redis_url,
            strict_ari=False,
            VAGENT_ASTERISK_CONFIG_DIR=str(_asterisk_configs(workdir / "asterisk")),
        ) as world:
            stack, up = world.stack, world.up
            assert up.returncode in (0, 1), up.stdout + up.stderr
            wait_for(lambda: status(stack)[0] == 0, 30, "every service healthy")
            world.ari.wait_for_app(timeout=10)
            yield {"stack": stack, "up": up, "ari": world.ari}
    finally:
        server.stop()


def _run_dir(stack: Stack) -> Path:
    return Path(stack.env["VAGENT_HOME"]) / "run"


def _token(stack: Stack) -> str:
    return (_run_dir(stack) / "control.token").read_text().strip()


# --------------------------------------------------------------------------- /proc


def _children(pid: int) -> set[int]:
    """Every descendant of `pid`, from the parent pid in /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _stack_pids(stack: Stack) -> set[int]:
    supervisord = int((_run_dir(stack) / "supervisord.pid").read_text())
    return {supervisord} | _children(supervisord)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(*GONE):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(*GONE):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net addresses are 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def _inet_table(pid: int) -> dict[str, tuple[str, list[str]]]:
    """inode -> (proto, fields) of every inet socket in `pid`'s network namespace."""
    table = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            table[fields[9]] = (proto, fields)
    return table


def _sockets(pids: set[int]) -> list[Socket]:
    """Every inet socket the processes hold (unix sockets are not reachable remotely)."""
    table = _inet_table(min(pids))
    found = []
    for pid in sorted(pids):
        name = "?"
        with contextlib.suppress(*GONE):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        for inode in _socket_inodes(pid) & table.keys():
            proto, fields = table[inode]
            hex_address, hex_port = fields[1].split(":")
            remote_port = int(fields[2].split(":")[1], 16)
            listening = fields[3] == _TCP_LISTEN if proto.startswith("tcp") else remote_port == 0
            found.append(
                Socket(name, pid, proto, _address(hex_address), int(hex_port, 16), listening)
            )
    return found


def _unix_sockets(pid: int) -> set[str]:
    """Paths of the unix sockets `pid` holds, from /proc/net/unix."""
    paths = {}
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7:
            paths[fields[6]] = fields[7]
    return {paths[inode] for inode in _socket_inodes(pid) if inode in paths}


def _exposed(sockets: list[Socket]) -> list[str]:
    return [str(s) for s in sockets if s.listening and not s.on_loopback]


# --------------------------------------------------------------------------- sockets


def test_no_socket_of_the_stack_listens_beyond_loopback(secured: dict[str, Any]) -> None:
    """During a call, so the controller's RTP socket is among them."""
    stack: Stack = secured["stack"]
    ari: AriDouble = secured["ari"]
    channel = ari.start_inbound_call(["inbound", "100"], answered=False)
    try:
        wait_for(lambda: ari.heard(channel).duration_s > 0.2, 15, "the greeting to be heard")
        sockets = _sockets(_stack_pids(stack))
    finally:
        ari.hangup(channel)
    assert _exposed(sockets) == []
    pids = {s["name"]: s["pid"] for s in status(stack)[1]["services"]}
    base = int(stack.env["VAGENT_PORT_BASE"])
    tcp = {(s.pid, s.port) for s in sockets if s.listening and s.proto.startswith("tcp")}
    for offset, service in enumerate(SERVICES, start=1):  # we did see the real listeners
        assert (pids[service], base + offset) in tcp, service
    rtp = [s for s in sockets if s.pid == pids["call_controller"] and s.proto.startswith("udp")]
    assert any(s.listening for s in rtp), "the call's RTP socket"
    supervisord = int((_run_dir(stack) / "supervisord.pid").read_text())
    # supervisord binds a temporary name (supervisor.sock.<pid>), chmods it, then links it
    # to supervisor.sock: the socket is never reachable with a looser mode
    bound = _unix_sockets(supervisord)
    assert any(path.startswith(str(_run_dir(stack) / "supervisor.sock")) for path in bound)


def test_the_embedded_redis_listens_on_a_unix_socket_only(tmp_path: Path) -> None:
    """The default configuration: no VAGENT_REDIS_URL, redis-server under supervisord."""
    stack = make_stack(tmp_path)
    up = stack.vagent("up", "--timeout", "60")
    try:
        assert up.returncode in (0, 1), up.stdout + up.stderr
        body = status(stack)[1]
        redis_pid = next(p["pid"] for p in body["infrastructure"] if p["name"] == "redis")
        pids = _stack_pids(stack)
        assert redis_pid in pids
        sockets = _sockets(pids)
        assert _exposed(sockets) == []
        assert [str(s) for s in sockets if s.pid == redis_pid] == []  # no TCP, no UDP at all
        socket_file = _run_dir(stack) / "redis.sock"
        assert str(socket_file) in _unix_sockets(redis_pid)
        assert stat.S_ISSOCK(socket_file.stat().st_mode)
        assert socket_file.stat().st_mode & 0o077 == 0  # --unixsocketperm 700
    finally:
        stack.vagent("down")


# --------------------------------------------------------------------------- control API


def _wrong_tokens(token: str) -> dict[str, dict[str, str]]:
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    return {
        "missing": {},
        "empty": {"Authorization": "Bearer"},
        "wrong": {"Authorization": "Bearer not-the-token"},
        "right length, last character wrong": {"Authorization": f"Bearer {flipped}"},
        "a prefix of it": {"Authorization": f"Bearer {token[:12]}"},
        "right token, wrong scheme": {"Authorization": f"Basic {token}"},
        "right token, no scheme": {"Authorization": token},
    }


def test_control_endpoints_refuse_missing_or_wrong_tokens(secured: dict[str, Any]) -> None:
    stack: Stack = secured["stack"]
    token = _token(stack)
    for offset, service in enumerate(SERVICES, start=1):
        url = stack.url(offset) + "/control/faults"
        for case, headers in _wrong_tokens(token).items():
            for method in ("GET", "POST", "DELETE"):
                answer = httpx.request(
                    method, url, headers=headers, json={"target": "llm"}, timeout=5
                )
                assert answer.status_code == 401, (service, case, method)
                assert token not in answer.text and token[:12] not in answer.text
        answer = httpx.get(url, params={"token": token}, timeout=5)  # not in a query string
        assert answer.status_code == 401, service
        right = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert right.status_code == 200 and right.json()["faults"] == [], service


# --------------------------------------------------------------------------- secrets


def _needles(token: str) -> dict[str, bytes]:
    """What must never be seen, by a name that can be printed."""
    basic = base64.b64encode(f"{ARI_USER}:{ARI_PASSWORD}".encode())
    named = {
        "OpenAI key": OPENAI_KEY,
        "ARI password": ARI_PASSWORD,
        "Redis password": REDIS_PASSWORD,
    }
    needles = {name: value.encode() for name, value in named.items()}
    needles |= {f"{name} (first 12)": value[:12].encode() for name, value in named.items()}
    needles["ARI Basic auth"] = basic
    needles["control token"] = token.encode()
    return needles


def _outputs(stack: Stack) -> dict[str, bytes]:
    """A full run, and everything it printed, logged and served."""
    seen: dict[str, bytes] = {}

    def vagent(*args: str, expect: tuple[int, ...] | None = None) -> None:
        result = stack.vagent(*args, timeout=180)
        seen["vagent " + " ".join(args)] = (result.stdout + result.stderr).encode()
        assert expect is None or result.returncode in expect, (args, result.stdout[-2000:])

    vagent("probe", "--text", "What are your opening hours?", expect=(0,))
    vagent("probe", expect=(0,))  # spoken, through OpenAI speech recognition
    vagent("simulate-failure", "llm", "--duration", "20s", "--turns", "1", expect=(0, 1))
    vagent("simulate-failure", "ari", "--hold", "--duration", "10s", expect=(0,))
    vagent("restore", "--all", expect=(0,))
    for args in (("status",), ("status", "--json"), ("doctor",), ("doctor", "--json")):
        vagent(*args)
    vagent("systemd-unit")
    for service in SERVICES:
        vagent("logs", service, "-n", "5000")
    token = {"Authorization": f"Bearer {_token(stack)}"}
    for offset, service in enumerate(SERVICES, start=1):
        for path in ("/health", "/health/live", "/metrics", "/control/faults"):
            answer = httpx.get(stack.url(offset) + path, headers=token, timeout=5)
            seen[f"{service} {path}"] = answer.content
    return seen


def _files(home: Path) -> dict[str, bytes]:
    """Every file under VAGENT_HOME but the token file (the token's one home)."""
    return {
        str(path): path.read_bytes()
        for path in sorted(home.rglob("*"))
        if path.is_file() and path.name != "control.token"
    }


def _command_lines(stack: Stack) -> dict[str, bytes]:
    """/proc/<pid>/cmdline is readable by every account on the host."""
    seen = {}
    for pid in _stack_pids(stack):
        with contextlib.suppress(*GONE):
            seen[f"cmdline of {pid}"] = Path(f"/proc/{pid}/cmdline").read_bytes()
    return seen


def test_no_secret_anywhere_after_a_full_run(secured: dict[str, Any]) -> None:
    stack: Stack = secured["stack"]
    up = secured["up"]
    seen = {"vagent up": (up.stdout + up.stderr).encode()}
    seen |= _outputs(stack)
    seen |= _files(Path(stack.env["VAGENT_HOME"]))
    seen |= _command_lines(stack)
    assert sum(map(len, seen.values())) > 100_000  # we did look at real output
    # and the secrets did reach the stack: the services hold them in their environment
    environ = Path(f"/proc/{services_by_name(status(stack)[1])['llm_service']['pid']}/environ")
    assert all(value.encode() in environ.read_bytes() for value in SECRETS)
    assert any(name.endswith("supervisord.conf") for name in seen)
    assert json.loads(seen["vagent doctor --json"])["checks"]  # doctor did run its checks
    leaks = [
        f"{needle} in {source}"
        for source, content in seen.items()
        for needle, value in _needles(_token(stack)).items()
        if value in content
    ]
    assert leaks == []


# --------------------------------------------------------------------------- file modes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_sockets_are_private(secured: dict[str, Any]) -> None:
    stack: Stack = secured["stack"]
    home = Path(stack.env["VAGENT_HOME"])
    run = _run_dir(stack)
    socket_file = run / "supervisor.sock"
    assert stat.S_ISSOCK(socket_file.stat().st_mode)
    modes = {
        "VAGENT_HOME": (_mode(home), 0o700),
        "run dir": (_mode(run), 0o700),
        "log dir": (_mode(home / "log"), 0o700),
        "control token": (_mode(run / "control.token"), 0o600),
        "supervisord.conf": (_mode(run / "supervisord.conf"), 0o600),
    }
    assert {name: oct(got) for name, (got, _) in modes.items()} == {
        name: oct(want) for name, (_, want) in modes.items()
    }
    assert _mode(socket_file) & 0o077 == 0  # the socket itself, not only its directory
    open_files = [str(p) for p in (home / "log").rglob("*") if _mode(p) & 0o077]
    assert open_files == []  # logs hold transcripts: no other account reads them
