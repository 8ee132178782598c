"""What Asterisk makes of the RTP an app sends to an ExternalMedia channel.

Every datagram is logged with its arrival time and the verdict Asterisk
would reach, in Asterisk's order: is it RTP at all, does strict RTP accept
its source (strict_rtp.py), is its payload type mapped for receive
(payloads.py). Only accepted audio becomes part of what the channel
"heard", decoded to 8 kHz in order of arrival, so a test can listen to
exactly what a caller would have got, and read why anything else vanished.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from .payloads import RECEIVE_DECODERS, Samples, receive_refusal
from .rtp_wire import RtpParseError, parse_rtp
from .strict_rtp import Address, StrictRtp

#: Ten minutes of 20 ms packets per channel.
KEEP_RECORDS = 30_000


@dataclass(frozen=True)
class PacketRecord:
    """One datagram that reached the channel's UNICASTRTP port.

    ``time`` is ``time.time()`` (the journal's clock, so packets line up with
    events and requests); header fields are None when it was not RTP.
    """

    time: float
    source: Address
    size: int
    payload_type: int | None
    sequence: int | None
    timestamp: int | None
    ssrc: int | None
    marker: bool
    payload_size: int
    accepted: bool
    reason: str = ""


class RtpRecorder:
    """Judges, logs and decodes the inbound packets of one channel."""

    def __init__(self, strict: StrictRtp) -> None:
        self.strict = strict
        self.log: deque[PacketRecord] = deque(maxlen=KEEP_RECORDS)
        self._chunks: list[Samples] = []

    def receive(self, data: bytes, source: Address) -> Samples | None:
        """Record one datagram; the decoded 8 kHz samples if Asterisk would play it."""
        now = time.time()
        try:
            header, payload = parse_rtp(data)
        except RtpParseError as exc:
            record = PacketRecord(
                now, source, len(data), None, None, None, None, False, 0, False, str(exc)
            )
            self.log.append(record)
            return None
        verdict = self.strict.check(source, header.sequence, time.monotonic())
        reason = verdict.reason if not verdict.accepted else receive_refusal(header.payload_type)
        samples = None if reason else RECEIVE_DECODERS[header.payload_type](payload)
        self.log.append(
            PacketRecord(
                time=now,
                source=source,
                size=len(data),
                payload_type=header.payload_type,
                sequence=header.sequence,
                timestamp=header.timestamp,
                ssrc=header.ssrc,
                marker=header.marker,
                payload_size=len(payload),
                accepted=samples is not None,
                reason=reason or "",
            )
        )
        if samples is not None:
            self._chunks.append(samples)
        return samples

    def heard(self) -> Samples:
        """Accepted audio, 8 kHz, in order of arrival (gaps are not filled)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks)
