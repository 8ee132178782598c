"""The control API of every service: drills, behind a token, on loopback only.

    GET    /control/faults            this service's drill targets and active faults
    POST   /control/faults            {"target", "mode", "duration_s"}: start a drill
    DELETE /control/faults[/TARGET]   end drills now (they also end by themselves)

`vagent simulate-failure` and `vagent restore` are its clients; the faults go
into the process's `FAULTS` registry (faults.py), which the policy layer
consults. Two locks, checked before routing, so every /control path (unknown
ones and malformed requests included) is refused before anything else:

* **Loopback only.** /health and /metrics may be published
  (VAGENT_BIND_HOST=0.0.0.0), the control endpoints never: a request that
  arrived on a non-loopback local address gets 403, whatever it carries.
* **A token.** `vagent up` writes a fresh random one to
  `<run_dir>/control.token` (mode 0600 in the 0700 run dir), so only the
  account that runs vagent can read it. A service reads the file on every
  control request (a few bytes, and rare), so a new `vagent up` takes effect
  without a restart; the comparison is constant-time, and no answer ever
  contains the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from vagent.services.control_token import read_token_file
from vagent.services.faults import FAULTS, Fault, Mode, Target
from vagent.services.health import Check, CheckResult

PREFIX = "/control"


class FaultRequest(BaseModel):
    target: Target
    mode: Mode = "error"
    duration_s: float = Field(default=60.0, ge=1, le=3600)


@dataclass(frozen=True)
class ControlApi:
    """One service's control API: its name, its drill targets and where its token lives.

    `targets` maps a drill target to the dependencies it faults in this
    service; a target the service has no dependency for is answered with a
    reason, not an error, so the CLI can send every drill to every service.
    """

    service: str
    targets: dict[str, list[str]]
    token_file: Path

    def mount(self, app: FastAPI) -> None:
        app.add_middleware(ControlGuard, token_file=self.token_file)
        app.include_router(self._router())

    def _router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX)

        @router.get("/faults")
        async def faults() -> dict[str, Any]:
            active = _views(FAULTS.active())
            return {"service": self.service, "targets": self.targets, "faults": active}

        @router.post("/faults")
        async def inject(request: FaultRequest) -> dict[str, Any]:
            dependencies = self.targets.get(request.target)
            if not dependencies:
                reason = f"{self.service} has no dependency for target {request.target}"
                return {"service": self.service, "fault": None, "reason": reason}
            fault = FAULTS.inject(request.target, request.mode, request.duration_s, dependencies)
            return {"service": self.service, "fault": fault.view()}

        @router.delete("/faults")
        async def restore_all() -> dict[str, Any]:
            return {"service": self.service, "restored": _views(FAULTS.restore())}

        @router.delete("/faults/{target}")
        async def restore(target: Target) -> dict[str, Any]:
            return {"service": self.service, "restored": _views(FAULTS.restore(target))}

        return router


def _views(faults: list[Fault]) -> list[dict[str, object]]:
    return [fault.view() for fault in faults]


class ControlGuard:
    """ASGI middleware: loopback first (403), then a token file (503), then the token (401)."""

    def __init__(self, app: ASGIApp, token_file: Path) -> None:
        self.app = app
        self.token_file = token_file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_control(scope["path"]):
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if not _on_loopback(scope.get("server")):
            return _error(403, "control endpoints answer on loopback only")
        token = read_token_file(self.token_file)
        if token is None:
            return _error(503, "no control token: start vagent with vagent up")
        if not hmac.compare_digest(_bearer(scope).encode(), token.encode()):
            return _error(
                401, f"missing or wrong control token: the CLI reads it from {self.token_file}"
            )
        return None


def _is_control(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _on_loopback(server: tuple[str, int | None] | None) -> bool:
    """Whether the request arrived on a loopback address (the local side of the socket)."""
    if server is None:
        return False
    try:
        address = ipaddress.ip_address(server[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _bearer(scope: Scope) -> str:
    scheme, _, credentials = Headers(scope=scope).get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def drill_check() -> Check:
    """Active drills on /health: a drill degrades the service and says how long it has left."""

    async def probe() -> CheckResult:
        faults = FAULTS.active()
        if not faults:
            return CheckResult("pass", "no drill")
        return CheckResult("warn", "; ".join(fault.describe() for fault in faults))

    return Check("drill:faults", "component", probe, timeout_s=0.5, cache_s=0.0)
