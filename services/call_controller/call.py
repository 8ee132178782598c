"""One caller, from StasisStart to hangup.

    answer -> mixing bridge -> ExternalMedia RTP to our socket -> greeting
    caller audio -> endpointer -> utterance on `stt` ... replies on results:<call_id>
    -> speaker (RTP, or ARI characters:) ; caller speech while we talk -> barge-in

When the turn's budget passes with nothing to say, the caller hears the filler
prompt; when the bus is down or the turn dies, the ERROR_GENERIC prompt, and
the call goes back to the dialplan or hangs up as configured. A hangup at any
moment cancels every task of the call and frees the socket, the media channel
and the bridge; nothing later speaks into a dead call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from vagent.services import metrics
from vagent.services.audio import Audio, ulaw_decode, ulaw_encode
from vagent.services.bus import Bus, Envelope, decode, result_key
from vagent.services.call_controller.anchor import AnchoredMedia, MediaAnchorError, RtpEngineAnchor
from vagent.services.call_controller.ari import AriClient
from vagent.services.call_controller.rtp import RtpEndpoint
from vagent.services.call_controller.speaker import Piece, Speaker
from vagent.services.call_controller.vad import Endpointer, SpeechStarted, UtteranceEnded
from vagent.services.config import Settings
from vagent.services.logs import call_id_var
from vagent.services.redis_client import RedisStore
from vagent.services.tts_service.prompts import PromptCache
from vagent.services.turn import STT, TTS, turn_times

log = logging.getLogger("vagent.call")


@dataclass
class CallContext:
    """What every call shares."""

    settings: Settings
    ari: AriClient
    store: RedisStore
    bus: Bus
    prompts: PromptCache
    anchor: RtpEngineAnchor | None = None  # media mode rtpengine


@dataclass
class Turn:
    turn_id: str
    budget_at: float
    deadline: float
    started: float
    next_seq: int = 0
    count: int | None = None
    heard: bool = False

    @property
    def finished(self) -> bool:
        return self.count is not None and self.next_seq >= self.count


class Call:
    def __init__(self, ctx: CallContext, channel: dict[str, Any]) -> None:
        self.ctx = ctx
        self.channel_id = str(channel["id"])
        self.ringing = channel.get("state") != "Up"
        self.bridge_id = f"vagent-{self.channel_id}"
        self.media_id = f"{self.channel_id}-media"
        self.endpoint: RtpEndpoint | None = None
        self.anchored: AnchoredMedia | None = None
        self.turn: Turn | None = None
        self._pending: dict[int, Envelope] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.ended = asyncio.Event()

    async def run(self) -> None:
        """The whole call; returns when the caller hangs up (or is handed back).

        Raises what broke the call (an ARI request that failed during the
        set-up, say), once everything is released, unless the caller hung up:
        the controller then hands the caller back to the dialplan.
        """
        token = call_id_var.set(self.channel_id)
        metrics.ACTIVE_CALLS.inc()
        live = asyncio.create_task(self._live())
        ended = asyncio.create_task(self.ended.wait())
        try:
            # A hangup ends the call at any moment, during the set-up too.
            await asyncio.wait([live, ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _stop(live, ended)
            await self._release()
            metrics.ACTIVE_CALLS.dec()
            call_id_var.reset(token)
        error = live.exception() if live.done() and not live.cancelled() else None
        if error is not None and not self.ended.is_set():  # after a hangup: nobody to hand back
            raise error

    async def _live(self) -> None:
        speaker = await self._connect()
        tasks = [
            asyncio.create_task(speaker.run()),
            asyncio.create_task(self._listen(speaker)),
            asyncio.create_task(self._replies(speaker)),
        ]
        try:
            await self._greet(speaker)
            await asyncio.gather(*tasks)
        finally:
            await _stop(*tasks)

    def hangup(self) -> None:
        """The caller is gone (StasisEnd, hangup request): stop everything."""
        self.ended.set()

    async def _connect(self) -> Speaker:
        ari, settings = self.ctx.ari, self.ctx.settings
        if self.ringing:
            await ari.answer(self.channel_id)
        self.endpoint = await RtpEndpoint.open(settings.media_host, 0)
        await ari.create_bridge(self.bridge_id)
        self.endpoint.set_remote(*await self._media_channel())
        await ari.add_channels(self.bridge_id, self.channel_id, self.media_id)
        metrics.CALL_EVENTS.labels("started").inc()
        return Speaker(self.endpoint, ari, self.channel_id)

    async def _media_channel(self) -> tuple[str, int]:
        """The ExternalMedia channel; returns where our RTP must go.

        In media mode rtpengine the RTP is anchored through rtpengine; when
        that fails the call goes on with direct RTP (and /health shows why).
        """
        assert self.endpoint is not None
        local = self.endpoint.local_address
        anchor = self.ctx.anchor
        if anchor is not None:
            try:
                self.anchored = await anchor.open(self.channel_id, local)
                asterisk = await self._external_media(self.anchored.external_host)
                return await anchor.connect(self.anchored, asterisk)
            except MediaAnchorError as exc:
                metrics.CALL_EVENTS.labels("anchor_failed").inc()
                log.warning("rtpengine anchoring failed (%s): direct RTP for this call", exc)
                await self._drop_anchor()
        return await self._external_media(f"{local[0]}:{local[1]}")

    async def _external_media(self, external_host: str) -> tuple[str, int]:
        settings = self.ctx.settings
        media = await self.ctx.ari.external_media(
            settings.ari_app, self.media_id, external_host, settings.media_format
        )
        variables = media.get("channelvars", {})
        return variables["UNICASTRTP_LOCAL_ADDRESS"], int(variables["UNICASTRTP_LOCAL_PORT"])

    async def _drop_anchor(self) -> None:
        """Undo a half-made anchor: its rtpengine call, and a media channel pointing at it."""
        if self.anchored is None or self.ctx.anchor is None:
            return
        await self.ctx.anchor.close(self.anchored)
        self.anchored = None
        with contextlib.suppress(Exception):
            await self.ctx.ari.hangup(self.media_id)

    async def _greet(self, speaker: Speaker) -> None:
        turn = self._new_turn()
        body = {"type": "prompt", "seq": 0, "name": "GREETING", "trace": {}}
        end = {"type": "end", "count": 1, "trace": {}}
        try:
            await self._publish(TTS, turn, f"{turn.turn_id}:tts:0", body)
            await self._publish(TTS, turn, f"{turn.turn_id}:tts:end", end)
        except Exception as exc:
            log.warning("greeting through the bus failed (%s): playing it locally", exc)
            self._local_prompt(speaker, "GREETING", turn.turn_id)

    async def _listen(self, speaker: Speaker) -> None:
        assert self.endpoint is not None
        endpointer = Endpointer()
        async for frame in self.endpoint.frames():
            for event in endpointer.process(frame):
                if isinstance(event, SpeechStarted) and speaker.busy:
                    await self._barge_in(speaker)
                elif isinstance(event, UtteranceEnded):
                    await self._utterance(speaker, event.audio)

    async def _barge_in(self, speaker: Speaker) -> None:
        metrics.CALL_EVENTS.labels("barge_in").inc()
        log.info("barge-in: the caller talks over the agent")
        self.turn = None  # whatever the old turn still sends is not wanted any more
        await speaker.interrupt()

    async def _utterance(self, speaker: Speaker, audio: Audio) -> None:
        turn = self._new_turn()
        body = {"format": "ulaw8k", "trace": {}}
        try:
            await self._publish(STT, turn, f"{turn.turn_id}:stt", body, ulaw_encode(audio))
        except Exception as exc:
            log.error("cannot hand the utterance to the bus (%s)", exc)
            await self._give_up(speaker, turn)
            return
        watcher = asyncio.create_task(self._watch(speaker, turn))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, speaker: Speaker, turn: Turn) -> None:
        """The filler at the budget; the error prompt when the turn dies."""
        await asyncio.sleep(max(0.0, turn.budget_at - time.time()))
        if self.turn is turn and not turn.heard:
            metrics.CALL_EVENTS.labels("filler").inc()
            self._local_prompt(speaker, "FILLER", turn.turn_id)
        await asyncio.sleep(max(0.0, turn.deadline - time.time()))
        if self.turn is turn and not turn.finished and not turn.heard:
            await self._give_up(speaker, turn)

    async def _give_up(self, speaker: Speaker, turn: Turn) -> None:
        metrics.CALL_EVENTS.labels("error_prompt").inc()
        self._local_prompt(speaker, "ERROR_GENERIC", turn.turn_id)
        prompt = self.ctx.prompts.get("ERROR_GENERIC")
        await asyncio.sleep(prompt.duration_s if prompt else 3.0)
        if self.ctx.settings.on_failure == "hangup":
            await self.ctx.ari.hangup(self.channel_id)
        else:
            await self.ctx.ari.continue_in_dialplan(self.channel_id)
        self.ended.set()

    def _local_prompt(self, speaker: Speaker, name: str, turn_id: str) -> None:
        prompt = self.ctx.prompts.get(name)
        if prompt is not None:
            speaker.say(Piece(turn_id, audio=ulaw_decode(prompt.ulaw)))
        else:
            speaker.say(Piece(turn_id, text=self.ctx.prompts.responses.template(name)))

    def _new_turn(self) -> Turn:
        budget_at, deadline = turn_times(self.ctx.settings.turn_budget_ms)
        self._pending.clear()
        self.turn = Turn(uuid.uuid4().hex, budget_at, deadline, time.perf_counter())
        return self.turn

    async def _publish(
        self, stream: str, turn: Turn, msg_id: str, body: dict[str, Any], audio: bytes = b""
    ) -> None:
        envelope = Envelope(
            self.channel_id,
            turn.turn_id,
            turn.deadline,
            msg_id,
            body,
            audio,
            budget_at=turn.budget_at,
        )
        await self.ctx.bus.publish(stream, envelope)

    async def _replies(self, speaker: Speaker) -> None:
        """Read the call's results stream; speak the current turn's pieces in order."""
        last = "0-0"  # the stream is this call's own: read it from its start
        key = result_key(self.channel_id)
        while True:
            try:
                reply: Any = await self.ctx.store.call(
                    lambda r, last=last: r.xread({key: last}, block=500, count=20)  # type: ignore[misc]
                )
            except Exception as exc:
                log.warning("reading replies failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    self._accept(speaker, decode(fields))

    def _accept(self, speaker: Speaker, message: Envelope) -> None:
        turn = self.turn
        if turn is None or message.turn_id != turn.turn_id:
            return  # a turn the caller talked over, or one long gone
        body = message.body
        if body.get("type") == "end":
            turn.count = int(body.get("count", 0))
            return
        self._pending[int(body["seq"])] = message
        while turn.next_seq in self._pending:
            self._speak(speaker, turn, self._pending.pop(turn.next_seq))
            turn.next_seq += 1

    def _speak(self, speaker: Speaker, turn: Turn, message: Envelope) -> None:
        if not turn.heard:
            turn.heard = True
            metrics.FIRST_AUDIO_SECONDS.observe(time.perf_counter() - turn.started)
        if message.body.get("type") == "audio":
            speaker.say(Piece(turn.turn_id, audio=ulaw_decode(message.audio)))
        else:
            speaker.say(Piece(turn.turn_id, text=str(message.body.get("text", ""))))

    async def _release(self) -> None:
        """Free everything the call holds; each step on its own, so one failure frees the rest."""
        for watcher in list(self._watchers):
            watcher.cancel()
        if self.endpoint is not None:
            self.endpoint.close()
        with contextlib.suppress(Exception):
            await self.ctx.ari.hangup(self.media_id)
        with contextlib.suppress(Exception):
            await self.ctx.ari.destroy_bridge(self.bridge_id)
        if self.anchored is not None and self.ctx.anchor is not None:
            await self.ctx.anchor.close(self.anchored)
        metrics.CALL_EVENTS.labels("ended").inc()
        log.info("call released")


STOP_BOUND_S = 3.0


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel and wait, but never forever: a task slow to stop must not keep a call alive."""
    for task in tasks:
        task.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=STOP_BOUND_S)
    for task in stuck:
        log.error("a call task did not stop within %.0fs: %r", STOP_BOUND_S, task)
