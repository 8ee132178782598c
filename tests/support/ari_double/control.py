"""``/_double/...``: the control API for tests that run the double in another process.

Plain JSON over HTTP, no authentication (loopback only, test use). Routes:

    GET  /_double/health                      liveness + URLs
    GET  /_double/state                       channels, bridges, playbacks, apps
    POST /_double/calls                       start an inbound call -> {"channel_id"}
    POST /_double/calls/{id}/hangup           far-end hangup {"cause": 16}
    POST /_double/faults/fail_next            {"status", "count", "match", "message"}
    POST /_double/faults/hang                 {"enabled": true|false}
    POST /_double/faults/refuse_credentials   {"enabled": true|false}
    POST /_double/faults/clear
    GET  /_double/faults
    POST /_double/websockets/drop             {"app": null, "graceful": false} -> {"dropped"}
    POST /_double/restart                     {"downtime": 0.0} -> 202, restarts in background
    POST /_double/sounds                      {"name", "seconds"}
    GET  /_double/requests | /_double/events | /_double/violations
    POST /_double/journal/clear
    POST /_double/calls/{id}/say              {"wav_base64"} -> {"seconds"}
    GET  /_double/channels/{id}/heard         -> {"rate": 8000, "pcm_base64"} (s16le)
    GET  /_double/channels/{id}/rtp_log | rtp_sent | speech | playbacks
    GET  /_double/media_channels              ExternalMedia RTP channel ids
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any

from . import actions, media_actions
from .asgi import Scope, Send, send_http
from .flows import AppNotRegistered
from .responses import AriResponse
from .runtime import Runtime

Route = Callable[[Runtime, dict[str, Any], list[str]], AriResponse]


def _reply(status: int, body: Any = None) -> AriResponse:
    return AriResponse(status, body)


def _health(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    engine = runtime.engine
    return _reply(
        200,
        {
            "status": "ok" if engine is not None and not engine.closed else "down",
            "base_url": runtime.base_url,
            "startup_time": engine.startup_time if engine else None,
        },
    )


def _state(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    return _reply(200, runtime.require_engine().snapshot())


def _start_call(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    allowed = {
        "args",
        "caller",
        "caller_name",
        "app",
        "answered",
        "context",
        "exten",
        "priority",
        "channel_name",
    }
    unknown = set(body) - allowed
    if unknown:
        return _reply(400, {"error": f"unknown fields {sorted(unknown)}"})
    try:
        channel_id = actions.start_inbound_call(runtime.require_engine(), **body)
    except AppNotRegistered as exc:
        return _reply(409, {"error": str(exc)})
    return _reply(200, {"channel_id": channel_id})


def _hangup(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    try:
        actions.far_end_hangup(runtime.require_engine(), parts[1], int(body.get("cause", 16)))
    except KeyError as exc:
        return _reply(404, {"error": str(exc)})
    return _reply(204)


def _fail_next(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    runtime.faults.fail_next(
        int(body["status"]), int(body.get("count", 1)), body.get("match"), body.get("message")
    )
    return _reply(204)


def _toggle(setter: Callable[[Runtime, bool], None]) -> Route:
    def route(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
        setter(runtime, bool(body.get("enabled", True)))
        return _reply(204)

    return route


def _clear_faults(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    runtime.faults.clear()
    return _reply(204)


def _faults(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    return _reply(200, runtime.faults.describe())


def _drop(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    dropped = actions.drop_websockets(
        runtime.require_engine(), body.get("app"), bool(body.get("graceful", False))
    )
    return _reply(200, {"dropped": dropped})


def _restart(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    hook = runtime.restart_hook
    if hook is None:
        return _reply(501, {"error": "restart is not available"})
    downtime = float(body.get("downtime", 0.0))
    threading.Thread(target=hook, args=(downtime,), name="ari-double-restart").start()
    return _reply(202, {"restarting": True, "downtime": downtime})


def _sound(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    runtime.config.sounds[str(body["name"])] = float(body.get("seconds", 1.0))
    return _reply(204)


def _listing(kind: str) -> Route:
    def route(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
        journal = runtime.journal
        if kind == "requests":
            return _reply(200, [r.to_json() for r in journal.snapshot_requests()])
        if kind == "events":
            return _reply(200, [r.to_json() for r in journal.snapshot_events()])
        return _reply(200, [r.to_json() for r in journal.snapshot_violations()])

    return route


def _clear_journal(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    runtime.journal.clear()
    return _reply(204)


def _say(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    samples, rate = media_actions.speech_samples(base64.b64decode(body["wav_base64"]))
    try:
        record = media_actions.say(runtime.require_engine(), parts[1], samples, rate)
    except KeyError as exc:
        return _reply(404, {"error": str(exc)})
    return _reply(200, {"seconds": record.seconds})


def _heard(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    try:
        samples = media_actions.heard(runtime.require_engine(), parts[1])
    except KeyError as exc:
        return _reply(404, {"error": str(exc)})
    pcm = base64.b64encode(samples.astype("<i2").tobytes()).decode()
    return _reply(200, {"rate": media_actions.HEARD_RATE, "pcm_base64": pcm})


def _records(reader: Callable[..., list[Any]]) -> Route:
    def route(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
        try:
            records = reader(runtime.require_engine(), parts[1])
        except KeyError as exc:
            return _reply(404, {"error": str(exc)})
        return _reply(200, [dataclasses.asdict(record) for record in records])

    return route


def _media_channels(runtime: Runtime, body: dict[str, Any], parts: list[str]) -> AriResponse:
    return _reply(200, media_actions.external_media_channels(runtime.require_engine()))


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "health"): _health,
    ("GET", "state"): _state,
    ("POST", "calls"): _start_call,
    ("POST", "calls/*/hangup"): _hangup,
    ("POST", "faults/fail_next"): _fail_next,
    ("POST", "faults/hang"): _toggle(lambda r, on: r.faults.set_hang(on)),
    ("POST", "faults/refuse_credentials"): _toggle(
        lambda r, on: r.faults.set_refuse_credentials(on)
    ),
    ("POST", "faults/clear"): _clear_faults,
    ("GET", "faults"): _faults,
    ("POST", "websockets/drop"): _drop,
    ("POST", "restart"): _restart,
    ("POST", "sounds"): _sound,
    ("GET", "requests"): _listing("requests"),
    ("GET", "events"): _listing("events"),
    ("GET", "violations"): _listing("violations"),
    ("POST", "journal/clear"): _clear_journal,
    ("POST", "calls/*/say"): _say,
    ("GET", "channels/*/heard"): _heard,
    ("GET", "channels/*/rtp_log"): _records(media_actions.rtp_log),
    ("GET", "channels/*/rtp_sent"): _records(media_actions.rtp_sent),
    ("GET", "channels/*/speech"): _records(media_actions.speech_log),
    ("GET", "channels/*/playbacks"): _records(media_actions.playback_log),
    ("GET", "media_channels"): _media_channels,
}


def _lookup(method: str, parts: list[str]) -> Route | None:
    for (route_method, pattern), route in ROUTES.items():
        pattern_parts = pattern.split("/")
        if (
            route_method == method
            and len(pattern_parts) == len(parts)
            and all(p in ("*", q) for p, q in zip(pattern_parts, parts, strict=True))
        ):
            return route
    return None


async def handle(runtime: Runtime, scope: Scope, body: bytes, send: Send) -> None:
    """Dispatch one control request."""
    parts = [p for p in scope["path"][len("/_double") :].split("/") if p]
    route = _lookup(scope["method"], parts)
    if route is None:
        response = _reply(404, {"error": f"no control route {scope['method']} {scope['path']}"})
    else:
        try:
            payload = json.loads(body) if body else {}
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
            response = route(runtime, payload, parts)
        except (ValueError, TypeError, KeyError) as exc:
            response = _reply(400, {"error": f"bad request: {exc}"})
        except RuntimeError as exc:
            response = _reply(503, {"error": str(exc)})
    await send_http(send, response, "ari-double-control")
