"""The events websocket ``/ari/events?app=...`` and its upgrade failures.

Upgrade order (res_ari.c, res_http_websocket.c, ari_websockets.c) and what a
client sees (README item 19, rest.jsonl 270-277):

1. credentials: 401 JSON + ``WWW-Authenticate`` (same as REST);
2. a subprotocol other than ``ari`` offered: 400, empty body,
   ``Sec-WebSocket-Version: 7, 8, 13``;
3. ``app`` missing or empty: 400 HTML ``HTTP request is missing param: [app]``
   *followed on the same connection by a second* bare 400 - both are written;
4. otherwise 101; each app is registered (taking it over from another
   socket if needed: ApplicationReplaced, README 20).

A plain GET without ``Upgrade`` never gets here: the REST pipeline answers 426.
Upgrade requests for other ``/ari`` resources are answered like REST requests.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from . import events
from .apps import Session, Signal
from .asgi import Receive, Scope, Send, request_from_scope
from .clock import http_date
from .engine import Engine
from .params import c_true
from .responses import AriResponse, html_page, render_headers
from .rest import Outcome
from .transport import abort_connection, settle

if TYPE_CHECKING:
    from .server import DoubleApp

SUBPROTOCOL = "ari"
MISSING_APP = "HTTP request is missing param: [app]"


def _first(query: list[tuple[str, str]], name: str) -> str | None:
    """``ast_variable_find_in_list``: the *first* occurrence wins here."""
    return next((value for key, value in query if key == name), None)


def _bad_request_tail(server_name: str) -> bytes:
    """The bare 400 ``websocket_bad_request`` writes after a rejected attempt."""
    return (
        "HTTP/1.1 400 Bad Request\r\n"
        f"Server: {server_name}\r\n"
        f"Date: {http_date()}\r\n"
        "Cache-Control: no-cache, no-store\r\n"
        "Sec-WebSocket-Version: 7, 8, 13\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def _deny(send: Send, response: AriResponse, server_name: str, extra: bytes = b"") -> None:
    """Refuse the upgrade with an HTTP response (ASGI websocket denial extension).

    ``extra`` is written after the declared Content-Length, which is how the
    second response of item 19 reaches the wire.
    """
    body = response.body_bytes()
    headers = render_headers(response, server_name, len(body))
    try:
        await send(
            {"type": "websocket.http.response.start", "status": response.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body + extra})
    except OSError:
        pass


def _late_refusal(outcome: Outcome, app: DoubleApp, status: int) -> None:
    """The pipeline let the upgrade through but the websocket layer refused it."""
    if outcome.record is not None:
        outcome.record.status = status
        app.runtime.journal.request_done()


async def serve(app: DoubleApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Handle one websocket connection attempt end to end."""
    await receive()  # websocket.connect
    server_name = app.runtime.config.server_name
    not_ari = app.not_ari({**scope, "method": "GET"})
    if not_ari is not None:
        await _deny(send, not_ari, server_name)
        return
    request = request_from_scope(scope, b"", upgrade=True)
    outcome = await app.serve_ari(request, receive)
    if outcome is None:
        abort_connection(scope)
        await settle()
        return
    if not outcome.upgrade:
        await _deny(send, outcome.response, server_name)
        return
    offered: list[str] = list(scope.get("subprotocols") or [])
    if offered and SUBPROTOCOL not in offered:
        bare = AriResponse(400, headers=[("Sec-WebSocket-Version", "7, 8, 13")])
        _late_refusal(outcome, app, 400)
        await _deny(send, bare, server_name)
        return
    apps_text = _first(request.query, "app")
    if not apps_text:
        page = AriResponse(
            400,
            raw_body=html_page(400, "Bad Request", MISSING_APP, server_name),
            content_type="text/html",
        )
        _late_refusal(outcome, app, 400)
        await _deny(send, page, server_name, _bad_request_tail(server_name))
        return
    names = [name for name in apps_text.split(",") if name]
    session = Session(apps=names, subscribe_all=c_true(_first(request.query, "subscribeAll")))
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if offered:
        accept["subprotocol"] = SUBPROTOCOL
    await send(accept)
    engine = app.runtime.engine
    if engine is None or engine.closed:
        return  # Asterisk "died" during the handshake: the socket just closes
    engine.apps.attach(session)
    await _pump(engine, session, receive, send)


async def _pump(engine: Engine, session: Session, receive: Receive, send: Send) -> None:
    """Write queued events until the session is dropped, closed or the peer leaves."""
    reader = asyncio.ensure_future(_read(engine, session, receive))
    try:
        while True:
            item = await session.outbox.get()
            if item is Signal.DROP:
                return  # returning without a close frame: uvicorn just closes TCP
            if item is Signal.CLOSE:
                await send({"type": "websocket.close", "code": 1000})
                return
            await send({"type": "websocket.send", "text": item})
    except OSError:
        return
    finally:
        reader.cancel()
        engine.apps.detach(session)


async def _read(engine: Engine, session: Session, receive: Receive) -> None:
    """Inbound frames: a disconnect ends the session; text is checked like Asterisk."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            session.signal(Signal.DROP)
            return
        text = message.get("text")
        if text is None:
            continue
        app = session.apps[0] if session.apps else ""
        try:
            json.loads(text)
        except ValueError:
            reply = events.rest_response_parse_error(app, engine.config.entity_id)
            engine.apps.send_to_session(session, reply, app)
            continue
        engine.journal.add_violation(
            "WS",
            "/ari/events",
            "events.eventWebsocket",
            "ARI double does not implement REST over the events websocket (RESTRequest)",
        )
