"""`vagent doctor` wall time: everything healthy, and every dependency refusing or hanging.

The claim under test: doctor's checks run at once, each bounded by --timeout,
so with everything hanging a run takes about one timeout, not their sum.
Each figure is set beside two baselines measured in the same run: `vagent
version` (the interpreter and the CLI's imports, which every command pays)
and `vagent doctor --only security` (doctor's imports, no network at all).
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from stack import _env, _hanging_servers, _timed, _vagent

from conftest import RedisServer, lab_asterisk_config
from support.ari_double import AriDouble
from support.openai_double import OpenAIDouble
from support.rtpengine_proc import RtpEngineProcess

KEY = "sk-bench-doctor-0123456789abcdef"
ARI_PASSWORD = "bench-doctor-ari-7c41e09b"
TIMEOUT_S = 3.0  # doctor's default --timeout


def _stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):.0f} ms, p95 {p95:.0f} ms (n={len(ordered)})"


def _doctor(env: dict[str, str], runs: int, *args: str) -> tuple[list[float], list[float], str]:
    """Wall times, doctor's own duration_ms (no interpreter start), and the exit codes seen."""
    walls: list[float] = []
    inner: list[float] = []
    codes: set[int] = set()
    for _ in range(runs):
        start = time.perf_counter()
        result = _vagent(env, "doctor", "--json", "--timeout", f"{TIMEOUT_S:g}", *args)
        walls.append((time.perf_counter() - start) * 1000)
        inner.append(float(json.loads(result.stdout)["duration_ms"]))
        codes.add(result.returncode)
    return walls, inner, ", ".join(map(str, sorted(codes)))


@contextmanager
def _up(env: dict[str, str], healthy: bool) -> Iterator[dict[str, str]]:
    _vagent(env, "up", "--timeout", "60" if healthy else "10")
    try:
        deadline = time.monotonic() + 30
        while healthy and _vagent(env, "status", "--json").returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the configured stack did not get healthy")
            time.sleep(0.5)
        yield env
    finally:
        _vagent(env, "down")


@contextmanager
def _configured() -> Iterator[dict[str, str]]:
    """External Redis, the OpenAI and ARI doubles, the real rtpengine: all green."""
    with tempfile.TemporaryDirectory() as work:
        redis = RedisServer(Path(work))
        redis.start()
        try:
            with (
                OpenAIDouble(api_key=KEY) as openai,
                AriDouble(user="vagent", password=ARI_PASSWORD) as ari,
                RtpEngineProcess() as rtpengine,
            ):
                home = Path(work) / "home"
                home.mkdir()
                config = lab_asterisk_config(Path(work) / "asterisk", ari.port, ARI_PASSWORD)
                env = _env(
                    home,
                    VAGENT_REDIS_URL=redis.url,
                    OPENAI_API_KEY=KEY,
                    OPENAI_BASE_URL=openai.base_url,
                    VAGENT_ARI_URL=ari.base_url,
                    VAGENT_ARI_PASSWORD=ARI_PASSWORD,
                    VAGENT_RTPENGINE_NG=rtpengine.ng_address,
                    VAGENT_ASTERISK_CONFIG_DIR=str(config),
                )
                with _up(env, healthy=True):
                    yield env
        finally:
            redis.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when we return: connections are refused


@contextmanager
def _broken(hanging: bool) -> Iterator[dict[str, str]]:
    """vagent up against a Redis, ARI, OpenAI and rtpengine that refuse, or never answer."""
    with _hanging_servers() as hung, tempfile.TemporaryDirectory() as home:
        ports = hung if hanging else {k: _closed_port() for k in ("redis", "ari", "openai", "udp")}
        env = _env(
            Path(home),
            VAGENT_REDIS_URL=f"redis://127.0.0.1:{ports['redis']}/0",
            VAGENT_ARI_URL=f"http://127.0.0.1:{ports['ari']}",
            VAGENT_ARI_PASSWORD=ARI_PASSWORD,
            VAGENT_RTPENGINE_NG=f"127.0.0.1:{ports['udp']}",
            OPENAI_API_KEY=KEY,
            OPENAI_BASE_URL=f"http://127.0.0.1:{ports['openai']}/v1",
        )
        with _up(env, healthy=False):
            yield env


def bench_doctor(runs: int) -> list[str]:
    with _configured() as env:
        version = [_timed(lambda: _vagent(env, "version")) for _ in range(runs)]
        security = _doctor(env, runs, "--only", "security")
        healthy = _doctor(env, runs)
    with _broken(hanging=False) as env:
        refused = _doctor(env, runs)
    with _broken(hanging=True) as env:
        hanging = _doctor(env, runs)
    rows = [
        ("everything healthy (external Redis, OpenAI and ARI doubles, rtpengine)", healthy),
        ("every dependency refusing connections", refused),
        ("every dependency hanging (accepts, never answers)", hanging),
        ("baseline: `vagent doctor --only security` (no network)", security),
    ]
    return [
        f"`vagent doctor --json --timeout {TIMEOUT_S:g}` (the default timeout) against a running "
        "stack, one run after another. Wall time includes the interpreter's start; doctor's "
        "own time is its `duration_ms`: from loading the settings to the last check. Hanging "
        f"dependencies must cost about one timeout ({TIMEOUT_S * 1000:.0f} ms): one after "
        f"another, the four hanging dependencies alone would take {4 * TIMEOUT_S * 1000:.0f} ms "
        "or more.",
        "",
        "| stack | wall time | doctor's own time | exit codes |",
        "|---|---|---|---|",
        *(f"| {name} | {_stats(w)} | {_stats(i)} | {codes} |" for name, (w, i, codes) in rows),
        f"| baseline: `vagent version` (interpreter and CLI start) | {_stats(version)} | - | 0 |",
    ]
