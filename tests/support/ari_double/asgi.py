"""ASGI plumbing shared by the HTTP, websocket and control entry points."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from .responses import AriResponse, render_headers
from .rest import IncomingRequest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def request_from_scope(scope: Scope, body: bytes, upgrade: bool) -> IncomingRequest:
    """Raw path (still percent-encoded), ordered query and lower-cased headers."""
    raw = scope.get("raw_path") or scope["path"].encode()
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return IncomingRequest(
        method=scope.get("method", "GET"),
        raw_path=raw.decode("latin-1").split("?", 1)[0],
        query=query,
        headers=headers,
        body=body,
        upgrade=upgrade,
    )


async def read_http_body(receive: Receive) -> bytes:
    """The whole request entity (ARI bodies are small)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_http(send: Send, response: AriResponse, server_name: str) -> None:
    """Write a response with Asterisk's header set."""
    body = response.body_bytes()
    headers = render_headers(response, server_name, len(body))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
