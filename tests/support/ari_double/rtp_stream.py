"""One ExternalMedia RTP channel's media: the stream it sends and what it receives.

The outbound stream copies the measured header rules of Asterisk 22.10.1
(rtp-notes.md section 1), because an app's jitter buffer, VAD and decoder
depend on them:

* random initial sequence number, +1 per packet; random SSRC, constant for
  the life of the channel (also across partner changes);
* first timestamp = one frame of samples (160, or 320 for slin16), then
  +samples per packet; no marker on the very first packet;
* when the stream resumes after a pause (partner left, then a new one came),
  the first packet has the marker bit and a timestamp jump of about the
  wall-clock gap;
* every packet goes to ``external_host`` from UNICASTRTP_LOCAL_ADDRESS:PORT,
  never to where the app's packets come from (no symmetric RTP).
"""

from __future__ import annotations

import random
import socket
import time
from collections import deque
from dataclasses import dataclass

from .payloads import SEND_FORMATS, Samples, SendFormat
from .recorder import KEEP_RECORDS, RtpRecorder
from .rtp import RtpSink
from .rtp_wire import RtpHeader, pack_rtp
from .strict_rtp import Address, StrictRtp


@dataclass(frozen=True)
class SentPacket:
    """One packet the double sent to the app (``time`` is ``time.time()``)."""

    time: float
    destination: Address
    size: int
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool


class RtpSender:
    """Sequence, timestamp and SSRC bookkeeping for one outbound stream."""

    def __init__(self, send_format: SendFormat, rng: random.Random, time_scale: float) -> None:
        self.format = send_format
        self.ssrc = rng.getrandbits(32)
        self._sequence = rng.getrandbits(16)
        self._timestamp = 0
        self._time_scale = time_scale
        self._started = False
        self._paused_at: float | None = None

    def pause(self, now: float) -> None:
        """No frames are coming any more; the next packet marks the discontinuity."""
        if self._started and self._paused_at is None:
            self._paused_at = now

    def next_packet(self, samples: Samples, now: float) -> tuple[RtpHeader, bytes]:
        """Header and datagram for the next 20 ms of ``samples`` (``now``: monotonic)."""
        step = self.format.samples_per_frame
        marker = False
        if not self._started:
            self._started, self._timestamp = True, step
        elif self._paused_at is not None:
            gap = (now - self._paused_at) / self._time_scale
            marker = True
            self._timestamp += step + round(gap * self.format.rate)
        else:
            self._timestamp += step
        self._paused_at = None
        header = RtpHeader(
            payload_type=self.format.payload_type,
            sequence=self._sequence,
            timestamp=self._timestamp & 0xFFFFFFFF,
            ssrc=self.ssrc,
            marker=marker,
        )
        self._sequence = (self._sequence + 1) & 0xFFFF
        return header, pack_rtp(header, self.format.encode(samples))


class ExternalRtpStream:
    """The media side of one UnicastRTP channel: its socket, sender and recorder.

    It outlives the channel (the socket closes, the logs stay) so that a test
    can inspect the media after the call ended.
    """

    def __init__(
        self,
        channel_id: str,
        format_name: str,
        destination: Address | None,
        sink: RtpSink,
        strict: StrictRtp,
        *,
        time_scale: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.format_name = format_name
        self.destination = destination
        self.sink = sink
        self.recorder = RtpRecorder(strict)
        send_format = SEND_FORMATS.get(format_name)
        self.sender = (
            RtpSender(send_format, rng or random.Random(), time_scale)
            if send_format is not None
            else None
        )
        self.sent: deque[SentPacket] = deque(maxlen=KEEP_RECORDS)

    @property
    def can_send(self) -> bool:
        """Formats the double cannot encode (gsm, opus, ...) stay silent toward the app."""
        return self.sender is not None and self.destination is not None and not self.sink.closed

    @property
    def rate(self) -> int:
        return self.sender.format.rate if self.sender is not None else 8000

    def send(self, samples: Samples, now: float) -> None:
        """Send 20 ms of bridge audio to ``external_host``."""
        if self.sender is None or self.destination is None or self.sink.closed:
            return
        header, datagram = self.sender.next_packet(samples, now)
        self.sink.send(datagram, self.destination)
        self.sent.append(
            SentPacket(
                time=time.time(),
                destination=self.destination,
                size=len(datagram),
                payload_type=header.payload_type,
                sequence=header.sequence,
                timestamp=header.timestamp,
                ssrc=header.ssrc,
                marker=header.marker,
            )
        )

    def pause(self, now: float) -> None:
        if self.sender is not None:
            self.sender.pause(now)


def resolve_external_host(external_host: str) -> Address | None:
    """``host:port`` to an IPv4 address the channel's socket can send to.

    IPv6 hosts (``[::1]:port``) are not supported by the double's IPv4 RTP
    sockets; such a channel receives but never sends.
    """
    if external_host.startswith("["):
        return None
    host, _, port_text = external_host.rpartition(":")
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except (ValueError, OSError):
        return None
    address = infos[0][4]
    return (str(address[0]), int(address[1]))
