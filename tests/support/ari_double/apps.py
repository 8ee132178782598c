"""Stasis applications, the events websockets that own them, and event routing.

Modelled on res_stasis.c and ari_websockets.c:

* one websocket may register several apps (``app=a,b``);
* registering a name that another websocket holds sends that websocket
  ``ApplicationReplaced`` and it gets nothing more for the app (README 20);
* when the owning websocket goes, the app is deactivated; it stays listed
  while something still subscribes it, and is removed otherwise
  (``GET /applications/{name}`` -> 404);
* events reach the apps subscribed to the channel/bridge they concern, plus
  ``subscribeAll`` apps; StasisStart/StasisEnd only reach the Stasis app.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import events
from .journal import EventRecord, Journal
from .models import Application
from .responses import dump_json

JsonDict = dict[str, Any]
_session_ids = itertools.count(1)


class Signal(Enum):
    """Out-of-band instructions for a websocket writer."""

    DROP = "drop"  # vanish without a close frame, like a crashed Asterisk
    CLOSE = "close"  # orderly close frame


@dataclass
class Session:
    """One events websocket connection."""

    apps: list[str]
    subscribe_all: bool
    id: str = field(default_factory=lambda: f"ws-{next(_session_ids)}")
    outbox: asyncio.Queue[str | Signal] = field(default_factory=asyncio.Queue)
    #: Apps this socket registered and has not lost to ApplicationReplaced.
    owned: list[str] = field(default_factory=list)

    def send(self, text: str) -> None:
        self.outbox.put_nowait(text)

    def signal(self, signal: Signal) -> None:
        self.outbox.put_nowait(signal)


class AppRegistry:
    """All applications and sessions of one Asterisk boot."""

    def __init__(self, asterisk_id: str, journal: Journal) -> None:
        self.asterisk_id = asterisk_id
        self.journal = journal
        self.apps: dict[str, Application] = {}
        self.sessions: dict[str, Session] = {}

    # --- registration -------------------------------------------------------------

    def attach(self, session: Session) -> None:
        """Register every app of a freshly upgraded websocket."""
        self.sessions[session.id] = session
        for name in session.apps:
            self._register(name, session)
        self.cleanup()

    def _register(self, name: str, session: Session) -> None:
        app = self.apps.get(name)
        if app is None:
            app = self.apps[name] = Application(name)
        elif app.session_id is not None and app.session_id != session.id:
            self._replace(app)
        app.session_id = session.id
        app.subscribe_all = session.subscribe_all
        if name not in session.owned:
            session.owned.append(name)

    def _replace(self, app: Application) -> None:
        previous = self.sessions.get(app.session_id or "")
        if previous is None:
            return
        event = events.application_replaced(app.name, self.asterisk_id)
        previous.send(dump_json(event))
        self._record(app.name, event, True, previous.id)
        previous.owned.remove(app.name)

    def detach(self, session: Session) -> None:
        """The websocket is gone: deactivate the apps it still owned."""
        self.sessions.pop(session.id, None)
        for name in session.owned:
            app = self.apps.get(name)
            if app is not None and app.session_id == session.id:
                app.session_id = None
                app.subscribe_all = False
        session.owned.clear()
        self.cleanup()

    def cleanup(self) -> None:
        """Drop inactive apps that nothing subscribes any more."""
        finished = [
            name
            for name, app in self.apps.items()
            if not app.active and not app.channel_ids and not app.bridge_ids
        ]
        for name in finished:
            del self.apps[name]

    def active(self, name: str) -> Application | None:
        app = self.apps.get(name)
        return app if app is not None and app.active else None

    def drop_sessions(self, app: str | None = None, signal: Signal = Signal.DROP) -> int:
        """Cut websockets (all, or those owning ``app``); returns how many."""
        victims = [s for s in self.sessions.values() if app is None or app in s.owned]
        for session in victims:
            session.signal(signal)
        return len(victims)

    # --- routing --------------------------------------------------------------------

    def subscribers(self, kind: str, *object_ids: str) -> list[str]:
        """Apps subscribed to any of the objects (``kind`` is channel or bridge)."""
        names = []
        for name, app in self.apps.items():
            if any(app.is_subscribed(kind, oid) for oid in object_ids):
                names.append(name)
        return names

    def emit(self, event: JsonDict, app_names: Iterable[str]) -> None:
        """Deliver ``event`` to each app (deduplicated), or journal it as dropped."""
        for name in dict.fromkeys(app_names):
            app = self.apps.get(name)
            session = self.sessions.get(app.session_id or "") if app else None
            final = events.finalize(event, self.asterisk_id, name)
            if session is not None:
                session.send(dump_json(final))
            self._record(name, final, session is not None, session.id if session else None)

    def send_to_session(self, session: Session, event: JsonDict, app: str) -> None:
        """An event addressed to one websocket (e.g. a RESTResponse)."""
        session.send(dump_json(event))
        self._record(app, event, True, session.id)

    def _record(self, app: str, event: JsonDict, delivered: bool, session_id: str | None) -> None:
        self.journal.add_event(EventRecord(time.time(), app, event, delivered, session_id))
