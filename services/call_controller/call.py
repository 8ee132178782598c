"""One caller, from StasisStart to hangup.

    answer -> mixing bridge -> ExternalMedia RTP to our socket -> greeting
    caller audio -> endpointer -> utterance on `stt` ... replies on results:<call_id>
    -> speaker (RTP, or ARI characters:) ; caller speech while we talk -> barge-in

When the turn's budget passes with nothing to say, the caller hears the filler
prompt; when the bus is down or the turn dies, the ERROR_GENERIC prompt, and
the call goes back to the dialplan or hangs up as configured. A hangup at any
moment cancels every task of the call and frees the socket, the media channel
and the bridge; nothing later speaks into a dead call.

A call can be *resumed*: a controller that starts after another one died
(kill -9, OOM) takes over the callers it left in the Stasis app. Their media
channel points at a socket nobody owns any more, so it goes, with the old
bridge, and the call is set up again; instead of the greeting the caller is
asked to repeat (RESUME_PROMPT): whatever they said meanwhile was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vagent.services import metrics
from vagent.services.audio import Audio, ulaw_decode, ulaw_encode
from vagent.services.bus import Bus, Envelope, decode, result_key
from vagent.services.call_controller.anchor import AnchoredMedia, MediaAnchorError, RtpEngineAnchor
from vagent.services.call_controller.ari import AriClient
from vagent.services.call_controller.rtp import RtpEndpoint
from vagent.services.call_controller.speaker import Piece, Speaker
from vagent.services.call_controller.vad import (
    Endpointer,
    SpeechDiscarded,
    SpeechStarted,
    UtteranceEnded,
)
from vagent.services.config import Settings
from vagent.services.logs import call_id_var
from vagent.services.redis_client import RedisStore
from vagent.services.tts_service.prompts import PromptCache
from vagent.services.turn import STT, TTS, turn_times

log = logging.getLogger("vagent.call")

RESUME_PROMPT = "ERROR_STT"  # "I'm sorry, I didn't catch that. Could you please repeat...?"
HAND_OVER_RETRY_S = 0.2  # while the bus does not take an utterance
SEND_AGAIN_S = 1.0  # how often a turn with no reply yet is handed to the bus again
FILLER_S = 1.5  # the filler's length when it could not be rendered (Asterisk says it)

Send = Callable[[], Awaitable[None]]


BRIDGE_PREFIX, MEDIA_SUFFIX = "vagent-", "-media"


def bridge_name(channel_id: str) -> str:
    """A call's mixing bridge is named after its caller, so another process can find it."""
    return f"{BRIDGE_PREFIX}{channel_id}"


def media_name(channel_id: str) -> str:
    """A call's ExternalMedia channel id, named after its caller like the bridge."""
    return f"{channel_id}{MEDIA_SUFFIX}"


def caller_of_bridge(bridge_id: str) -> str | None:
    """The caller a bridge named by `bridge_name` belongs to (None: not one of ours)."""
    return bridge_id.removeprefix(BRIDGE_PREFIX) if bridge_id.startswith(BRIDGE_PREFIX) else None


def caller_of_media(channel_id: str) -> str | None:
    """The caller a media channel named by `media_name` belongs to (None: not one of ours)."""
    return channel_id.removesuffix(MEDIA_SUFFIX) if channel_id.endswith(MEDIA_SUFFIX) else None


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
    def __init__(self, ctx: CallContext, channel: dict[str, Any], *, resumed: bool = False) -> None:
        self.ctx = ctx
        self.channel_id = str(channel["id"])
        self.ringing = channel.get("state") != "Up"
        self.resumed = resumed
        self.bridge_id = bridge_name(self.channel_id)
        self.media_id = media_name(self.channel_id)
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
        if self.resumed:
            await self._clear_leftovers()
        self.endpoint = await RtpEndpoint.open(settings.media_host, 0)
        await ari.create_bridge(self.bridge_id)
        self.endpoint.set_remote(*await self._media_channel())
        await ari.add_channels(self.bridge_id, self.channel_id, self.media_id)
        metrics.CALL_EVENTS.labels("started").inc()
        return Speaker(self.endpoint, ari, self.channel_id)

    async def _clear_leftovers(self) -> None:
        """A resumed call: the dead process's media channel and bridge go (either may be
        gone already), so that both can be made again under the same names."""
        with contextlib.suppress(Exception):
            await self.ctx.ari.hangup(self.media_id)
        with contextlib.suppress(Exception):
            await self.ctx.ari.destroy_bridge(self.bridge_id)

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
        name = RESUME_PROMPT if self.resumed else "GREETING"
        body = {"type": "prompt", "seq": 0, "name": name, "trace": {}}
        end = {"type": "end", "count": 1, "trace": {}}
        try:
            await self._publish(TTS, turn, f"{turn.turn_id}:tts:0", body)
            await self._publish(TTS, turn, f"{turn.turn_id}:tts:end", end)
        except Exception as exc:
            log.warning("greeting through the bus failed (%s): playing it locally", exc)
            self._local_prompt(speaker, name, turn.turn_id)

    async def _listen(self, speaker: Speaker) -> None:
        assert self.endpoint is not None
        endpointer = Endpointer()
        interrupted = False  # a barge-in stopped the agent, and no utterance came of it yet
        async for frame in self.endpoint.frames():
            for event in endpointer.process(frame):
                if isinstance(event, SpeechStarted) and speaker.busy:
                    interrupted = True
                    await self._barge_in(speaker)
                elif isinstance(event, UtteranceEnded):
                    interrupted = False
                    if speaker.busy:  # it started while the caller spoke: talked over too
                        await self._barge_in(speaker)
                    await self._utterance(speaker, event.audio)
                elif isinstance(event, SpeechDiscarded) and interrupted:
                    interrupted = False
                    self._not_caught(speaker, event)

    async def _barge_in(self, speaker: Speaker) -> None:
        metrics.CALL_EVENTS.labels("barge_in").inc()
        log.info("barge-in: the caller talks over the agent")
        self.turn = None  # whatever the old turn still sends is not wanted any more
        await speaker.interrupt()

    def _not_caught(self, speaker: Speaker, event: SpeechDiscarded) -> None:
        """The agent stopped for what was no utterance after all (a cough, the tail of a
        sentence a resumed call only half heard): silence now would leave the caller
        waiting for nothing, so ask them to say it again."""
        metrics.CALL_EVENTS.labels("barge_in_discarded").inc()
        log.info("barge-in on %s (%.2fs): asking to repeat", event.reason, event.speech_s)
        self._local_prompt(speaker, "ERROR_STT", uuid.uuid4().hex)

    async def _utterance(self, speaker: Speaker, audio: Audio) -> None:
        turn = self._new_turn()
        body = {"format": "ulaw8k", "trace": {}}
        payload = ulaw_encode(audio)

        async def send() -> None:
            await self._publish(STT, turn, f"{turn.turn_id}:stt", body, payload)

        watcher = asyncio.create_task(self._follow(speaker, turn, send))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _follow(self, speaker: Speaker, turn: Turn, send: Send) -> None:
        """A turn from the end of the utterance: handed to the bus, handed again while
        nothing comes back, the filler at the budget, the error prompt if it dies.

        The bus is Redis, and Redis keeps nothing across a restart (it holds live
        turns only): a turn handed over just before one is gone for good unless it
        is sent again. A copy costs nothing when the turn was only slow: the stt
        consumer skips a msg_id it already has. The filler is the controller's own:
        it plays at the budget whatever the bus does, even while a slow Redis
        holds the hand-over.
        """
        filler = asyncio.create_task(self._filler_at_budget(speaker, turn))
        again: asyncio.Task[None] | None = None
        try:
            if not await self._deliver(turn, send, filler):
                if self.turn is turn:  # not talked over meanwhile
                    log.error("the bus did not take the utterance by the end of the filler")
                    await self._give_up(speaker, turn)
                return
            again = asyncio.create_task(self._send_again(turn, send))
            await asyncio.sleep(max(0.0, turn.deadline - time.time()))
            if self.turn is turn and not turn.finished and not turn.heard:
                await self._give_up(speaker, turn)
        finally:
            filler.cancel()
            if again is not None:
                again.cancel()

    async def _deliver(self, turn: Turn, send: Send, filler: asyncio.Task[float]) -> bool:
        """Hand the utterance to the bus by the budget, or while the filler plays (a
        Redis restart takes a second or two); False: the bus is down, and the error
        prompt may follow the filler."""
        if await self._hand_over(turn, send, turn.budget_at):
            return True
        if self.turn is not turn:
            return False
        filler_end = await filler
        if await self._hand_over(turn, send, filler_end):
            return True
        await asyncio.sleep(max(0.0, filler_end - time.time()))
        return False

    async def _hand_over(self, turn: Turn, send: Send, until: float) -> bool:
        """Until the bus takes the utterance (True), or `until` (False): a Redis that
        restarts is away longer than the policy's three quick attempts, and one that
        hangs must not hold the turn past `until`."""
        while True:
            try:
                await asyncio.wait_for(send(), timeout=max(0.1, until - time.time()))
                return True
            except Exception as exc:
                log.warning("handing the utterance to the bus failed (%r)", exc)
            if time.time() + HAND_OVER_RETRY_S >= until or self.turn is not turn:
                return False
            await asyncio.sleep(HAND_OVER_RETRY_S)

    async def _send_again(self, turn: Turn, send: Send) -> None:
        """From the budget on, while nothing of the reply has come back."""
        await asyncio.sleep(max(0.0, turn.budget_at - time.time()))
        while self.turn is turn and not turn.heard and time.time() < turn.deadline:
            metrics.CALL_EVENTS.labels("turn_sent_again").inc()
            with contextlib.suppress(Exception):
                await send()
            await asyncio.sleep(SEND_AGAIN_S)

    async def _filler_at_budget(self, speaker: Speaker, turn: Turn) -> float:
        """The filler, when the budget passes with nothing heard; when it will have ended."""
        await asyncio.sleep(max(0.0, turn.budget_at - time.time()))
        if self.turn is not turn or turn.heard:
            return time.time()
        metrics.CALL_EVENTS.labels("filler").inc()
        self._local_prompt(speaker, "FILLER", turn.turn_id)
        prompt = self.ctx.prompts.get("FILLER")
        return time.time() + (prompt.duration_s if prompt else FILLER_S)

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
