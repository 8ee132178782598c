"""Audio through mixing bridges: callers to ExternalMedia channels and back.

What Asterisk does, as measured (rtp-notes.md section 1), and what this
reproduces:

* an ExternalMedia channel sends nothing while it is not bridged, nor while
  it is alone in its bridge: packets flow only when a partner delivers frames;
* a caller delivers a frame every 20 ms once answered (silence included,
  which goes out as real packets, ulaw all 0xff), so the first packet leaves
  about 20 ms after the pair is bridged;
* when the caller hangs up or leaves, packets stop at once;
* with several callers the channel gets their mix (softmix);
* audio an app sends into the ExternalMedia channel reaches the callers in
  the bridge as it arrives (that is what the caller "hears").

One asyncio task per bridge ticks every 20 ms on the loop's monotonic clock
against an absolute schedule, so pacing does not drift; a task exists only
while its bridge holds both a caller and an ExternalMedia channel. Audio
between two ExternalMedia channels is not relayed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from .caller import CallerFrame, SimulatedCaller
from .payloads import FRAME_SECONDS, Samples, as_samples
from .rtp_stream import ExternalRtpStream

if TYPE_CHECKING:
    from .engine import Engine
    from .models import Bridge

log = logging.getLogger(__name__)

#: Falling further behind than this (a paused debugger) restarts the schedule
#: instead of bursting packets to catch up.
MAX_LAG_FRAMES = 10


class BridgeMedia:
    """The per-boot media plane: callers, RTP streams and bridge tickers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Inbound channel id -> its simulated caller (kept after hangup).
        self.callers: dict[str, SimulatedCaller] = {}
        #: ExternalMedia channel id -> its RTP stream (kept after hangup).
        self.streams: dict[str, ExternalRtpStream] = {}
        self._tickers: dict[str, asyncio.Task[None]] = {}

    @property
    def period(self) -> float:
        return FRAME_SECONDS * self.engine.config.rtp_time_scale

    # --- registration ----------------------------------------------------------------

    def add_caller(self, channel_id: str) -> SimulatedCaller:
        caller = SimulatedCaller(channel_id)
        self.callers[channel_id] = caller
        return caller

    def add_stream(self, stream: ExternalRtpStream) -> None:
        self.streams[stream.channel_id] = stream
        stream.sink.listener = lambda data, source: self._received(stream, data, source)

    def channel_gone(self, channel_id: str) -> None:
        """Hangup: the caller stops talking; logs of both kinds stay readable."""
        caller = self.callers.get(channel_id)
        if caller is not None:
            caller.hang_up()
        stream = self.streams.get(channel_id)
        if stream is not None:
            stream.pause(time.monotonic())

    # --- bridge membership -------------------------------------------------------------

    def refresh(self, bridge: Bridge) -> None:
        """Membership changed: start or stop the bridge's ticker at once."""
        task = self._tickers.get(bridge.id)
        wanted = bridge.id in self.engine.bridges and self._has_pair(bridge)
        if wanted and task is None:
            self._tickers[bridge.id] = self.engine.loop.create_task(self._run(bridge.id))
        elif not wanted and task is not None:
            task.cancel()
            del self._tickers[bridge.id]
        self._pause_unfed()

    def shutdown(self) -> None:
        for task in self._tickers.values():
            task.cancel()
        self._tickers.clear()

    def _has_pair(self, bridge: Bridge) -> bool:
        members = set(bridge.channels)
        return any(c in self.callers for c in members) and any(c in self.streams for c in members)

    def _pause_unfed(self) -> None:
        """Streams whose channel is no longer in a ticking bridge are paused."""
        now = time.monotonic()
        for channel_id, stream in self.streams.items():
            channel = self.engine.channels.get(channel_id)
            if channel is None or channel.bridge_id not in self._tickers:
                stream.pause(now)

    # --- the 20 ms clock -------------------------------------------------------------

    async def _run(self, bridge_id: str) -> None:
        loop = self.engine.loop
        start, count = loop.time(), 0
        try:
            while True:
                count += 1
                delay = start + count * self.period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -MAX_LAG_FRAMES * self.period:
                    start, count = loop.time(), 0
                self._tick(bridge_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("media ticker of bridge %s failed; its audio stops", bridge_id)

    def _tick(self, bridge_id: str) -> None:
        bridge = self.engine.bridges.get(bridge_id)
        if bridge is None:
            return
        frames: list[CallerFrame] = []
        streams: list[ExternalRtpStream] = []
        for member_id in bridge.channels:
            channel = self.engine.channels.get(member_id)
            caller = self.callers.get(member_id)
            if caller is not None and channel is not None and channel.state == "Up":
                frames.append(caller.next_frame(self.period))
            elif member_id in self.streams:
                streams.append(self.streams[member_id])
        now = time.monotonic()
        for stream in streams:
            if frames:
                stream.send(_mix(frames, stream.rate), now)
            else:
                stream.pause(now)

    # --- app -> bridge ------------------------------------------------------------------

    def _received(self, stream: ExternalRtpStream, data: bytes, source: tuple[str, int]) -> None:
        samples = stream.recorder.receive(data, source)
        if samples is None:
            return
        channel = self.engine.channels.get(stream.channel_id)
        bridge = self.engine.bridges.get(channel.bridge_id or "") if channel else None
        if bridge is None:
            return
        when = time.time()
        for member_id in bridge.channels:
            caller = self.callers.get(member_id)
            if caller is not None:
                caller.hear(samples, when)


def _mix(frames: list[CallerFrame], rate: int) -> Samples:
    if len(frames) == 1:
        return frames[0].samples(rate)
    total = np.sum([frame.samples(rate).astype(np.int32) for frame in frames], axis=0)
    return as_samples(total)
