"""ARI authentication, as ``authenticate_user`` in res_ari.c does it.

* An ``Authorization: Basic`` header that decodes to ``user:password`` is used
  and nothing else is consulted, even when it is wrong.
* Only without a usable Basic header does ``?api_key=user:password`` count
  (the first ``api_key`` parameter; it needs a non-empty password).
* Failure -> 401 ``{"message":"Authentication required"}`` with
  ``WWW-Authenticate: Basic realm="Asterisk REST Interface"``, for REST calls
  and websocket upgrades alike.
* A ``read_only`` user gets 403 ``Write access denied`` for anything but GET
  and OPTIONS (asterisk-configs truth table, variant 14).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .responses import AriResponse, error

REALM = "Asterisk REST Interface"


@dataclass(frozen=True)
class AriUser:
    """A user of ari.conf."""

    name: str
    password: str
    read_only: bool = False


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if header is None or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[len("Basic ") :].strip(), validate=False)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.decode("latin-1")[:255].partition(":")
    return (user, password) if colon else None


def _api_key_credentials(query: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    for name, value in query:
        if name != "api_key":
            continue
        user, _, password = value.partition(":")
        return (user, password) if value and password else None
    return None


def extract_credentials(
    headers: Mapping[str, str], query: Iterable[tuple[str, str]]
) -> tuple[str, str] | None:
    """The credentials Asterisk would check: Basic first, then ``api_key``."""
    return _basic_credentials(headers.get("authorization")) or _api_key_credentials(query)


def authenticate(
    credentials: tuple[str, str] | None, users: Mapping[str, AriUser], refuse_all: bool
) -> AriUser | None:
    """The matching user, or None (also when a fault refuses every credential)."""
    if credentials is None or refuse_all:
        return None
    user = users.get(credentials[0])
    if user is None or not hmac.compare_digest(user.password.encode(), credentials[1].encode()):
        return None
    return user


def unauthorized() -> AriResponse:
    """The 401 Asterisk sends for missing or bad credentials."""
    return error(401, "Authentication required", [("WWW-Authenticate", f'Basic realm="{REALM}"')])


def write_denied() -> AriResponse:
    """The 403 a read_only user gets for a non-GET request."""
    return error(403, "Write access denied")
