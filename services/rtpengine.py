"""Asyncio client for the RTPEngine ng control protocol (bencode over UDP).

Wire format: each request is ``<cookie> <bencoded dict>`` in one UDP datagram,
and rtpengine answers ``<cookie> <bencoded dict>`` from the same address. The
client keeps one connected UDP socket per event loop and matches replies to
requests by cookie, so any number of concurrent requests share the socket
without mixing up their replies.

Why things are the way they are:

* **A fresh random cookie per request.** rtpengine caches replies by cookie and
  source address and answers a repeated cookie from that cache *without looking
  at the body* (its log says "Detected command ... as a duplicate"). Reusing a
  cookie would return a stale reply for a different command.
* **Retransmission with the same cookie.** UDP may drop a datagram; that cache
  is what makes resending the very same datagram safe (an ``offer`` is not
  executed twice). Resends are spread inside ``timeout_s``, never beyond it.
* **A connected socket.** The kernel then drops datagrams from any other
  source, and an ICMP "port unreachable" surfaces as an error, so a stopped
  daemon fails fast instead of waiting for the whole timeout.
* **Stray datagrams are ignored**, not fatal: a late reply to a request that
  already timed out, a duplicate reply to a resend, or garbage without a known
  cookie must not disturb the requests in flight.
* **Typed errors.** :class:`RtpEngineError` has subclasses that say whether a
  retry can help (``transient``), for the shared resilience policy layer.
* **Drills enter in** :meth:`RtpEngineClient.request`, the one place every ng
  command passes, and leave as the errors a real outage gives (a refused
  socket, or no answer within ``timeout_s``): media anchoring then falls back
  to direct RTP and the ``rtpengine:ping`` check degrades, as they would.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Final

from . import metrics
from .bencode import BencodeError, BValue, decode, encode
from .faults import FAULTS, SimulatedFailure

__all__ = [
    "RtpEngineClient",
    "RtpEngineConnectionError",
    "RtpEngineError",
    "RtpEngineProtocolError",
    "RtpEngineReplyError",
    "RtpEngineTimeoutError",
    "parse_ng_address",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 1.0
DEFAULT_RESENDS: Final = 2
NG_SETTING: Final = "VAGENT_RTPENGINE_NG"

# rtpengine's warning when delete finds nothing; the reply is still "ok".
_CALL_NOT_FOUND_WARNING: Final = "Call-ID not found"
_HOSTNAME_RE: Final = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_])?$")


# --------------------------------------------------------------------------- errors


class RtpEngineError(Exception):
    """Any failure talking to rtpengine. ``transient`` says whether a retry may help."""

    transient: bool = True

    def __init__(self, message: str, *, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


class RtpEngineTimeoutError(RtpEngineError):
    """No reply within ``timeout_s`` (daemon down, overloaded, or packets lost)."""


class RtpEngineConnectionError(RtpEngineError):
    """The socket failed: name resolution, ICMP port unreachable, no route."""


class RtpEngineProtocolError(RtpEngineError):
    """A reply with our cookie arrived but is not a valid ng reply."""


class RtpEngineReplyError(RtpEngineError):
    """rtpengine answered ``result: error``; ``reason`` is its ``error-reason``.

    Not transient: the same request will fail the same way (unknown call-id,
    unparsable SDP, unknown command).
    """

    transient = False

    def __init__(self, message: str, *, command: str | None = None, reason: str) -> None:
        super().__init__(message, command=command)
        self.reason = reason


# --------------------------------------------------------------------------- address


def parse_ng_address(value: str, *, setting: str = NG_SETTING) -> tuple[str, int]:
    """Parse ``host:port`` or ``[ipv6]:port`` into ``(host, port)``.

    Bare IPv6 (``::1:2223``) is refused because the port cannot be told from
    the address. ``setting`` names the configuration key in error messages so
    the operator knows what to fix.
    """
    text = value.strip()
    expected = f"{setting} must be host:port, e.g. 127.0.0.1:2223 or [::1]:2223; got {value!r}"
    if "/" in text or text.lower().startswith(("udp:", "tcp:")):
        raise ValueError(f"{expected} (no scheme or path)")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError(expected)
    host = _parse_host(host, expected)
    return host, _parse_port(port_text, expected)


def _parse_host(host: str, expected: str) -> str:
    """Validate the host part; brackets are required around IPv6 and only there."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{expected} ({inner!r} is not an IPv6 address)") from None
        return inner
    if ":" in host:
        raise ValueError(f"{expected} (put an IPv6 address in brackets)")
    if not _HOSTNAME_RE.match(host):
        raise ValueError(f"{expected} ({host!r} is not a host name or address)")
    return host


def _parse_port(port_text: str, expected: str) -> int:
    """Validate the port part: decimal digits, 1..65535."""
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{expected} (port {port_text!r} is not a number)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{expected} (port {port} is out of range 1-65535)")
    return port


# --------------------------------------------------------------------------- protocol


class _NgProtocol(asyncio.DatagramProtocol):
    """Routes reply datagrams to the pending request with the same cookie."""

    def __init__(self, label: str) -> None:
        self.pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._label = label

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """Hand the payload to its request; anything unmatched is a stray and dropped."""
        cookie, sep, payload = data.partition(b" ")
        future = self.pending.get(cookie) if sep else None
        if future is None or future.done():
            logger.debug("rtpengine %s: ignoring stray datagram %.60r", self._label, data)
            return
        future.set_result(payload)

    def error_received(self, exc: Exception) -> None:
        """Fail the requests in flight: on a connected socket this is ICMP for them."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whatever is still waiting; the client opens a new socket next time."""
        reason = exc or ConnectionError("socket closed")
        self.error_received(reason)


# --------------------------------------------------------------------------- client


class RtpEngineClient:
    """ng protocol client for one rtpengine control address.

    ``timeout_s`` bounds each request as a whole, resends included.
    ``resends`` is how many times an unanswered datagram is sent again (with
    the same cookie) before the timeout. Use as ``async with`` or call
    :meth:`close`; the socket is opened lazily on the first request.
    """

    #: The dependency name drills and health know rtpengine by.
    name: Final = "rtpengine"

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        resends: int = DEFAULT_RESENDS,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if resends < 0:
            raise ValueError(f"resends must be >= 0, got {resends}")
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.resends = resends
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _NgProtocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_address(cls, address: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> RtpEngineClient:
        """Build a client from ``host:port`` text such as ``VAGENT_RTPENGINE_NG``."""
        host, port = parse_ng_address(address)
        return cls(host, port, timeout_s)

    @property
    def address(self) -> str:
        """``host:port`` for messages (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"RtpEngineClient({self.address!r}, timeout_s={self.timeout_s})"

    async def __aenter__(self) -> RtpEngineClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; requests in flight fail, later requests reopen it."""
        transport, self._transport, self._protocol, self._loop = self._transport, None, None, None
        if transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop may be closed already
                transport.close()

    # ----------------------------------------------------------------- commands

    async def ping(self) -> float:
        """Round trip of an ng ``ping`` in milliseconds; the reply must be ``pong``."""
        started = time.perf_counter()
        reply = await self.request("ping")
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if reply.get("result") != "pong":
            raise _protocol_error(
                "not_pong",
                f"rtpengine at {self.address} answered ping with {reply.get('result')!r:.60}, "
                "expected 'pong'",
                command="ping",
            )
        return elapsed_ms

    async def offer(
        self, call_id: str, from_tag: str, sdp: str, **flags: object
    ) -> dict[str, object]:
        """Send an SDP offer; the reply's ``sdp`` is the offer rewritten by rtpengine.

        ``flags`` are extra ng keys (``_`` becomes ``-``); see :meth:`request`.
        """
        reply = await self.request("offer", call_id=call_id, from_tag=from_tag, sdp=sdp, **flags)
        return self._require_sdp("offer", reply)

    async def answer(
        self, call_id: str, from_tag: str, to_tag: str, sdp: str, **flags: object
    ) -> dict[str, object]:
        """Send the SDP answer of a call created by :meth:`offer`; returns the rewritten SDP."""
        reply = await self.request(
            "answer", call_id=call_id, from_tag=from_tag, to_tag=to_tag, sdp=sdp, **flags
        )
        return self._require_sdp("answer", reply)

    async def delete(
        self, call_id: str, from_tag: str, *, missing_ok: bool = True, **flags: object
    ) -> dict[str, object]:
        """Delete a call (or the branch of ``from_tag``).

        rtpengine answers a delete of an unknown call with ``result: ok`` plus a
        ``warning``. With ``missing_ok`` (the default, because hangup cleanup
        may run twice) that reply is returned as is; with ``missing_ok=False``
        it raises :class:`RtpEngineReplyError`.
        """
        reply = await self.request("delete", call_id=call_id, from_tag=from_tag, **flags)
        warning = reply.get("warning")
        if not missing_ok and isinstance(warning, str) and _CALL_NOT_FOUND_WARNING in warning:
            raise RtpEngineReplyError(
                f"rtpengine delete failed: {warning} (call-id {call_id!r})",
                command="delete",
                reason=warning,
            )
        return reply

    def _require_sdp(self, command: str, reply: dict[str, object]) -> dict[str, object]:
        """An ok offer/answer reply without an SDP is useless to the caller: say so."""
        if not isinstance(reply.get("sdp"), str):
            raise _protocol_error(
                "no_sdp",
                f"rtpengine {command} reply from {self.address} has no text 'sdp'",
                command,
            )
        return reply

    # ----------------------------------------------------------------- request

    async def request(self, command: str, **params: object) -> dict[str, object]:
        """Send one ng command and return the decoded reply dictionary.

        Parameter names have ``_`` replaced by ``-`` (``call_id`` -> ``call-id``).
        ``None`` values are left out. A ``True`` value adds its name to the
        ``flags`` list (``trust_address=True`` -> ``flags: [trust-address]``),
        ``False`` leaves it out. Reply byte strings that are UTF-8 become ``str``.

        Raises :class:`RtpEngineReplyError` on ``result: error`` (with
        ``error-reason``), :class:`RtpEngineTimeoutError`,
        :class:`RtpEngineConnectionError` or :class:`RtpEngineProtocolError`.
        """
        message = build_message(command, params)
        try:
            body = encode(message)
        except BencodeError as exc:
            raise ValueError(f"rtpengine {command}: cannot encode parameters: {exc}") from None
        await self._drill(command)
        payload = await self._exchange(command, body)
        reply = self._decode_reply(command, payload)
        self._check_result(command, reply)
        return reply

    async def _drill(self, command: str) -> None:
        """A drill on rtpengine, raised as the error the real outage would give."""
        try:
            await FAULTS.before(self.name, self.timeout_s)
        except SimulatedFailure as exc:
            raise RtpEngineConnectionError(
                f"rtpengine at {self.address} unreachable during {command!r}: {exc}",
                command=command,
            ) from exc
        except TimeoutError as exc:
            raise RtpEngineTimeoutError(
                f"rtpengine at {self.address} did not answer {command!r} within "
                f"{self.timeout_s:g} s: {exc}",
                command=command,
            ) from exc

    async def _exchange(self, command: str, body: bytes) -> bytes:
        """Send ``body`` under a fresh cookie, resending until a reply or the timeout."""
        protocol, transport = await self._ensure_socket()
        loop = asyncio.get_running_loop()
        cookie = self._new_cookie(protocol)
        future: asyncio.Future[bytes] = loop.create_future()
        protocol.pending[cookie] = future
        datagram = cookie + b" " + body
        deadline = loop.time() + self.timeout_s
        interval = self.timeout_s / (self.resends + 1)
        try:
            for _ in range(self.resends + 1):
                transport.sendto(datagram)
                wait_s = min(interval, deadline - loop.time())
                done, _pending = await asyncio.wait({future}, timeout=max(wait_s, 0.0))
                if done:
                    return self._result_of(command, future)
        finally:
            protocol.pending.pop(cookie, None)
            if future.done() and not future.cancelled():
                future.exception()  # mark retrieved: no "never retrieved" log if cancelled
            future.cancel()
        raise RtpEngineTimeoutError(
            f"rtpengine at {self.address} did not answer {command!r} within "
            f"{self.timeout_s:g} s ({self.resends + 1} sends); is it running and is "
            f"{NG_SETTING} its listen-ng address?",
            command=command,
        )

    def _result_of(self, command: str, future: asyncio.Future[bytes]) -> bytes:
        """The reply payload, or the socket error that ended the wait, as our error."""
        try:
            return future.result()
        except OSError as exc:
            hint = " (nothing listening on that UDP port?)" if _is_refused(exc) else ""
            raise RtpEngineConnectionError(
                f"rtpengine at {self.address} unreachable during {command!r}: "
                f"{exc.strerror or exc}{hint}",
                command=command,
            ) from exc

    def _decode_reply(self, command: str, payload: bytes) -> dict[str, object]:
        """Bencode-decode the reply and turn UTF-8 byte strings into ``str``."""
        try:
            raw = decode(payload)
        except BencodeError as exc:
            raise _protocol_error(
                "undecodable",
                f"rtpengine at {self.address} sent an undecodable reply to {command!r}: {exc}",
                command,
            ) from exc
        if not isinstance(raw, dict):
            raise _protocol_error(
                "not_a_dictionary",
                f"rtpengine at {self.address} replied to {command!r} with a "
                f"{type(raw).__name__}, expected a dictionary",
                command,
            )
        return {_text_key(key): _textify(value) for key, value in raw.items()}

    def _check_result(self, command: str, reply: Mapping[str, object]) -> None:
        """Turn ``result: error`` into an exception; log warnings rtpengine attaches."""
        result = reply.get("result")
        if result == "error":
            reason = str(reply.get("error-reason", "no error-reason given"))
            raise RtpEngineReplyError(
                f"rtpengine {command} failed: {reason:.200}", command=command, reason=reason
            )
        if result is None:
            raise _protocol_error(
                "no_result",
                f"rtpengine at {self.address} replied to {command!r} without a 'result'",
                command,
            )
        warning = reply.get("warning")
        if warning is not None:
            # A delete of a call that is already gone is routine (hangup cleanup
            # racing the other side); anything else is worth an operator's look.
            routine = command == "delete" and _CALL_NOT_FOUND_WARNING in str(warning)
            level = logging.DEBUG if routine else logging.WARNING
            logger.log(level, "rtpengine %s warning: %.200s", command, warning)

    # ----------------------------------------------------------------- socket

    async def _ensure_socket(self) -> tuple[_NgProtocol, asyncio.DatagramTransport]:
        """Open (or reopen) the connected UDP socket for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._usable_socket(loop):
            assert self._protocol is not None and self._transport is not None
            return self._protocol, self._transport
        protocol = _NgProtocol(self.address)
        try:
            # Name resolution runs in a thread and is not bounded by the OS in
            # any useful way; bound it by the request timeout.
            transport, _ = await asyncio.wait_for(
                loop.create_datagram_endpoint(lambda: protocol, remote_addr=(self.host, self.port)),
                self.timeout_s,
            )
        except TimeoutError as exc:
            raise RtpEngineConnectionError(
                f"cannot open a UDP socket to rtpengine at {self.address}: "
                f"name resolution took longer than {self.timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise RtpEngineConnectionError(
                f"cannot open a UDP socket to rtpengine at {self.address}: {exc}"
            ) from exc
        if self._usable_socket(loop):  # another request won the race while we awaited
            transport.close()
            assert self._protocol is not None and self._transport is not None
            return self._protocol, self._transport
        self.close()
        self._transport, self._protocol, self._loop = transport, protocol, loop
        return protocol, transport

    def _usable_socket(self, loop: asyncio.AbstractEventLoop) -> bool:
        """True when the current socket belongs to ``loop`` and is still open."""
        return (
            self._transport is not None and self._loop is loop and not self._transport.is_closing()
        )

    @staticmethod
    def _new_cookie(protocol: _NgProtocol) -> bytes:
        """A random cookie not used by any request in flight on this socket."""
        while True:
            cookie = secrets.token_hex(8).encode("ascii")
            if cookie not in protocol.pending:
                return cookie


# --------------------------------------------------------------------------- helpers


def build_message(command: str, params: Mapping[str, object]) -> dict[str, object]:
    """The ng dictionary for ``command``: dashed keys, ``None`` dropped, bools to ``flags``."""
    message: dict[str, object] = {"command": command}
    flags: list[object] = []
    for name, value in params.items():
        key = name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(key)
        elif key == "flags":
            flags.extend(_as_flag_list(value))
        else:
            message[key] = value
    if flags:
        message["flags"] = flags
    return message


def _as_flag_list(value: object) -> list[object]:
    """``flags`` may be given as one string or a list/tuple of strings."""
    if isinstance(value, str | bytes):
        return [value]
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"flags must be a string or a list of strings, got {type(value).__name__}")


def _protocol_error(reason: str, message: str, command: str) -> RtpEngineProtocolError:
    """A reply that is not a valid ng reply, counted by ``reason`` for /metrics."""
    metrics.REJECTED_INPUT.labels("rtpengine", reason).inc()
    return RtpEngineProtocolError(message, command=command)


def _is_refused(exc: OSError) -> bool:
    """ICMP port unreachable shows up as ECONNREFUSED on a connected UDP socket."""
    return isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED


def _text_key(key: bytes) -> str:
    """Dictionary keys as text; undecodable bytes are escaped, never an error."""
    return key.decode("utf-8", errors="backslashreplace")


def _textify(value: BValue) -> object:
    """Recursively turn UTF-8 byte strings into ``str``; binary stays ``bytes``."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, list):
        return [_textify(item) for item in value]
    if isinstance(value, dict):
        return {_text_key(key): _textify(item) for key, item in value.items()}
    return value
