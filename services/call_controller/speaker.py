"""What the caller hears, in order: agent audio over RTP, or Asterisk speaking text.

One queue per call. Barge-in empties it and cuts the piece playing now, so a
caller who interrupts is never talked over.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from vagent.services import metrics
from vagent.services.audio import Audio
from vagent.services.call_controller.ari import AriClient
from vagent.services.call_controller.rtp import RtpEndpoint

log = logging.getLogger("vagent.speaker")

CHARACTERS_S_PER_CHAR = 0.25  # SayAlpha spells: roughly this long per character


@dataclass(frozen=True)
class Piece:
    turn_id: str
    audio: Audio | None = None  # agent audio, played over RTP
    text: str = ""  # spoken by Asterisk (characters:) when there is no audio


class Speaker:
    def __init__(self, endpoint: RtpEndpoint, ari: AriClient, channel_id: str) -> None:
        self.endpoint = endpoint
        self.ari = ari
        self.channel_id = channel_id
        self._queue: asyncio.Queue[Piece] = asyncio.Queue()
        self._current: asyncio.Task[None] | None = None
        self._playback_id: str | None = None

    @property
    def busy(self) -> bool:
        return self._current is not None or not self._queue.empty()

    def say(self, piece: Piece) -> None:
        self._queue.put_nowait(piece)

    async def run(self) -> None:
        while True:
            piece = await self._queue.get()
            self._current = asyncio.create_task(self._play(piece))
            try:
                await self._current
            except asyncio.CancelledError:
                # A barge-in cancels only the piece; a hangup cancels this loop too.
                this = asyncio.current_task()
                if this is not None and this.cancelling():
                    raise
            finally:
                self._current = None

    async def _play(self, piece: Piece) -> None:
        if piece.audio is not None:
            await self.endpoint.play(piece.audio)
            return
        metrics.CALL_EVENTS.labels("characters").inc()
        self._playback_id = f"vagent-{uuid.uuid4().hex[:12]}"
        try:
            await self.ari.play(self.channel_id, f"characters:{piece.text}", self._playback_id)
            await asyncio.sleep(len(piece.text) * CHARACTERS_S_PER_CHAR)
        finally:
            self._playback_id = None

    async def interrupt(self) -> None:
        """Barge-in: drop what is queued and cut what is playing."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self.endpoint.stop_playing()
        if self._current is not None:
            self._current.cancel()
        if self._playback_id is not None:
            try:
                await self.ari.stop_playback(self._playback_id)
            except Exception as exc:  # already finished: nothing to stop
                log.debug("stopping playback: %s", exc)
