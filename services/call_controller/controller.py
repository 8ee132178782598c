"""The Stasis application: ARI events in, one `Call` per caller.

On shutdown the controller drains: a new caller goes back to the dialplan
(someone else answers), live calls get `drain_s` to finish, then the rest
are handed back too. After Asterisk restarts, calls whose channels are gone
are released.

A controller that starts after another one died (kill -9, OOM) takes over
the callers it left in the Stasis app, and clears what was left of calls
that ended meanwhile (see `reconcile`). One controller per Asterisk and
Stasis app, as the design has it: a second one would take the first one's calls.

While the ARI breaker is open (Asterisk keeps failing our requests, or a
drill says so), a new caller is not set up at all: the breaker protects
Asterisk from call-control traffic we cannot complete, and a caller we
cannot serve gets exactly one plain request back to the dialplan
(`AriClient.hand_back`). A call that fails is handed back the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from vagent.services import metrics
from vagent.services.call_controller.call import (
    Call,
    CallContext,
    bridge_name,
    caller_of_bridge,
    caller_of_media,
)

log = logging.getLogger("vagent.controller")

ENDING_EVENTS = ("StasisEnd", "ChannelHangupRequest", "ChannelDestroyed")


class Controller:
    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.calls: dict[str, Call] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.draining = False

    async def on_event(self, event: dict[str, Any]) -> None:
        """Never raises on its input: a channel without a string id is counted and
        ignored here too (events.read_event refuses those frames first)."""
        kind = event.get("type")
        channel = event.get("channel") if isinstance(event.get("channel"), dict) else None
        if channel is None:
            return
        channel_id = channel.get("id")
        if not isinstance(channel_id, str) or not channel_id:
            metrics.ARI_BAD_EVENTS.inc()
            metrics.REJECTED_INPUT.labels("ari_event", "bad_channel").inc()
            return
        if kind == "StasisStart":
            await self._start(channel)
        elif kind in ENDING_EVENTS and channel_id in self.calls:
            self.calls[channel_id].hangup()

    async def _start(self, channel: dict[str, Any], *, resumed: bool = False) -> None:
        channel_id = str(channel["id"])
        if str(channel.get("name", "")).startswith("UnicastRTP/") or channel_id in self.calls:
            return  # our own media channel, or a duplicate event
        refusal = self._refusal()
        if refusal is not None:
            metrics.CALL_EVENTS.labels("refused").inc()
            log.warning("%s: %s goes back to the dialplan", refusal, channel_id)
            await self.ctx.ari.hand_back(channel_id)
            return
        call = Call(self.ctx, channel, resumed=resumed)
        self.calls[channel_id] = call
        task = asyncio.create_task(self._run(call))
        self._tasks[channel_id] = task

    def _refusal(self) -> str | None:
        """Why a new caller cannot be served now, or None."""
        if self.draining:
            return "draining"
        breaker = self.ctx.ari.dependency.breaker
        if breaker.failing_fast:
            return f"ARI breaker open (next trial in {breaker.retry_in():.0f}s)"
        return None

    async def _run(self, call: Call) -> None:
        try:
            await call.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s failed", call.channel_id)
            await self.ctx.ari.hand_back(call.channel_id)
        finally:
            self.calls.pop(call.channel_id, None)
            self._tasks.pop(call.channel_id, None)

    async def reconcile(self) -> None:
        """On every connect of the events websocket, the first one included.

        Our calls whose channels Asterisk no longer has are released (it
        restarted, or the caller hung up while the link was down). Callers in
        our Stasis app that no call of ours owns were left by a controller
        that died: each is resumed when its bridge is still there, else set up
        like a new caller (its StasisStart was lost). What is left of calls
        that ended while no controller ran (bridge, media channel) is removed.
        """
        for channel_id, call in list(self.calls.items()):
            try:
                await self.ctx.ari.request("GET", f"/channels/{channel_id}")
            except Exception as exc:
                log.info("channel %s gone after reconnect (%s)", channel_id, exc)
                call.hangup()
        try:
            channels = [c for c in await self.ctx.ari.request("GET", "/channels") if self._ours(c)]
            bridges = list(await self.ctx.ari.request("GET", "/bridges"))
        except Exception as exc:
            log.warning("cannot look for calls left by a previous controller: %s", exc)
            return
        await self._take_over(channels, {str(b.get("id")) for b in bridges})
        await self._sweep(channels, bridges)

    def _ours(self, channel: Any) -> bool:
        """In our Stasis app: ARI shows dialplan app `Stasis` with data `app[,args...]`."""
        dialplan = channel.get("dialplan") if isinstance(channel, dict) else None
        if not isinstance(dialplan, dict) or not isinstance(channel.get("id"), str):
            return False
        app = str(dialplan.get("app_data", "")).split(",")[0]
        return dialplan.get("app_name") == "Stasis" and app == self.ctx.settings.ari_app

    async def _take_over(self, channels: list[dict[str, Any]], bridge_ids: set[str]) -> None:
        for channel in channels:
            channel_id = channel["id"]
            if _is_media(channel) or channel_id in self.calls:
                continue
            resumed = bridge_name(channel_id) in bridge_ids
            metrics.CALL_EVENTS.labels("resumed" if resumed else "adopted").inc()
            log.warning("taking over %s, left in the app by a previous controller", channel_id)
            await self._start(channel, resumed=resumed)

    async def _sweep(self, channels: list[dict[str, Any]], bridges: list[Any]) -> None:
        """Media channels and bridges of callers that are gone: nobody else will free them."""
        live = set(self.calls) | {c["id"] for c in channels if not _is_media(c)}
        media = {c["id"] for c in channels if _is_media(c)}
        for channel_id in media:
            if caller_of_media(channel_id) not in (None, *live):
                with contextlib.suppress(Exception):
                    await self.ctx.ari.hangup(channel_id)
        for bridge in bridges:
            bridge_id, members = str(bridge.get("id")), set(bridge.get("channels") or [])
            if caller_of_bridge(bridge_id) not in (None, *live) and members <= media:
                with contextlib.suppress(Exception):
                    await self.ctx.ari.destroy_bridge(bridge_id)

    async def drain(self, bound_s: float) -> None:
        self.draining = True
        log.info("draining: %d live calls, up to %.0fs", len(self.calls), bound_s)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=bound_s)
        for call in list(self.calls.values()):
            await self.ctx.ari.hand_back(call.channel_id)
            call.hangup()
        remaining = list(self._tasks.values())
        if remaining:
            await asyncio.wait(remaining, timeout=5)


def _is_media(channel: dict[str, Any]) -> bool:
    """One of the ExternalMedia channels the calls make (UnicastRTP), not a caller."""
    return str(channel.get("name", "")).startswith("UnicastRTP/")
