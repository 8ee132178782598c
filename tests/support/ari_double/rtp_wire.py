"""RTP (RFC 3550) headers on the wire: build what Asterisk sends, parse what apps send.

The double writes exactly the header Asterisk 22.10.1 writes for an
ExternalMedia channel (V=2, no padding, no extension, CC=0, rtp-notes.md
section 1) and parses whatever an application sends back, including CSRC
lists, header extensions and padding, so that a malformed packet is
*dropped with a reason* instead of being decoded as garbage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size  # 12
RTP_VERSION = 2


class RtpParseError(ValueError):
    """A datagram that is not a well-formed RTP packet; the message says why."""


@dataclass(frozen=True)
class RtpHeader:
    """The fixed RTP header fields an ExternalMedia peer cares about."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    version: int = RTP_VERSION
    padding: bool = False
    extension: bool = False
    csrc_count: int = 0


def pack_rtp(header: RtpHeader, payload: bytes) -> bytes:
    """Serialise a packet the way Asterisk does (no CSRC, extension or padding)."""
    first = (header.version << 6) | (header.padding << 5) | (header.extension << 4)
    first |= header.csrc_count & 0x0F
    second = (header.marker << 7) | (header.payload_type & 0x7F)
    fixed = HEADER.pack(
        first,
        second,
        header.sequence & 0xFFFF,
        header.timestamp & 0xFFFFFFFF,
        header.ssrc & 0xFFFFFFFF,
    )
    return fixed + payload


def parse_rtp(data: bytes) -> tuple[RtpHeader, bytes]:
    """Split a datagram into header and payload, or raise :class:`RtpParseError`."""
    if len(data) < HEADER_SIZE:
        raise RtpParseError(f"{len(data)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    version = first >> 6
    if version != RTP_VERSION:
        raise RtpParseError(f"RTP version {version}, not 2")
    header = RtpHeader(
        payload_type=second & 0x7F,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        marker=bool(second & 0x80),
        version=version,
        padding=bool(first & 0x20),
        extension=bool(first & 0x10),
        csrc_count=first & 0x0F,
    )
    start = HEADER_SIZE + 4 * header.csrc_count
    if header.extension:
        if len(data) < start + 4:
            raise RtpParseError("truncated header extension")
        words = struct.unpack_from("!H", data, start + 2)[0]
        start += 4 + 4 * words
    end = len(data)
    if header.padding:
        end -= data[-1] if data else 0
    if start > end:
        raise RtpParseError("header, CSRCs, extension and padding exceed the datagram")
    return header, data[start:end]
