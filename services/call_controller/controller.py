"""The Stasis application: ARI events in, one `Call` per caller.

On shutdown the controller drains: a new caller goes back to the dialplan
(someone else answers), live calls get `drain_s` to finish, then the rest
are handed back too. After Asterisk restarts, calls whose channels are gone
are released.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        if self.draining:
            metrics.CALL_EVENTS.labels("refused").inc()
            log.info("draining: %s goes back to the dialplan", channel_id)
            with contextlib.suppress(Exception):
                await self.ctx.ari.continue_in_dialplan(channel_id)
            return
        call = Call(self.ctx, channel)
        self.calls[channel_id] = call
        task = asyncio.create_task(self._run(call))
        self._tasks[channel_id] = task

    async def _run(self, call: Call) -> None:
        try:
            await call.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s failed", call.channel_id)
            with contextlib.suppress(Exception):
                await self.ctx.ari.continue_in_dialplan(call.channel_id)
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
            with contextlib.suppress(Exception):
                await self.ctx.ari.continue_in_dialplan(call.channel_id)
            call.hangup()
        remaining = list(self._tasks.values())
        if remaining:
            await asyncio.wait(remaining, timeout=5)
