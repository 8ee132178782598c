"""A client of the services' drill control API (`/control/faults`), over all four at once.

Faults live inside the services, at their policy layer, and expire there on
their own: this client only asks. It talks to every service concurrently,
turns each service's answer into one `ServiceAnswer`, and raises
`ControlError` only when nothing can work at all (vagent down, the token
refused), so a single service that is down is reported, not fatal.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from vagent.services.config import SERVICES, Settings
from vagent.services.control_token import read_token
from vagent.services.faults import MODES as MODES  # re-exported: the CLI validates with them
from vagent.services.faults import TARGETS as TARGETS

CONTROL_PATH = "/control/faults"
DRILL_CHECK = "drill:faults"  # the /health check that shows active drills
REQUEST_TIMEOUT_S = 5.0
MIN_DURATION_S, MAX_DURATION_S = 1.0, 3600.0  # what the services accept

NOT_RUNNING = "vagent is not running: start it with `vagent up`"
TOKEN_MISMATCH = "the control token does not match: was vagent restarted? run the command again"


class ControlError(Exception):
    """The control API cannot be used at all; the message says what to do."""


@dataclass(frozen=True)
class Fault:
    """One active fault in one service (the API's FaultView)."""

    service: str
    target: str
    mode: str
    dependencies: tuple[str, ...]
    started_at: float
    expires_at: float
    remaining_s: float

    @classmethod
    def from_view(cls, service: str, view: dict[str, Any]) -> Fault:
        return cls(
            service=service,
            target=str(view["target"]),
            mode=str(view["mode"]),
            dependencies=tuple(str(d) for d in view.get("dependencies", [])),
            started_at=float(view.get("started_at", 0.0)),
            expires_at=float(view.get("expires_at", 0.0)),
            remaining_s=float(view.get("remaining_s", 0.0)),
        )

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["dependencies"] = list(self.dependencies)
        body["remaining_s"] = round(self.remaining_s, 1)
        return body


@dataclass(frozen=True)
class ServiceAnswer:
    """What one service said: its faults (injected, restored or listed), or why not."""

    service: str
    faults: tuple[Fault, ...] = ()
    targets: dict[str, list[str]] = field(default_factory=dict)
    reason: str = ""  # the service has nothing to fault for this target
    error: str = ""  # the service could not be asked

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "service": self.service,
            "faults": [f.as_json() for f in self.faults],
        }
        if self.reason:
            body["reason"] = self.reason
        if self.error:
            body["error"] = self.error
        return body


def parse_duration(text: str) -> float:
    """Seconds from "60s", "2m", "1m30s", "1h" or a bare number of seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"{text!r} is not a duration: use e.g. 60s, 2m or 90")
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
        raise ValueError(f"{text!r}: a drill lasts from 1 s to 1 h")
    return seconds


def _token(settings: Settings) -> str:
    token = read_token(settings)
    if token is None:
        raise ControlError(
            f"no control token in {settings.run_dir}: `vagent up` writes it; if vagent is "
            "running, the file was removed: `vagent down`, then `vagent up`"
        )
    return token


def _faults(service: str, views: list[dict[str, Any]] | None) -> tuple[Fault, ...]:
    return tuple(Fault.from_view(service, v) for v in views or [])


def _answer(service: str, response: httpx.Response) -> ServiceAnswer:
    """One service's reply; fatal replies (a refused token) raise for everyone."""
    if response.status_code == 401:
        raise ControlError(TOKEN_MISMATCH)
    if response.status_code == 422:
        raise ControlError(f"{service} refused the request: {response.text[:300]}")
    if response.status_code == 404:
        return ServiceAnswer(
            service, error="no control API: restart it with `vagent restart` (an older vagent?)"
        )
    if response.status_code == 403:
        return ServiceAnswer(service, error="refused: the control API answers on loopback only")
    if response.status_code == 503:
        return ServiceAnswer(service, error="no control token: restart vagent with `vagent up`")
    if response.status_code != 200:
        return ServiceAnswer(service, error=f"HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    single = [body["fault"]] if body.get("fault") else []
    faults = _faults(service, body.get("faults") or body.get("restored") or single)
    return ServiceAnswer(
        service, faults, dict(body.get("targets") or {}), str(body.get("reason") or "")
    )


async def _ask(
    client: httpx.AsyncClient,
    settings: Settings,
    service: str,
    method: str,
    path: str,
    payload: dict[str, Any] | None,
) -> ServiceAnswer:
    url = settings.service_url(service) + path
    try:
        response = await client.request(method, url, json=payload)
    except httpx.ConnectError:
        return ServiceAnswer(
            service, error="down: nothing answers on " + settings.service_url(service)
        )
    except httpx.HTTPError as exc:
        return ServiceAnswer(service, error=f"no answer ({type(exc).__name__}: {exc})")
    try:
        return _answer(service, response)
    except ValueError:
        return ServiceAnswer(service, error=f"not a control API answer: {response.text[:200]}")


async def _everywhere(
    settings: Settings, method: str, path: str, payload: dict[str, Any] | None = None
) -> list[ServiceAnswer]:
    headers = {"Authorization": f"Bearer {_token(settings)}"}
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, headers=headers) as client:
        answers = await asyncio.gather(
            *(_ask(client, settings, s, method, path, payload) for s in SERVICES)
        )
    if all(a.error.startswith("down:") for a in answers):
        raise ControlError(NOT_RUNNING)
    return list(answers)


async def inject(
    settings: Settings, target: str, mode: str, duration_s: float
) -> list[ServiceAnswer]:
    """Ask every service to fault `target`; those with nothing to fault say why."""
    if target not in TARGETS or mode not in MODES:
        raise ControlError(
            f"unknown drill {target!r} ({mode!r}): targets are {', '.join(TARGETS)}; "
            f"modes are {', '.join(MODES)}"
        )
    payload = {"target": target, "mode": mode, "duration_s": duration_s}
    return await _everywhere(settings, "POST", CONTROL_PATH, payload)


async def restore(settings: Settings, target: str | None = None) -> list[ServiceAnswer]:
    """End the faults of `target` (every fault when None) everywhere; breakers are reset."""
    path = CONTROL_PATH if target is None else f"{CONTROL_PATH}/{target}"
    return await _everywhere(settings, "DELETE", path)


async def list_faults(settings: Settings) -> list[ServiceAnswer]:
    """The active faults of every service, and what each could fault per target."""
    return await _everywhere(settings, "GET", CONTROL_PATH)


def faults_of(answers: list[ServiceAnswer]) -> list[Fault]:
    return [f for a in answers for f in a.faults]


def failures_of(answers: list[ServiceAnswer]) -> list[str]:
    """One line per service that could not be asked."""
    return [f"{a.service}: {a.error}" for a in answers if a.error]
