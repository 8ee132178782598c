"""One boot of the simulated Asterisk: all live state, owned by the server loop.

Everything here is touched only from the event loop of the server thread
(REST handlers, websocket tasks, playback timers, and control calls marshalled
onto the loop), so no locks are needed. A restart throws the whole object away
and builds a new one, which is exactly what a real restart does to channels,
bridges, playbacks and the uniqueid counter.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .apps import AppRegistry
from .bridge_media import BridgeMedia
from .clock import IdFactory, ari_timestamp
from .config import DoubleConfig
from .journal import Journal
from .media import PlaybackEngine
from .models import Bridge, Channel, Playback
from .rtp import RtpSink
from .swagger import SwaggerSpec


class PortAllocator:
    """Even RTP ports from rtp.conf's range, handed out round-robin like Asterisk."""

    def __init__(self, low: int, high: int) -> None:
        self._ports = list(range(low + (low % 2), high + 1, 2))
        self._next = 0
        self._in_use: set[int] = set()

    def candidates(self) -> list[int]:
        """Free ports, starting after the last one handed out."""
        rotated = self._ports[self._next :] + self._ports[: self._next]
        return [port for port in rotated if port not in self._in_use]

    def claim(self, port: int) -> None:
        self._in_use.add(port)
        self._next = (self._ports.index(port) + 1) % len(self._ports)

    def release(self, port: int) -> None:
        self._in_use.discard(port)


class Engine:
    """The state of one Asterisk boot."""

    def __init__(
        self,
        config: DoubleConfig,
        journal: Journal,
        spec: SwaggerSpec,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self.journal = journal
        self.spec = spec
        self.loop = loop
        self.boot_time = time.time()
        self.startup_time = ari_timestamp(self.boot_time)
        self.ids = IdFactory(config.system_name)
        self.apps = AppRegistry(config.entity_id, journal)
        self.channels: dict[str, Channel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.playbacks: dict[str, Playback] = {}
        self.rtp_ports = PortAllocator(*config.rtp_port_range)
        #: ExternalMedia channel id -> its receiving socket (kept after hangup).
        self.rtp_sinks: dict[str, RtpSink] = {}
        self.closed = False
        self.media = PlaybackEngine(self)
        #: Callers, ExternalMedia RTP streams and the 20 ms bridge clocks.
        self.bridge_media = BridgeMedia(self)

    # --- emitting -----------------------------------------------------------------

    def emit_channel(self, event: dict[str, Any], channel: Channel) -> None:
        """A channel event for every app subscribed to the channel."""
        self.apps.emit(event, self.apps.subscribers("channel", channel.id))

    def emit_stasis(self, event: dict[str, Any], app: str) -> None:
        """StasisStart/StasisEnd go to the Stasis app only."""
        self.apps.emit(event, [app])

    def emit_bridge(self, event: dict[str, Any], bridge: Bridge, channel: Channel | None) -> None:
        """Bridge events reach subscribers of the bridge and of the channel."""
        names = self.apps.subscribers("bridge", bridge.id)
        if channel is not None:
            names += self.apps.subscribers("channel", channel.id)
        self.apps.emit(event, names)

    def emit_target(self, event: dict[str, Any], target_kind: str, target_id: str) -> None:
        """Playback events reach subscribers of the playback's target."""
        self.apps.emit(event, self.apps.subscribers(target_kind, target_id))

    # --- lookups --------------------------------------------------------------------

    def stasis_channel(self, channel_id: str) -> Channel | None:
        channel = self.channels.get(channel_id)
        return channel if channel is not None and channel.stasis_app is not None else None

    def snapshot(self) -> dict[str, Any]:
        """Everything live, for tests and the control API."""
        return {
            "startup_time": self.startup_time,
            "channels": [c.to_json() for c in self.channels.values()],
            "bridges": [b.to_json() for b in self.bridges.values()],
            "playbacks": [p.to_json() for p in self.playbacks.values()],
            "applications": [a.to_json() for a in self.apps.apps.values()],
        }
