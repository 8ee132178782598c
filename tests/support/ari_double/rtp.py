"""The UDP side of an ExternalMedia RTP channel: a real socket that receives.

Real Asterisk listens on UNICASTRTP_LOCAL_ADDRESS:PORT as soon as the
channel exists. An application that sends its audio there over a connected
UDP socket would get ``ConnectionRefusedError`` (ICMP port unreachable) if
nothing listened, so the double binds the advertised port for real and keeps
what arrives for tests to inspect. The media layer (rtp_stream.py) listens
to the same socket and sends from it: Asterisk's packets come *from*
UNICASTRTP_LOCAL_ADDRESS:PORT.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: One minute of 20 ms packets.
KEEP_PACKETS = 3000


@dataclass
class ReceivedPacket:
    time: float
    source: tuple[str, int]
    data: bytes

    @property
    def payload_type(self) -> int | None:
        return self.data[1] & 0x7F if len(self.data) >= 12 else None


@dataclass
class RtpSink(asyncio.DatagramProtocol):
    """Keeps the datagrams sent to one channel's RTP port."""

    sock: socket.socket
    packets: deque[ReceivedPacket] = field(default_factory=lambda: deque(maxlen=KEEP_PACKETS))
    total: int = 0
    transport: asyncio.BaseTransport | None = None
    closed: bool = False
    #: Called with every datagram after it is kept (the media layer's receive path).
    listener: Callable[[bytes, tuple[str, int]], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.closed:
            transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.total += 1
        source = (str(addr[0]), int(addr[1]))
        self.packets.append(ReceivedPacket(time.time(), source, data))
        if self.listener is not None:
            self.listener(data, source)

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable from an app that stopped listening: Asterisk shrugs."""

    def send(self, data: bytes, destination: tuple[str, int]) -> bool:
        """Send from the channel's own port; False if the socket is gone or refused."""
        if self.closed:
            return False
        try:
            if isinstance(self.transport, asyncio.DatagramTransport):
                self.transport.sendto(data, destination)
            else:  # the endpoint task has not run yet
                self.sock.sendto(data, destination)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()


def bind_rtp_socket(address: str, candidates: list[int]) -> tuple[int, socket.socket] | None:
    """Bind the first free port of ``candidates`` (others may use the range too)."""
    for port in candidates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        return port, sock
    return None


def start_sink(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> RtpSink:
    """Serve ``sock`` on the loop; packets that arrive meanwhile wait in the kernel."""
    sink = RtpSink(sock)
    loop.create_task(loop.create_datagram_endpoint(lambda: sink, sock=sock))
    return sink
