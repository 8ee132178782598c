"""Stack benchmarks: cold start, recovery after kill -9, /health under hanging dependencies.

Each figure is set beside a baseline measured in the same run, because this
machine is noisy: the interpreter's own start for `vagent up`, and a healthy
stack for /health.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import free_port_block

VAGENT = str(Path(sys.executable).parent / "vagent")
SERVICES = ("call_controller", "stt_service", "llm_service", "tts_service")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGENT_", "OPENAI_"))}
    env.update(VAGENT_HOME=str(home), VAGENT_PORT_BASE=str(free_port_block()), **extra)
    return env


def _vagent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VAGENT, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def _status(env: dict[str, str]) -> dict[str, dict[str, object]]:
    body = json.loads(_vagent(env, "status", "--json").stdout)
    return {s["name"]: s for s in body["services"]}


def _stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered):.0f} ms, min {ordered[0]:.0f} ms, "
        f"p99 {p99:.0f} ms, max {ordered[-1]:.0f} ms (n={len(ordered)})"
    )


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def bench_cold_start(runs: int) -> list[str]:
    """`vagent up` from nothing to every service answering /health."""
    import_floor = [
        _timed(
            lambda: subprocess.run(
                [sys.executable, "-c", "import vagent.services.runtime"], check=True
            )
        )
        for _ in range(runs)
    ]
    cold = [_cold_up() for _ in range(runs)]
    return [
        "| measurement | result |",
        "|---|---|",
        f"| `vagent up`, cold, to all services ready | {_stats(cold)} |",
        f"| baseline: one interpreter importing the service runtime | {_stats(import_floor)} |",
    ]


def _cold_up() -> float:
    with tempfile.TemporaryDirectory() as home:
        env = _env(Path(home))
        start = time.perf_counter()
        code = _vagent(env, "up").returncode
        elapsed = (time.perf_counter() - start) * 1000
        _vagent(env, "down")
    if code > 1:
        raise RuntimeError("vagent up did not get ready")
    return elapsed


def bench_kill_recovery(rounds: int) -> list[str]:
    """kill -9 of a service until supervisord restarted it and it answers /health again."""
    samples: dict[str, list[float]] = {name: [] for name in SERVICES}
    with tempfile.TemporaryDirectory() as home:
        env = _env(Path(home))
        _vagent(env, "up")
        try:
            for _ in range(rounds):
                for name in SERVICES:
                    samples[name].append(_kill_and_wait(env, name))
        finally:
            _vagent(env, "down")
    lines = ["| service | kill -9 to healthy again |", "|---|---|"]
    lines += [f"| {name} | {_stats(values)} |" for name, values in samples.items()]
    return lines


def _kill_and_wait(env: dict[str, str], name: str) -> float:
    port = int(env["VAGENT_PORT_BASE"]) + 1 + SERVICES.index(name)
    pid = int(str(_status(env)[name]["pid"]))
    start = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}/status").exists() and "zombie" not in _proc_state(pid):
        time.sleep(0.005)
    while time.perf_counter() - start < 60:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return (time.perf_counter() - start) * 1000
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not come back")


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


@contextmanager
def _hanging_servers() -> Iterator[dict[str, int]]:
    """TCP ports that accept and never answer, and a UDP port that never answers."""
    loop = asyncio.new_event_loop()
    ports: dict[str, int] = {}
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    ports["udp"] = udp.getsockname()[1]

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    async def start() -> None:
        for name in ("redis", "ari", "openai"):
            server = await asyncio.start_server(swallow, "127.0.0.1", 0)
            ports[name] = server.sockets[0].getsockname()[1]

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    try:
        yield ports
    finally:
        loop.call_soon_threadsafe(loop.stop)
        udp.close()


def _health_latencies(env: dict[str, str], requests: int) -> list[float]:
    base = int(env["VAGENT_PORT_BASE"])
    samples = []
    with httpx.Client(timeout=30) as client:
        for i in range(requests):
            port = base + 1 + i % 4
            samples.append(_timed(lambda port=port: client.get(f"http://127.0.0.1:{port}/health")))
            time.sleep(0.05)
    return samples


def bench_health_when_hanging(requests: int) -> list[str]:
    timeout_s = "1.0"
    with tempfile.TemporaryDirectory() as home:
        env = _env(Path(home), VAGENT_HEALTH_TIMEOUT_S=timeout_s)
        _vagent(env, "up")
        try:
            healthy = _health_latencies(env, requests)
        finally:
            _vagent(env, "down")
    with _hanging_servers() as ports, tempfile.TemporaryDirectory() as home:
        env = _env(
            Path(home),
            VAGENT_HEALTH_TIMEOUT_S=timeout_s,
            VAGENT_REDIS_URL=f"redis://127.0.0.1:{ports['redis']}/0",
            VAGENT_ARI_URL=f"http://127.0.0.1:{ports['ari']}",
            VAGENT_ARI_PASSWORD="bench",
            VAGENT_RTPENGINE_NG=f"127.0.0.1:{ports['udp']}",
            OPENAI_API_KEY="sk-bench",
            OPENAI_BASE_URL=f"http://127.0.0.1:{ports['openai']}/v1",
        )
        _vagent(env, "up", "--timeout", "10")
        try:
            hanging = _health_latencies(env, requests)
        finally:
            _vagent(env, "down")
    return [
        f"Check timeout: {timeout_s} s (VAGENT_HEALTH_TIMEOUT_S); requests round-robin over "
        "the four services, 50 ms apart.",
        "",
        "| dependencies | GET /health latency |",
        "|---|---|",
        f"| baseline: all healthy (embedded default) | {_stats(healthy)} |",
        f"| Redis, ARI, OpenAI and RTPEngine all hanging | {_stats(hanging)} |",
    ]
