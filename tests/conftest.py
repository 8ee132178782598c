"""Fixtures that start real processes: redis-server, and whole vagent stacks."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from support.ari_double import AriDouble
from support.openai_double import OpenAIDouble
from support.rtpengine_proc import RtpEngineProcess
from vagent.services.rtpengine import RtpEngineClient

ASTERISK_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "asterisk-configs"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Stacks listen below the kernel's ephemeral ports (32768 and up here): a port the
# kernel hands out for an outgoing connection or a bind to port 0, in any process of
# any worker, can then never be the one a service is about to bind. Each xdist worker
# draws from its own slice of this range, so two workers never pick the same block.
STACK_PORTS = range(20000, 32000)
_WORKER_SLICE = 1500


def free_port_block(size: int = 5) -> int:
    """A base port whose next `size` ports are free: a vagent stack needs five."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = STACK_PORTS.start + (int(worker) if worker.isdigit() else 0) * _WORKER_SLICE
    high = min(low + _WORKER_SLICE, STACK_PORTS.stop)
    for _ in range(100):
        base = random.randrange(low, high - size)
        try:
            for offset in range(size):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no free block of {size} ports in {low}-{high}")


class RedisServer:
    """A real redis-server on a loopback port, that a test can stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make install`")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def command_count(self, command: str) -> int:
        """How many times Redis ran `command`: proof of whether a call reached it."""
        stats = redis.Redis(port=self.port).info("commandstats")
        entry = stats.get(f"cmdstat_{command}", {})
        return int(entry.get("calls", 0)) if isinstance(entry, dict) else 0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class Stack:
    """An isolated vagent installation: its own VAGENT_HOME and ports."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def vagent(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "vagent"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.home,
        )

    def url(self, offset: int) -> str:
        return f"http://127.0.0.1:{int(self.env['VAGENT_PORT_BASE']) + offset}"


def status(stack: Stack) -> tuple[int, dict[str, Any]]:
    result = stack.vagent("status", "--json")
    return result.returncode, json.loads(result.stdout)


def services_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in body["services"]}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `condition` holds; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def short_home(tmp_path: Path) -> Path:
    """A VAGENT_HOME in /tmp, short enough for its unix sockets however deep pytest (and
    its xdist workers) nests tmp_path; tmp_path/vagent-home links to it."""
    link = tmp_path / "vagent-home"
    if link.is_symlink():
        return link.resolve()
    home = Path(tempfile.mkdtemp(prefix="vh-", dir="/tmp"))
    link.symlink_to(home)
    return home


@pytest.fixture(scope="session", autouse=True)
def _short_homes_move_back(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end, each short home moves to its link in the test's tmp_path: /tmp keeps
    nothing, and the logs stay where pytest keeps the last runs' files."""
    yield
    for link in tmp_path_factory.getbasetemp().rglob("vagent-home"):
        if not link.is_symlink():
            continue
        home = link.resolve()
        try:
            link.unlink()
            home.rename(link)
        except OSError:
            shutil.rmtree(home, ignore_errors=True)


def make_stack(tmp_path: Path, **extra: str) -> Stack:
    home = short_home(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGENT_", "OPENAI_"))}
    env.update(
        VAGENT_HOME=str(home),
        VAGENT_PORT_BASE=str(free_port_block()),
        VAGENT_HEALTH_TIMEOUT_S="0.5",
        COLUMNS="200",
        **extra,
    )
    return Stack(home, env)


@pytest.fixture(scope="module")
def rtpengine() -> Iterator[RtpEngineProcess]:
    """The real rtpengine daemon on loopback, one per test module."""
    with RtpEngineProcess() as proc:
        yield proc


@pytest.fixture
async def client(rtpengine: RtpEngineProcess) -> AsyncIterator[RtpEngineClient]:
    """An ng client of that daemon."""
    async with RtpEngineClient.from_address(rtpengine.ng_address, timeout_s=2.0) as ng:
        yield ng


def lab_asterisk_config(root: Path, ari_port: int, password: str) -> Path:
    """The lab Asterisk's http.conf and ari.conf (shared/asterisk-configs), bound to the
    ARI double's port, with `password` for user vagent: what doctor reads on a real host."""
    root.mkdir()
    http = (ASTERISK_CONFIGS / "lab-http.conf").read_text()
    ari = (ASTERISK_CONFIGS / "lab-ari.conf").read_text()
    (root / "http.conf").write_text(http.replace("bindport = 8088", f"bindport = {ari_port}"))
    (root / "ari.conf").write_text(ari.replace("password = CHANGEME", f"password = {password}"))
    (root / "ari.conf").chmod(0o640)
    return root


@contextmanager
def answering_stack(
    workdir: Path, ari: AriDouble, password: str, *, healthy_within_s: float = 0, **extra: str
) -> Iterator[Stack]:
    """`vagent up` with the ARI double as Asterisk (user vagent, `password`), until the
    Stasis app is registered and, given `healthy_within_s`, every service is healthy;
    `vagent down` at the end, whatever happened. `extra` adds environment variables."""
    stack = make_stack(workdir, VAGENT_ARI_URL=ari.base_url, VAGENT_ARI_PASSWORD=password, **extra)
    try:
        up = stack.vagent("up", "--timeout", "60")
        assert up.returncode in (0, 1), up.stdout + up.stderr  # 1 while the prompts render
        if healthy_within_s:
            wait_for(lambda: status(stack)[0] == 0, healthy_within_s, "every service healthy")
        ari.wait_for_app(timeout=10)
        yield stack
    finally:
        stack.vagent("down")


@dataclass(frozen=True)
class Configured:
    """A fully configured stack and the outside world it talks to."""

    stack: Stack
    up: subprocess.CompletedProcess[str]
    ai: OpenAIDouble
    ari: AriDouble
    rtpengine: RtpEngineProcess


@contextmanager
def configured_stack(
    workdir: Path,
    *,
    openai_key: str,
    ari_password: str,
    ari_user: str = "vagent",
    redis_url: str | None = None,
    strict_ari: bool = True,
    asterisk_config: bool = False,
    **extra: str,
) -> Iterator[Configured]:
    """`vagent up` against everything configured: an external Redis (`redis_url`, or a
    fresh redis-server), the OpenAI double, the ARI double and the real rtpengine.
    A strict ARI double fails the block on any request real Asterisk would refuse;
    tests that break calls on purpose turn that off. `asterisk_config` points doctor
    at the lab's http.conf and ari.conf, made to match the ARI double. `extra` adds
    environment variables. Waiting for health is the caller's business."""
    server = None
    if redis_url is None:
        server = RedisServer(workdir)
        server.start()
        redis_url = server.url
    try:
        with (
            OpenAIDouble(api_key=openai_key) as ai,
            AriDouble(user=ari_user, password=ari_password, fail_on_violations=strict_ari) as ari,
            RtpEngineProcess() as rtpengine,
        ):
            if asterisk_config:
                config = lab_asterisk_config(workdir / "asterisk", ari.port, ari_password)
                extra["VAGENT_ASTERISK_CONFIG_DIR"] = str(config)
            stack = make_stack(
                workdir,
                VAGENT_REDIS_URL=redis_url,
                OPENAI_API_KEY=openai_key,
                OPENAI_BASE_URL=ai.base_url,
                VAGENT_ARI_URL=ari.base_url,
                VAGENT_ARI_USER=ari_user,
                VAGENT_ARI_PASSWORD=ari_password,
                VAGENT_RTPENGINE_NG=rtpengine.ng_address,
                **extra,
            )
            up = stack.vagent("up", "--timeout", "60")
            try:
                yield Configured(stack, up, ai, ari, rtpengine)
            finally:
                stack.vagent("down")
    finally:
        if server is not None:
            server.stop()
