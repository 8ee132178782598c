"""A uvicorn HTTP protocol that lets the app drop a connection without answering.

ASGI has no way to say "reset this TCP connection", yet that is what a
client sees when Asterisk dies mid-request. The subclass hands the app the
transport's ``abort`` through ``scope["extensions"]``; everything else is
uvicorn's httptools protocol unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

ABORT_EXTENSION = "ari_double.abort"


class AbortableHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol (it keeps header names as written, so ``Content-type``
    goes out spelled as Asterisk spells it) whose scopes carry
    ``extensions[ABORT_EXTENSION]["abort"]``."""

    def handle_events(self) -> None:
        super().handle_events()
        scope = getattr(self, "scope", None)
        if scope is not None:  # the request's ASGI task has not started yet
            scope.setdefault("extensions", {})[ABORT_EXTENSION] = {"abort": self.transport.abort}


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    """The websocket counterpart: upgrade attempts can be reset the same way."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the ASGI task has not started yet: safe to extend
            scope["extensions"][ABORT_EXTENSION] = {"abort": self.transport.abort}


def abort_connection(scope: MutableMapping[str, Any]) -> bool:
    """Reset the client's connection (no response at all); False if unsupported."""
    extension = scope.get("extensions", {}).get(ABORT_EXTENSION)
    abort: Callable[[], None] | None = extension.get("abort") if extension else None
    if abort is None:
        return False
    abort()
    return True


async def settle() -> None:
    """Let the loop deliver ``connection_lost`` so uvicorn sees the client as gone."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
