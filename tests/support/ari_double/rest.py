"""The REST pipeline of res_ari.c, step by step, for every ``/ari`` request.

Order (``ast_ari_callback`` then ``ast_ari_invoke``), which decides the error
a client sees:

1. body: form data is merged into the parameters; a JSON body that does not
   parse is 400 ``Error parsing request body`` (before authentication);
2. authentication (401), read-only users (403);
3. a trailing slash is 404 with a hint; ``api-docs/`` serves the Swagger files;
4. routing (404 ``Resource not found``); OPTIONS -> 204 + ``Allow``;
5. the events websocket reached without an upgrade -> 426 HTML;
6. no such method on the resource -> 405 ``Invalid method`` + ``Allow``;
7. argument decoding (Asterisk semantics) and Swagger conformance
   (recorded as violations, never changing the answer);
8. the handler, or 501 when the double does not implement the operation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .auth import authenticate, extract_credentials, unauthorized, write_denied
from .engine import Engine
from .handlers import HANDLERS
from .journal import RequestRecord
from .params import DecodedArgs, TooManyValues, decode_arguments, swagger_violations
from .responses import AriResponse, error, html_error, no_content, ok
from .swagger import Operation

ARI_PREFIX = "/ari/"


@dataclass
class IncomingRequest:
    """A request as the pipeline needs it (independent of ASGI)."""

    method: str
    raw_path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes = b""
    upgrade: bool = False


@dataclass
class Outcome:
    """The response plus what the journal wants to know about the request."""

    response: AriResponse
    operation: Operation | None = None
    args: DecodedArgs | None = None
    body: Any = None
    violations: list[str] = field(default_factory=list)
    #: The request reached the events websocket and may now be upgraded.
    upgrade: bool = False
    #: The journal entry, for the websocket layer to complete (101 or a late 400).
    record: RequestRecord | None = None


def _content_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def read_body(request: IncomingRequest) -> tuple[list[tuple[str, str]], Any, str | None]:
    """Parameters, JSON body and an 'ignored body' note; ValueError = unparsable JSON."""
    kind = _content_type(request.headers)
    if not request.body:
        return list(request.query), None, None
    if kind == "application/x-www-form-urlencoded":
        form = parse_qsl(request.body.decode("latin-1"), keep_blank_values=True)
        return form + list(request.query), None, None
    if kind == "application/json":
        return list(request.query), json.loads(request.body), None
    note = f"request body ignored: Content-Type {kind or '(none)'!r} is not application/json"
    return list(request.query), None, note


def _docs(engine: Engine, name: str, request: IncomingRequest) -> AriResponse:
    if request.method != "GET":
        return error(405, "Unsupported method")
    path = engine.spec.docs_dir / name
    if "/" in name or not path.is_file():
        return error(404, "Resource not found")
    document = json.loads(path.read_text())
    host = request.headers.get("host")
    if host:
        document["basePath"] = f"http://{host}/ari"
    else:
        document.pop("basePath", None)
    return ok(document)


def _unimplemented(operation: Operation) -> AriResponse:
    return error(
        501,
        f"ARI double does not implement {operation.method} /ari{operation.path} ({operation.key})",
    )


def process(engine: Engine, request: IncomingRequest, refuse_credentials: bool) -> Outcome:
    """Run the whole pipeline; never raises for client mistakes."""
    try:
        query, body, ignored = read_body(request)
    except (ValueError, UnicodeDecodeError):
        return Outcome(error(400, "Error parsing request body"))
    user = authenticate(
        extract_credentials(request.headers, query), engine.config.users(), refuse_credentials
    )
    if user is None:
        return Outcome(unauthorized(), body=body)
    if user.read_only and request.method not in ("GET", "OPTIONS"):
        return Outcome(write_denied(), body=body)
    sub_path = (
        request.raw_path[len(ARI_PREFIX) :] if request.raw_path.startswith(ARI_PREFIX) else ""
    )
    if sub_path.endswith("/"):
        hint = f"ARI URLs do not end with a slash. Try /ari/{sub_path[:-1]}"
        return Outcome(error(404, hint), body=body)
    if sub_path.startswith("api-docs/"):
        return Outcome(_docs(engine, sub_path[len("api-docs/") :], request), body=body)
    return _route(engine, request, query, body, ignored, sub_path)


def _route(
    engine: Engine,
    request: IncomingRequest,
    query: list[tuple[str, str]],
    body: Any,
    ignored: str | None,
    sub_path: str,
) -> Outcome:
    match = engine.spec.resolve(sub_path)
    if match is None:
        return Outcome(error(404, "Resource not found"), body=body)
    allow = [("Allow", match.node.allow_header())]
    if request.method == "OPTIONS":
        response = no_content()
        response.headers.extend(allow)
        return Outcome(response, body=body)
    operation = match.node.operations.get(request.method)
    if operation is None:
        return Outcome(error(405, "Invalid method", allow), body=body)
    if operation.is_websocket and not request.upgrade:
        server = engine.config.server_name
        return Outcome(html_error(426, "Upgrade Required", None, server), operation, body=body)
    try:
        args = decode_arguments(operation, query, body, match.path_vars)
    except TooManyValues as exc:
        return Outcome(error(400, str(exc)), operation, body=body)
    violations = swagger_violations(operation, query, body, args, ignored)
    if operation.is_websocket:
        return Outcome(no_content(), operation, args, body, violations, upgrade=True)
    implementation = HANDLERS.get(operation.key)
    response = implementation(engine, args) if implementation else _unimplemented(operation)
    return Outcome(response, operation, args, body, violations)
