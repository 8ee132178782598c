"""The ASGI application: Asterisk's HTTP server in front of ARI, plus /_double/.

* ``/ari/...`` (HTTP): faults first (hang, injected failures), then the REST
  pipeline of :mod:`.rest`, journaled;
* ``/ari/events`` (websocket): see :mod:`.websocket`;
* ``/_double/...``: the control API for tests in other processes;
* anything else: Asterisk's 404 page (``enablestatic = no``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from . import control, websocket
from .asgi import Receive, Scope, Send, read_http_body, request_from_scope, send_http
from .journal import RequestRecord
from .responses import AriResponse, error, html_error
from .rest import IncomingRequest, Outcome, process
from .runtime import Runtime
from .swagger import KNOWN_METHODS
from .transport import abort_connection, settle

NOT_FOUND_TEXT = "The requested URL was not found on this server."


def _body_for_journal(request: IncomingRequest) -> Any:
    if not request.body:
        return None
    try:
        return json.loads(request.body)
    except ValueError:
        return request.body.decode("latin-1")


class DoubleApp:
    """The ASGI callable uvicorn serves."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await websocket.serve(self, scope, receive, send)

    # --- HTTP ---------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        body = await read_http_body(receive)
        if path == "/_double" or path.startswith("/_double/"):
            await control.handle(self.runtime, scope, body, send)
            return
        response = self.not_ari(scope)
        if response is None:
            request = request_from_scope(scope, body, False)
            outcome = await self.serve_ari(request, receive)
            if outcome is None:
                # Hung until the client left or Asterisk "died": no answer at all.
                abort_connection(scope)
                await settle()
                return
            response = outcome.response
        await send_http(send, response, self.runtime.config.server_name)

    def not_ari(self, scope: Scope) -> AriResponse | None:
        """Asterisk's answers for anything that never reaches ARI."""
        server = self.runtime.config.server_name
        if scope["method"] not in KNOWN_METHODS:
            text = "Attempt to use unimplemented / unsupported method"
            return html_error(501, "Not Implemented", text, server)
        path: str = scope["path"]
        is_ari = path == "/ari" or path.startswith("/ari/")
        if not is_ari or not self.runtime.config.ari_enabled:
            return html_error(404, "Not Found", NOT_FOUND_TEXT, server)
        return None

    # --- shared by REST and websocket upgrades -------------------------------------------

    async def serve_ari(self, request: IncomingRequest, receive: Receive) -> Outcome | None:
        """Faults, pipeline, journal. None: answer nothing and drop the connection
        (a reset fault, or the client left / Asterisk died while the double hung)."""
        runtime = self.runtime
        record = runtime.journal.add_request(
            RequestRecord(
                time=time.time(),
                kind="websocket" if request.upgrade else "rest",
                method=request.method,
                path=request.raw_path,
                query=list(request.query),
                body=_body_for_journal(request),
            )
        )
        if runtime.faults.hung and not await self._wait_while_hung(receive):
            record.outcome = "abandoned"
            runtime.journal.request_done()
            return None
        outcome = self._answer(request, record)
        if outcome is not None:
            outcome.record = record
            record.status = 101 if outcome.upgrade else outcome.response.status
            record.response = outcome.response.body
        runtime.journal.request_done()
        return outcome

    def _answer(self, request: IncomingRequest, record: RequestRecord) -> Outcome | None:
        runtime = self.runtime
        rule = runtime.faults.take_failure(f"{request.method} {request.raw_path}")
        if rule is not None:
            record.outcome = "fault"
            if rule.status == 0:
                return None
            return Outcome(error(rule.status, rule.body_message()))
        engine = runtime.engine
        if engine is None or engine.closed:
            record.outcome = "abandoned"  # mid-restart: the process is "dead"
            return None
        outcome = process(engine, request, runtime.faults.refuse_credentials)
        if outcome.operation is not None:
            record.operation = outcome.operation.key
            for message in outcome.violations:
                runtime.journal.add_violation(
                    request.method, request.raw_path, outcome.operation.key, message
                )
        return outcome

    async def _wait_while_hung(self, receive: Receive) -> bool:
        """Hold the request while the hang fault lasts; False if the client went away."""
        departure = asyncio.ensure_future(receive())
        try:
            while self.runtime.faults.hung:
                engine = self.runtime.engine
                if departure.done() or engine is None or engine.closed:
                    return False
                await asyncio.sleep(0.02)
            return not departure.done()
        finally:
            departure.cancel()
