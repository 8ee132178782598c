"""Media mode "rtpengine": anchor a call's ExternalMedia RTP in rtpengine.

Without anchoring, Asterisk's ExternalMedia channel and the controller's
:class:`~vagent.services.call_controller.rtp.RtpEndpoint` talk RTP directly.
With it, rtpengine sits in the middle and relays plain RTP between two legs::

    Asterisk  <--- leg "asterisk" --->  rtpengine  <--- leg "app" --->  controller socket
    UNICASTRTP_LOCAL_ADDRESS:PORT   A-port      B-port   RtpEndpoint.local_address

rtpengine owns two local ports per call, one facing each side:

* **A-port, faces Asterisk.** :meth:`RtpEngineAnchor.open` returns it (in
  :attr:`AnchoredMedia.asterisk_facing`). It is what the controller gives
  Asterisk as ExternalMedia ``external_host`` (:attr:`AnchoredMedia.external_host`),
  so Asterisk sends the caller's audio there. rtpengine also sends the agent
  audio to Asterisk *from* this port, which is exactly what Asterisk's strict
  RTP accepts at once (it never follows sources, see ari-samples/rtp-notes.md).
* **B-port, faces the controller.** :meth:`RtpEngineAnchor.connect` returns it
  (:attr:`AnchoredMedia.app_facing`). The controller passes it to
  :meth:`RtpEndpoint.set_remote`, and receives the caller's audio from it.

The order follows ExternalMedia: the controller must know ``external_host``
before it creates the channel, and learns Asterisk's address
(``UNICASTRTP_LOCAL_ADDRESS``/``_PORT``) only from the channel it gets back.
So the ng ``offer`` describes the controller's socket and yields the A-port,
and the ng ``answer`` describes Asterisk's socket and yields the B-port::

    anchor = RtpEngineAnchor(client)
    endpoint = await RtpEndpoint.open("127.0.0.1")
    media = await anchor.open(channel_id, endpoint.local_address)
    # POST /channels/externalMedia?external_host={media.external_host}&format=ulaw
    ast = (vars["UNICASTRTP_LOCAL_ADDRESS"], int(vars["UNICASTRTP_LOCAL_PORT"]))
    endpoint.set_remote(*await anchor.connect(media, ast))
    ...
    await anchor.close(media)  # on hangup; idempotent

The channel must be created with ``format=ulaw``: both legs are declared as
PCMU/8000 (PT 0) and rtpengine relays without transcoding.

Failures: every rtpengine problem surfaces as :class:`MediaAnchorError`. The
controller then falls back to direct ExternalMedia RTP for that call (the
caller still gets audio, only without the anchor), and the controller's
/health degrades through its ``rtpengine:ping`` check. When :meth:`open`
fails nothing exists yet: create the ExternalMedia channel with the
endpoint's own address. When :meth:`connect` fails, the channel already
points at rtpengine: :meth:`close` the media, hang that channel up and create
a direct one. ``MediaAnchorError`` is
a :class:`~vagent.services.resilience.DependencyError`, so the shared breaker
counts unreachable-daemon failures (transient) but not requests rtpengine
answered and refused (rejected).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Final

from vagent.services.resilience import DependencyError, ErrorKind
from vagent.services.rtpengine import RtpEngineClient, RtpEngineError

__all__ = [
    "ANCHOR_FLAGS",
    "AnchoredMedia",
    "MediaAnchorError",
    "RtpEngineAnchor",
]

log = logging.getLogger("vagent.anchor")

#: ng tags of the two legs. Tags only have to be unique inside one call-id.
APP_TAG: Final = "vagent-app"
ASTERISK_TAG: Final = "vagent-asterisk"

#: The ng options sent with both ``offer`` and ``answer``. Each matters:
#:
#: ``trust-address``
#:     Use the address in the SDP, not the source of the ng request. That is
#:     rtpengine's default, unless the daemon runs with ``--sip-source``; the
#:     ng request always comes from the controller, so with sip-source the
#:     Asterisk leg would point at the controller instead of Asterisk.
#: ``endpoint-learning-off``
#:     Both peers send from the very socket the SDP names (Asterisk from
#:     UNICASTRTP_LOCAL_PORT, the controller from its endpoint) and no NAT sits
#:     between them and rtpengine, so there is nothing to learn. With learning
#:     on (the default "delayed"), the first packets to reach the A-port
#:     *redirect* that leg, and Asterisk sends nothing until it is bridged:
#:     a stray or hostile packet arriving first would receive the agent audio
#:     (RTP bleed). Measured on 10.5: with the defaults it does exactly that.
#:     The flag form is used because 10.5 silently ignores the documented
#:     string form ``"endpoint-learning": "off"`` (it parses only a list).
#: ``strict-source``
#:     Drop packets whose source is not the SDP address, so nothing but
#:     Asterisk can inject audio towards the controller and nothing but the
#:     controller towards the caller.
#: ``SDES-off``, ``DTLS: off``, ``ICE: remove``, ``transport-protocol: RTP/AVP``
#:     Plain RTP both ways. Neither ExternalMedia nor RtpEndpoint speaks SRTP
#:     or ICE, and none of these waits for a handshake before media flows.
#: ``replace: origin, session-connection``
#:     The rewritten SDP names only rtpengine (its o= and session c=), so the
#:     address parsed from it is unambiguous.
#:
#: Deliberately absent: ``NAT-wait`` (would hold media towards a peer until it
#: has sent; Asterisk sends only once bridged, and the agent may speak first),
#: ``asymmetric`` (it claims the peers send from elsewhere, the opposite of
#: the truth here), ``media-handover`` (re-learns on any source: a hijack),
#: and any ``codec`` option (no transcoding, PCMU is relayed as is).
ANCHOR_FLAGS: Final[dict[str, object]] = {
    "flags": ["trust-address", "endpoint-learning-off", "strict-source", "SDES-off"],
    "replace": ["origin", "session-connection"],
    "ICE": "remove",
    "DTLS": "off",
    "transport-protocol": "RTP/AVP",
}

_PT_PCMU: Final = 0
_MEDIA_RE: Final = re.compile(r"^m=audio (\d+) (\S+)((?: \S+)*)\s*$")
_CONNECTION_RE: Final = re.compile(r"^c=IN (IP4|IP6) (\S+)\s*$")


class MediaAnchorError(DependencyError):
    """Anchoring a call in rtpengine failed; the caller falls back to direct RTP.

    ``kind`` is TRANSIENT when rtpengine could not be reached in time (a retry
    or the breaker may help) and REJECTED when it answered but the request or
    its reply was unusable (unknown call-id, no ports, an SDP we cannot use).
    ``command`` is the ng command that failed, ``call_id`` the call.
    """

    def __init__(
        self, message: str, *, call_id: str, command: str, kind: ErrorKind = ErrorKind.REJECTED
    ) -> None:
        super().__init__(message, kind)
        self.call_id = call_id
        self.command = command

    @property
    def transient(self) -> bool:
        """Whether trying again later may succeed (mirrors RtpEngineError.transient)."""
        return self.kind is ErrorKind.TRANSIENT

    @classmethod
    def wrap(cls, exc: RtpEngineError, *, call_id: str, command: str) -> MediaAnchorError:
        """Our error for the client's; ``raise ... from exc`` keeps the original as the cause."""
        kind = ErrorKind.TRANSIENT if exc.transient else ErrorKind.REJECTED
        return cls(
            f"rtpengine {command} for call {call_id!r} failed: {exc}",
            call_id=call_id,
            command=command,
            kind=kind,
        )


@dataclass(eq=False)
class AnchoredMedia:
    """One call's anchor in rtpengine: the ng identity and the addresses of both legs.

    Made by :meth:`RtpEngineAnchor.open`; ``app_facing`` and
    ``asterisk_address`` are filled by :meth:`RtpEngineAnchor.connect`.
    """

    call_id: str
    #: The controller's RTP socket, as offered to rtpengine.
    app_address: tuple[str, int]
    #: rtpengine's port for Asterisk: ExternalMedia ``external_host``.
    asterisk_facing: tuple[str, int]
    #: Asterisk's UNICASTRTP_LOCAL_ADDRESS/PORT, once connected.
    asterisk_address: tuple[str, int] | None = None
    #: rtpengine's port for the controller: ``RtpEndpoint.set_remote``, once connected.
    app_facing: tuple[str, int] | None = None
    #: True once rtpengine confirmed the call is gone.
    closed: bool = False

    @property
    def external_host(self) -> str:
        """``host:port`` for ``POST /channels/externalMedia?external_host=`` (IPv6 bracketed)."""
        return format_host_port(self.asterisk_facing)

    @property
    def connected(self) -> bool:
        return self.app_facing is not None


class RtpEngineAnchor:
    """Sets up and tears down rtpengine anchors for calls; one per controller.

    Holds no per-call state (that is :class:`AnchoredMedia`), so any number
    of calls may use it at once. Timeouts come from the client (``timeout_s``
    bounds each ng request, resends included); wrap a call in
    ``asyncio.timeout`` for a tighter turn budget.
    """

    def __init__(self, client: RtpEngineClient) -> None:
        self.client = client
        self._cleanups: set[asyncio.Task[None]] = set()

    async def open(self, call_id: str, app_address: tuple[str, int]) -> AnchoredMedia:
        """ng ``offer`` for the controller's socket; returns the A-port for Asterisk.

        Safe to call again with the same ``call_id`` (e.g. after a timeout
        whose offer did arrive): rtpengine keeps the ports it allocated.
        Raises :class:`MediaAnchorError`, or ValueError for an address that
        cannot be put in an SDP (not an IP literal, wildcard, bad port).
        """
        sdp = build_sdp(app_address)
        try:
            reply = await self.client.offer(call_id, APP_TAG, sdp, **ANCHOR_FLAGS)
        except RtpEngineError as exc:
            raise MediaAnchorError.wrap(exc, call_id=call_id, command="offer") from exc
        except asyncio.CancelledError:
            # The offer may have reached rtpengine: do not leave its ports
            # allocated until rtpengine's own timeout reclaims them.
            self._delete_in_background(call_id)
            raise
        try:
            facing, _ = parse_sdp_audio(reply["sdp"])
        except ValueError as exc:
            await self._delete_quietly(call_id)
            raise MediaAnchorError(
                f"rtpengine offer for call {call_id!r} returned an unusable SDP: {exc}",
                call_id=call_id,
                command="offer",
            ) from exc
        log.info(
            "anchored call %s in rtpengine: asterisk -> %s, app at %s",
            call_id,
            format_host_port(facing),
            format_host_port(app_address),
        )
        return AnchoredMedia(call_id, app_address, facing)

    async def connect(
        self, media: AnchoredMedia, asterisk_address: tuple[str, int]
    ) -> tuple[str, int]:
        """ng ``answer`` for Asterisk's socket; returns the B-port the controller sends to.

        ``asterisk_address`` is the ExternalMedia channel's
        (UNICASTRTP_LOCAL_ADDRESS, int(UNICASTRTP_LOCAL_PORT)). Calling it
        again (same or new Asterisk address) re-answers and keeps the ports.
        On :class:`MediaAnchorError` the caller should :meth:`close` the media
        before falling back. The returned address has the family of the
        controller's socket, or this raises: ``set_remote`` could not use it.
        """
        if media.closed:
            raise MediaAnchorError(
                f"call {media.call_id!r} was already released from rtpengine",
                call_id=media.call_id,
                command="answer",
            )
        sdp = build_sdp(asterisk_address)
        family = "IP6" if _ip(media.app_address[0]).version == 6 else "IP4"
        try:
            # address-family: the SDP that comes back is for the controller,
            # so ask for the family of the controller's socket.
            reply = await self.client.answer(
                media.call_id, APP_TAG, ASTERISK_TAG, sdp, address_family=family, **ANCHOR_FLAGS
            )
        except RtpEngineError as exc:
            raise MediaAnchorError.wrap(exc, call_id=media.call_id, command="answer") from exc
        try:
            facing, _ = parse_sdp_audio(reply["sdp"])
            if _ip(facing[0]).version != _ip(media.app_address[0]).version:
                raise ValueError(
                    f"rtpengine offers {facing[0]} to a controller socket on "
                    f"{media.app_address[0]}; it has no interface of that address family"
                )
        except ValueError as exc:
            raise MediaAnchorError(
                f"rtpengine answer for call {media.call_id!r} is unusable: {exc}",
                call_id=media.call_id,
                command="answer",
            ) from exc
        media.asterisk_address = (asterisk_address[0], asterisk_address[1])
        media.app_facing = facing
        log.info(
            "connected call %s through rtpengine: app -> %s, asterisk at %s",
            media.call_id,
            format_host_port(facing),
            format_host_port(asterisk_address),
        )
        return facing

    async def close(self, media: AnchoredMedia) -> bool:
        """ng ``delete`` of the call; idempotent, and never raises an rtpengine error.

        Returns True once rtpengine confirmed the call is gone (also when it
        was gone already), False when rtpengine could not be reached: then
        the failure is logged, a later close() tries again, and rtpengine's
        own no-media timeout frees the ports anyway (both sides stop sending
        at hangup). ``delete-delay: 0`` frees the ports at once instead of
        after the daemon's default 30 s, since nothing re-signals this call.
        """
        if media.closed:
            return True
        try:
            await self.client.delete(media.call_id, APP_TAG, missing_ok=True, delete_delay=0)
        except RtpEngineError as exc:
            log.warning(
                "could not release call %s from rtpengine (its timeout will): %s",
                media.call_id,
                exc,
            )
            return False
        media.closed = True
        log.debug("released call %s from rtpengine", media.call_id)
        return True

    async def wait_cleanups(self) -> None:
        """Wait for background deletes started by cancelled :meth:`open` calls."""
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)

    # ------------------------------------------------------------------ internals

    async def _delete_quietly(self, call_id: str) -> None:
        """Best-effort delete after a failed open; its own failure only gets logged."""
        try:
            await self.client.delete(call_id, APP_TAG, missing_ok=True, delete_delay=0)
        except RtpEngineError as exc:
            log.warning("could not release call %s from rtpengine: %s", call_id, exc)

    def _delete_in_background(self, call_id: str) -> None:
        """Start a delete that outlives the cancelled caller; keep a reference to it."""
        task = asyncio.get_running_loop().create_task(self._delete_quietly(call_id))
        self._cleanups.add(task)  # the loop holds tasks only weakly
        task.add_done_callback(self._cleanups.discard)


# --------------------------------------------------------------------------- SDP


def build_sdp(address: tuple[str, int]) -> str:
    """A one-stream SDP: ``address`` receives and sends PCMU/8000, 20 ms, sendrecv.

    Both legs are described this way; rtpengine relays between them as is.
    """
    host, port = address
    ip = _ip(host)
    if ip.is_unspecified:
        raise ValueError(f"{host} is a wildcard address; bind the RTP socket to a real one")
    if not 0 < port < 65536:
        raise ValueError(f"RTP port {port} out of range 1-65535")
    family = "IP6" if ip.version == 6 else "IP4"
    session = secrets.randbelow(2**31)
    return (
        "v=0\r\n"
        f"o=vagent {session} 1 IN {family} {ip}\r\n"
        "s=vagent\r\n"
        f"c=IN {family} {ip}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP {_PT_PCMU}\r\n"
        f"a=rtpmap:{_PT_PCMU} PCMU/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def parse_sdp_audio(sdp: object) -> tuple[tuple[str, int], list[int]]:
    """((address, port), payload types) of the first audio stream of an SDP.

    The media-level c= wins over the session-level one (RFC 4566 5.7).
    ValueError when there is no usable stream: no m=audio, port 0 (rejected),
    no c= address, or PCMU not among the payload types.
    """
    if not isinstance(sdp, str):
        raise ValueError(f"SDP is a {type(sdp).__name__}, not text")
    session_addr: str | None = None
    media_addr: str | None = None
    port: int | None = None
    formats: list[int] = []
    section = "session"  # "session", "audio" (the first audio stream) or "other"
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if section == "audio":
                break  # only the first audio stream matters
            match = _MEDIA_RE.match(line)
            section = "audio" if match and port is None else "other"
            if match:
                port = int(match.group(1))
                formats = [int(f) for f in match.group(3).split() if f.isdigit()]
            continue
        connection = _CONNECTION_RE.match(line)
        if connection and section == "session":
            session_addr = connection.group(2)
        elif connection and section == "audio":
            media_addr = connection.group(2)
    if port is None:
        raise ValueError("no m=audio line")
    if port == 0:
        raise ValueError("the audio stream was rejected (port 0)")
    address = media_addr or session_addr
    if address is None:
        raise ValueError("no c= address for the audio stream")
    ip = _ip(address.split("/", 1)[0])  # IPv4 multicast may carry /ttl
    if ip.is_unspecified:
        raise ValueError(f"audio address {ip} is a wildcard (on hold)")
    if _PT_PCMU not in formats:
        raise ValueError(f"PCMU (PT 0) missing from the audio formats {formats}")
    return (str(ip), port), formats


def format_host_port(address: tuple[str, int]) -> str:
    """``host:port``, with IPv6 in brackets as ExternalMedia's external_host expects."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP literal; SDP and RtpEndpoint.set_remote both need one, not a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
