"""The Stasis application: ARI events in, one `Call` per caller.

On shutdown the controller drains: a new caller goes back to the dialplan
(someone else answers), live calls get `drain_s` to finish, then the rest
are handed back too. After Asterisk restarts, calls whose channels are gone
are released.

While the ARI breaker is open (Asterisk keeps failing our requests, or a
drill says so), a new caller is not set up at all: the breaker protects
Asterisk from call-control traffic we cannot complete, and a caller we
cannot serve gets exactly one plain request back to the dialplan
(`AriClient.hand_back`). A call that fails is handed back the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vagent.services import metrics
from vagent.services.call_controller.call import Call, CallContext

log = logging.getLogger("vagent.controller")

ENDING_EVENTS = ("StasisEnd", "ChannelHangupRequest", "ChannelDestroyed")


class Controller:
    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx
        self.calls: dict[str, Call] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.draining = False

    async def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        channel = event.get("channel") if isinstance(event.get("channel"), dict) else None
        if channel is None:
            return
        channel_id = str(channel.get("id", ""))
        if kind == "StasisStart":
            await self._start(channel)
        elif kind in ENDING_EVENTS and channel_id in self.calls:
            self.calls[channel_id].hangup()

    async def _start(self, channel: dict[str, Any]) -> None:
        channel_id = str(channel["id"])
        if str(channel.get("name", "")).startswith("UnicastRTP/") or channel_id in self.calls:
            return  # our own media channel, or a duplicate event
        refusal = self._refusal()
        if refusal is not None:
            metrics.CALL_EVENTS.labels("refused").inc()
            log.warning("%s: %s goes back to the dialplan", refusal, channel_id)
            await self.ctx.ari.hand_back(channel_id)
            return
        call = Call(self.ctx, channel)
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
        """After a reconnect: release calls whose channels Asterisk no longer has."""
        for channel_id, call in list(self.calls.items()):
            try:
                await self.ctx.ari.request("GET", f"/channels/{channel_id}")
            except Exception as exc:
                log.info("channel %s gone after reconnect (%s)", channel_id, exc)
                call.hangup()

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
