"""HTTP responses shaped byte-for-byte like Asterisk's HTTP server writes them.

Asterisk's ``ast_http_send`` writes ``Server``, ``Date``, ``Cache-Control:
no-cache, no-store``, then the resource's own headers (``WWW-Authenticate``,
``Allow``, ``Location``), then ``Content-type`` and ``Content-Length``. JSON is
compact (``pretty = no``). Error pages that do not come from ARI itself (426,
the missing ``app`` of a websocket upgrade, a disabled ARI) are small HTML
documents; :func:`html_error` reproduces them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Any

from .clock import http_date

JsonDict = dict[str, Any]


def dump_json(value: Any) -> str:
    """Compact JSON like Asterisk with ``pretty = no`` (UTF-8, no spaces)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass
class AriResponse:
    """One response before rendering: a JSON body, a raw body, or nothing."""

    status: int
    body: Any = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    raw_body: bytes | None = None
    content_type: str | None = None

    def body_bytes(self) -> bytes:
        """The entity exactly as it goes on the wire."""
        if self.raw_body is not None:
            return self.raw_body
        if self.body is None:
            return b""
        return dump_json(self.body).encode()

    def effective_content_type(self) -> str | None:
        """``application/json`` for JSON bodies, the given type for raw ones."""
        if self.raw_body is not None:
            return self.content_type
        return "application/json" if self.body is not None else None


def ok(body: Any) -> AriResponse:
    """200 with a JSON body."""
    return AriResponse(200, body)


def created(body: Any, location: str) -> AriResponse:
    """201 with the ``Location`` header ARI adds (``/ari/playbacks/<id>``)."""
    return AriResponse(201, body, [("Location", location)])


def no_content() -> AriResponse:
    """204: ARI writes neither a body nor a Content-type."""
    return AriResponse(204)


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> AriResponse:
    """ARI's error body ``{"message": "..."}``."""
    return AriResponse(status, {"message": message}, list(headers or []))


def html_page(status: int, title: str, text: str | None, server_name: str) -> bytes:
    """The HTML document of Asterisk's ``ast_http_error``."""
    return (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\r\n'
        "<html><head>\r\n"
        f"<title>{status} {title}</title>\r\n"
        "</head><body>\r\n"
        f"<h1>{title}</h1>\r\n"
        f"<p>{escape(text or '', quote=True)}</p>\r\n"
        "<hr />\r\n"
        f"<address>{server_name}</address>\r\n"
        "</body></html>\r\n"
    ).encode()


def html_error(status: int, title: str, text: str | None, server_name: str) -> AriResponse:
    """An ``ast_http_error`` response (text/html)."""
    page = html_page(status, title, text, server_name)
    return AriResponse(status, raw_body=page, content_type="text/html")


def render_headers(
    response: AriResponse, server_name: str, body_length: int
) -> list[tuple[bytes, bytes]]:
    """Headers in Asterisk's order, with Asterisk's spelling (``Content-type``)."""
    headers: list[tuple[str, str]] = [
        ("Server", server_name),
        ("Date", http_date()),
        ("Cache-Control", "no-cache, no-store"),
        *response.headers,
    ]
    content_type = response.effective_content_type()
    if content_type is not None:
        headers.append(("Content-type", content_type))
    headers.append(("Content-Length", str(body_length)))
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
