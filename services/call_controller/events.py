"""The ARI events websocket: one connection for the Stasis app, kept alive.

A dead link must be noticed within 3 s (a ping every half second, 1.5 s to
answer), and the controller must be back within a second of Asterisk
answering again: reconnects back off with jitter, but never beyond 1 s.
Credentials travel in the Authorization header, never in the URL, so no
log line or proxy ever sees them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import connect

from vagent.services import metrics
from vagent.services.call_controller.ari import ari_root

log = logging.getLogger("vagent.ari.events")

PING_INTERVAL_S = 0.5
PING_TIMEOUT_S = 1.5
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 1.0

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


def events_url(ari_url: str, app: str) -> str:
    parts = urlsplit(ari_root(ari_url))
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = f"app={quote(app)}"
    return urlunsplit((scheme, parts.netloc, f"{parts.path}/events", query, ""))


#: Event types whose model in ARI's Swagger (events.json) requires a `channel`.
#: The controller keys calls on `channel.id`: such an event without a usable
#: channel is refused here, at the boundary, so no handler has to guess.
CHANNEL_EVENTS = frozenset(
    {
        "ApplicationMoveFailed",
        "BridgeBlindTransfer",
        "CallBroadcast",
        "CallClaimed",
        "ChannelCallerId",
        "ChannelConnectedLine",
        "ChannelCreated",
        "ChannelDestroyed",
        "ChannelDialplan",
        "ChannelDtmfReceived",
        "ChannelHangupRequest",
        "ChannelHold",
        "ChannelLeftBridge",
        "ChannelStateChange",
        "ChannelTalkingFinished",
        "ChannelTalkingStarted",
        "ChannelToneDetected",
        "ChannelUnhold",
        "StasisEnd",
        "StasisStart",
    }
)


class BadEvent(ValueError):
    """A frame that is not a usable ARI event. `reason` is a fixed label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_event(frame: str | bytes) -> dict[str, Any]:
    """The ARI event in one websocket frame, or BadEvent saying why it is not one."""
    try:
        event = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError; RecursionError is JSON nested
        # deeper than the interpreter's stack, which json.loads does not catch.
        raise BadEvent("not_json", f"not JSON ({type(exc).__name__})") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise BadEvent("not_an_event", "not a JSON object with a string 'type'")
    _check_channel(event)
    return event


def _check_channel(event: dict[str, Any]) -> None:
    """A channel, where there is one, must have a non-empty string id (and text name/state)."""
    kind, channel = event["type"], event.get("channel")
    if channel is None:
        if kind in CHANNEL_EVENTS:
            raise BadEvent("bad_channel", f"{kind!r:.40} without a channel")
        return
    if not isinstance(channel, dict) or not isinstance(channel.get("id"), str) or not channel["id"]:
        raise BadEvent("bad_channel", f"{kind!r:.40} whose channel has no string id")
    if any(not isinstance(channel.get(key, ""), str) for key in ("name", "state")):
        raise BadEvent("bad_channel", f"{kind!r:.40} whose channel name or state is not text")


def parse_event(frame: str | bytes) -> dict[str, Any] | None:
    """The event, or None for a frame that is not one (see `read_event` for why)."""
    try:
        return read_event(frame)
    except BadEvent:
        return None


class AriEvents:
    """Reads events and hands each to `handler`; reconnects forever until cancelled."""

    def __init__(
        self,
        ari_url: str,
        user: str,
        password: str,
        app: str,
        handler: EventHandler,
        on_connect: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.url = events_url(ari_url, app)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self.handler = handler
        self.on_connect = on_connect
        self._reconciling: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_error = ""
        self.disconnected_at: float | None = time.monotonic()

    async def run(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            try:
                await self._session()
                delay = BACKOFF_FIRST_S
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ARI events link down (%s); reconnecting", self.last_error)
            except Exception as exc:
                # A bug must cost one connection, never the events link for good.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("ARI events session failed; reconnecting")
            self._mark_down()
            await asyncio.sleep(delay + random.uniform(0, delay / 2))
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _session(self) -> None:
        async with connect(
            self.url,
            additional_headers=self._headers,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            open_timeout=2.0,
            close_timeout=0.5,
            proxy=None,
        ) as socket:
            self.connects += 1
            self.connected.set()
            self.disconnected_at = None
            self.last_error = ""
            metrics.ARI_CONNECTED.set(1)
            log.info("ARI events connected (%s)", self.url)
            if self.on_connect is not None:  # the first connect too: see Controller.reconcile
                self._reconciling = asyncio.create_task(self.on_connect())
            async for frame in socket:
                await self.on_frame(frame)

    async def on_frame(self, frame: str | bytes) -> None:
        """One frame from the websocket: an event goes to the handler, anything else is
        dropped with its reason, logged and counted. Never raises (but cancellation)."""
        try:
            event = read_event(frame)
        except BadEvent as exc:
            metrics.ARI_BAD_EVENTS.inc()
            metrics.REJECTED_INPUT.labels("ari_event", exc.reason).inc()
            log.warning("ignored an ARI frame: %s: %.100r", exc, frame)
            return
        await self._dispatch(event)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        try:
            await self.handler(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.ARI_BAD_EVENTS.inc()
            log.exception("handling ARI event %s failed", event.get("type"))

    def _mark_down(self) -> None:
        if self.connected.is_set():
            self.disconnected_at = time.monotonic()
        self.connected.clear()
        metrics.ARI_CONNECTED.set(0)
