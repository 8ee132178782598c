"""The chaos soak's rig: a fully configured stack on loopback, and the faults it suffers.

One external redis-server (so it can be restarted under the services), the
OpenAI double in its own process (it must not share the soak's GIL), the ARI
double in this process (the callers read its ears directly), and a vagent
stack pointed at all three. Every fault is something an operator could see
happen on a real host: a service killed with SIGKILL, Redis restarted (it
keeps nothing: `--save ""`), Asterisk's events websocket cut, the AI provider
failing for a few seconds, or a `vagent simulate-failure --hold` drill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from stack import SERVICES, _env, _vagent
from turns import KEY, _double_process

from conftest import RedisServer
from support.ari_double import AriDouble
from vagent.cli.supervisor import Supervisor
from vagent.services.config import Settings

ARI_PASSWORD = "chaos-ari-secret"
TRANSCRIPT = "When are you open?"
# One sentence: a reply is one TTS piece, so one contiguous stretch of audio.
REPLY = "We are open from nine in the morning to five in the afternoon."
HEALTH_TIMEOUT_S = 2.0
UP_TIMEOUT_S = 90.0


@dataclass
class ProviderFault:
    """A fault of the OpenAI double, held for `hold_s` seconds (see its `Fault`)."""

    spec: dict[str, Any]
    hold_s: float

    @property
    def label(self) -> str:
        kind = self.spec["kind"]
        detail = f" {self.spec['status']}" if kind == "status" else ""
        return f"{self.spec['route']} {kind}{detail}"


@dataclass
class Rig:
    """The running stack and its dependencies; build it with `rig()`."""

    home: Path
    env: dict[str, str]
    redis: RedisServer
    ari: AriDouble
    openai_control: str
    budget_ms: int
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=HEALTH_TIMEOUT_S))
    _ambient: str | None = None

    # --- observation ----------------------------------------------------------------

    def health(self) -> dict[str, dict[str, Any]]:
        """Each service's /health body; {"status": "unreachable"} when it does not answer."""
        base = int(self.env["VAGENT_PORT_BASE"])
        bodies: dict[str, dict[str, Any]] = {}
        for offset, name in enumerate(SERVICES, start=1):
            try:
                bodies[name] = dict(
                    self._http.get(f"http://127.0.0.1:{base + offset}/health").json()
                )
            except (httpx.HTTPError, ValueError):
                bodies[name] = {"status": "unreachable"}
        return bodies

    def settled(self) -> bool:
        """Serving again: every service answers healthy or degraded, and the controller
        holds the ARI events websocket (a degraded service is on a fallback, which is
        what it should be doing while a breaker stays open after a provider fault)."""
        bodies = self.health()
        if any(b.get("status") not in ("healthy", "degraded") for b in bodies.values()):
            return False
        events = bodies["call_controller"].get("checks", {}).get("ari:events", [{}])
        return bool(events and events[0].get("status") == "pass")

    def healthy(self) -> bool:
        return all(b.get("status") == "healthy" for b in self.health().values())

    def pid(self, service: str) -> int:
        rpc = Supervisor(Settings(home=self.home)).rpc()
        return int(rpc.getProcessInfo(service)["pid"])

    # --- faults ----------------------------------------------------------------------

    def kill(self, service: str) -> None:
        """kill -9, then wait until the process is really gone (supervisord restarts it)."""
        pid = self.pid(service)
        if pid <= 0:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart_redis(self, downtime_s: float) -> None:
        """Stop redis-server (its data goes with it), wait, start it on the same port."""
        self.redis.stop()
        time.sleep(downtime_s)
        self.redis.start()

    def drop_websocket(self) -> None:
        self.ari.drop_websocket()

    def provider_fault(self, fault: ProviderFault) -> None:
        """Hold one OpenAI fault (ambient latency is lifted meanwhile: the first matching
        fault wins in the double, and latency would mask the fault), then heal."""
        self.set_ambient_latency(None)
        answer = self._http.post(f"{self.openai_control}/faults", json=fault.spec)
        answer.raise_for_status()
        fault_id = answer.json()["fault"]["id"]
        time.sleep(fault.hold_s)
        self._http.delete(f"{self.openai_control}/faults/{fault_id}")
        self._http.post(f"{self.openai_control}/release")

    def drill(self, target: str, mode: str, hold_s: float) -> bool:
        """`vagent simulate-failure TARGET --hold` for hold_s, then `vagent restore`.
        False when the command could not inject it."""
        held = _vagent(
            self.env, "simulate-failure", target, "--mode", mode, "--duration",
            f"{max(2.0, hold_s + 2):.0f}s", "--hold",
        )  # fmt: skip
        if held.returncode != 0:
            return False
        time.sleep(hold_s)
        _vagent(self.env, "restore", target)
        return True

    def set_ambient_latency(self, delay_s: float | None, chunk_delay_s: float = 0.0) -> None:
        """The provider's everyday latency: one `latency` fault on every route."""
        if self._ambient is not None:
            self._http.delete(f"{self.openai_control}/faults/{self._ambient}")
            self._ambient = None
        if delay_s is None:
            return
        spec = {"kind": "latency", "route": "*", "delay": delay_s, "chunk_delay": chunk_delay_s}
        answer = self._http.post(f"{self.openai_control}/faults", json=spec)
        answer.raise_for_status()
        self._ambient = str(answer.json()["fault"]["id"])

    def drills_available(self) -> bool:
        """`vagent simulate-failure --hold` exists in this version of the CLI."""
        return "--hold" in _vagent(self.env, "simulate-failure", "--help").stdout

    def close(self) -> None:
        self._http.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in state.lower()


@contextlib.contextmanager
def rig(budget_ms: int, workdir: Path | None = None) -> Iterator[Rig]:
    """Redis, both doubles and `vagent up`; everything is stopped on the way out."""
    with ExitStack() as stack:
        root = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        redis = RedisServer(root)
        redis.start()
        stack.callback(redis.stop)
        base_url = stack.enter_context(_double_process())
        control = base_url.removesuffix("/v1") + "/_double"
        httpx.post(
            f"{control}/config", json={"chat_reply": REPLY, "transcription_text": TRANSCRIPT}
        ).raise_for_status()
        ari = AriDouble(user="vagent", password=ARI_PASSWORD, fail_on_violations=False)
        stack.enter_context(ari)
        home = root / "home"
        home.mkdir(exist_ok=True)
        env = _env(
            home,
            VAGENT_REDIS_URL=redis.url,
            OPENAI_API_KEY=KEY,
            OPENAI_BASE_URL=base_url,
            VAGENT_ARI_URL=ari.base_url,
            VAGENT_ARI_USER="vagent",
            VAGENT_ARI_PASSWORD=ARI_PASSWORD,
            VAGENT_TURN_BUDGET_MS=str(budget_ms),
            VAGENT_HEALTH_TIMEOUT_S="0.5",
            VAGENT_DRAIN_S="5",
        )
        up = _vagent(env, "up", "--timeout", f"{UP_TIMEOUT_S:.0f}")
        stack.callback(lambda: _vagent(env, "down"))
        if up.returncode > 1:
            raise RuntimeError(f"the stack did not come up:\n{up.stdout}\n{up.stderr}")
        ready = Rig(home, env, redis, ari, control, budget_ms)
        stack.callback(ready.close)
        _wait(ready.healthy, UP_TIMEOUT_S, "every service healthy (prompts rendered)")
        ari.wait_for_app(timeout=10)
        yield ready


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")
