"""``AriDouble``: a real ARI server on loopback, driven from a test.

uvicorn serves :class:`~.server.DoubleApp` on its own event loop in a
background thread, so product code talks to it over real TCP exactly as it
would talk to Asterisk, while the test thread steers it (start calls, inject
faults, restart it) through thread-safe methods that run on that loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import uvicorn

from . import actions
from .config import DoubleConfig
from .engine import Engine
from .journal import EventRecord, RequestRecord, Violation
from .media_api import MediaControls
from .rtp import ReceivedPacket
from .runtime import Runtime
from .server import DoubleApp
from .swagger import SwaggerSpec, default_spec
from .transport import AbortableHttpProtocol, AbortableWebSocketProtocol

T = TypeVar("T")
_START_TIMEOUT = 10.0


class _QuietDenials(logging.Filter):
    """uvicorn logs an error after every websocket denial response; Asterisk
    refusing an upgrade is routine here, so that line is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing handshake" not in record.getMessage()


_QUIET_DENIALS = _QuietDenials()


class DoubleViolations(AssertionError):
    """Requests the test made that Swagger does not allow (Asterisk might accept)."""


class AriDouble(MediaControls):
    """A faithful Asterisk 22 ARI double (HTTP + events websocket) on 127.0.0.1.

    Use as a context manager; ``fail_on_violations`` makes leaving the block
    raise if any request broke the Swagger contract, even when the wire
    answer (faithfully) was a success. Media (caller speech, RTP to and from
    ExternalMedia channels, playback history) is steered through the methods
    of :class:`~.media_api.MediaControls`.
    """

    def __init__(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        config: DoubleConfig | None = None,
        fail_on_violations: bool = True,
        spec: SwaggerSpec | None = None,
    ) -> None:
        base = config or DoubleConfig()
        self.config = dataclasses.replace(
            base,
            user=base.user if user is None else user,
            password=base.password if password is None else password,
        )
        self.host = host
        self.fail_on_violations = fail_on_violations
        self.runtime = Runtime(self.config, spec or default_spec())
        self.runtime.restart_hook = self.restart
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifecycle = threading.RLock()

    # --- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> AriDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None and self.fail_on_violations:
            self.assert_no_violations()

    def start(self) -> AriDouble:
        """Bind (port 0 picks a free one) and serve until :meth:`stop`."""
        with self._lifecycle:
            if self._thread is None:
                self._boot()
        return self

    def stop(self) -> None:
        with self._lifecycle:
            self._shutdown()

    def restart(self, downtime: float = 0.0) -> None:
        """Crash and come back: websockets vanish, every channel/bridge/playback is
        gone, the port refuses connections for ``downtime`` seconds, ids restart."""
        with self._lifecycle:
            self._shutdown()
            if downtime > 0:
                time.sleep(downtime)
            self._boot()

    def reset(self) -> None:
        """A fresh Asterisk (no channels, bridges, apps; ids from .0), an empty journal
        and no faults, without closing the listening socket: cheap isolation for
        tests that share one double. Connected websockets are cut."""
        with self._lifecycle:
            self.start()
            runtime = self.runtime

            def swap(engine: Engine) -> None:
                actions.shutdown(engine)
                runtime.engine = Engine(self.config, runtime.journal, runtime.spec, engine.loop)

            self._call(swap)
            runtime.journal.clear()
            runtime.faults.clear()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        sock.listen(128)
        self._port = int(sock.getsockname()[1])
        self.runtime.base_url = self.base_url
        return sock

    def _boot(self) -> None:
        sock = self._listen()
        server = uvicorn.Server(
            uvicorn.Config(
                DoubleApp(self.runtime),
                lifespan="off",
                log_level="warning",
                access_log=False,
                http=AbortableHttpProtocol,
                ws=AbortableWebSocketProtocol,
                ws_ping_interval=None,
                server_header=False,
                date_header=False,
                timeout_graceful_shutdown=1,
            )
        )
        logging.getLogger("uvicorn.error").addFilter(_QUIET_DENIALS)
        loop = asyncio.new_event_loop()
        self.runtime.engine = Engine(self.config, self.runtime.journal, self.runtime.spec, loop)
        thread = threading.Thread(
            target=self._serve, args=(loop, server, sock), name="ari-double", daemon=True
        )
        self._server, self._thread, self._loop = server, thread, loop
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("ARI double did not start")
            time.sleep(0.005)

    @staticmethod
    def _serve(
        loop: asyncio.AbstractEventLoop, server: uvicorn.Server, sock: socket.socket
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        finally:
            sock.close()
            loop.close()

    def _shutdown(self) -> None:
        server, thread, loop = self._server, self._thread, self._loop
        if server is None or thread is None or loop is None:
            return
        engine = self.runtime.engine
        if engine is not None and thread.is_alive():
            self._call(actions.shutdown)
        server.should_exit = True
        thread.join(timeout=10)
        self._server = self._thread = self._loop = None

    # --- addresses --------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (ARI lives under ``/ari``)."""
        return f"http://{self.host}:{self._port}"

    @property
    def ari_url(self) -> str:
        return f"{self.base_url}/ari"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT/ari/events`` (add ``?app=...&api_key=...``)."""
        return f"ws://{self.host}:{self._port}/ari/events"

    @property
    def api_key(self) -> str:
        return f"{self.config.user}:{self.config.password}"

    def events_url(self, app: str | None = None, *, subscribe_all: bool = False) -> str:
        """A ready-to-use events websocket URL with ``api_key`` credentials."""
        url = f"{self.ws_url}?app={quote(app or self.config.default_app)}"
        url += f"&api_key={quote(self.api_key, safe=':')}"
        return url + ("&subscribeAll=true" if subscribe_all else "")

    # --- running code on the server loop ----------------------------------------------------

    def _call(self, function: Callable[[Engine], T], timeout: float = 5.0) -> T:
        loop, engine = self._loop, self.runtime.engine
        if loop is None or engine is None or not self.running:
            raise RuntimeError("ARI double is not running")
        if threading.current_thread() is self._thread:
            return function(engine)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function(engine))
            except BaseException as exc:  # re-raised in the calling thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout)

    # --- calls --------------------------------------------------------------------------

    def start_inbound_call(
        self, args: list[str] | None = None, caller: str = "1001", **options: Any
    ) -> str:
        """A caller dials in; StasisStart reaches the app. Returns the channel id.

        Options: ``caller_name``, ``app``, ``answered`` (False: state Ring, the
        call was Dial()ed; True: Up), ``context``, ``exten``, ``priority``,
        ``channel_name``. Raises AppNotRegistered if no websocket holds the app.
        """
        return self._call(
            lambda e: actions.start_inbound_call(e, args=args, caller=caller, **options)
        )

    def hangup(self, channel_id: str, cause: int = 16) -> None:
        """The far end hangs up: ChannelHangupRequest(cause) -> ... -> StasisEnd."""
        self._call(lambda e: actions.far_end_hangup(e, channel_id, cause))

    def wait_for_app(self, app: str | None = None, timeout: float = 5.0) -> None:
        """Block until an events websocket has registered ``app``."""
        name = app or self.config.default_app
        deadline = time.monotonic() + timeout
        while self._call(lambda e: e.apps.active(name) is None):
            if time.monotonic() > deadline:
                raise TimeoutError(f"app {name!r} never registered")
            time.sleep(0.01)

    def state(self) -> dict[str, Any]:
        """Channels, bridges, playbacks and applications as JSON."""
        return self._call(lambda e: e.snapshot())

    def channel(self, channel_id: str) -> dict[str, Any] | None:
        found = self._call(lambda e: e.channels.get(channel_id))
        return found.to_json() if found is not None else None

    def rtp_received(self, channel_id: str) -> list[ReceivedPacket]:
        """Datagrams sent to an ExternalMedia channel's UNICASTRTP port (also after
        hangup, until the next reset/restart)."""
        sink = self._call(lambda e: e.rtp_sinks.get(channel_id))
        if sink is None:
            raise KeyError(f"no ExternalMedia RTP channel {channel_id!r}")
        return self._call(lambda e: list(sink.packets))

    def add_sound(self, name: str, seconds: float) -> None:
        """Make ``sound:<name>`` exist with the given duration."""
        self.config.sounds[name] = seconds

    # --- faults -------------------------------------------------------------------------

    def fail_next(
        self, status: int, count: int = 1, *, match: str | None = None, message: str | None = None
    ) -> None:
        """The next ``count`` /ari requests matching regex ``match`` (on "METHOD
        /ari/path"; None = all, websocket upgrades included) get ``status`` with
        ``{"message": message or the reason phrase}``."""
        self.runtime.faults.fail_next(status, count, match, message)

    def reset_next(self, count: int = 1, *, match: str | None = None) -> None:
        """The next ``count`` matching requests get their TCP connection reset,
        with no HTTP answer at all (Asterisk crashing mid-request)."""
        self.runtime.faults.fail_next(0, count, match)

    def hang(self, enabled: bool = True) -> None:
        """Requests get no answer while enabled (a client that gives up is dropped)."""
        self.runtime.faults.set_hang(enabled)

    def refuse_credentials(self, enabled: bool = True) -> None:
        """Every request and upgrade gets 401, as if the password had changed."""
        self.runtime.faults.set_refuse_credentials(enabled)

    def clear_faults(self) -> None:
        self.runtime.faults.clear()

    def drop_websocket(self, app: str | None = None, *, graceful: bool = False) -> int:
        """Cut the events websocket(s) (of ``app``): no close frame unless graceful."""
        return self._call(lambda e: actions.drop_websockets(e, app, graceful))

    # --- journal ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        return self.runtime.journal.snapshot_requests()

    @property
    def events(self) -> list[EventRecord]:
        return self.runtime.journal.snapshot_events()

    @property
    def violations(self) -> list[Violation]:
        return self.runtime.journal.snapshot_violations()

    def clear_journal(self) -> None:
        self.runtime.journal.clear()

    def assert_no_violations(self) -> None:
        found = self.violations
        if found:
            lines = "\n".join(f"  {v.method} {v.path} [{v.operation}]: {v.message}" for v in found)
            raise DoubleViolations(f"requests broke the ARI Swagger contract:\n{lines}")

    def wait_for_event(
        self,
        event_type: str,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 5.0,
        start: int = 0,
    ) -> dict[str, Any]:
        """The first event of ``event_type`` (from journal index ``start``) matching."""
        journal = self.runtime.journal

        def probe() -> dict[str, Any] | None:
            for record in journal.events[start:]:
                if record.type == event_type and (predicate is None or predicate(record.event)):
                    return record.event
            return None

        return journal.wait_for(probe, timeout)

    def wait_for_request(
        self, method: str, path_regex: str, *, timeout: float = 5.0
    ) -> RequestRecord:
        """The first journaled, answered request whose path matches."""
        pattern = re.compile(path_regex)
        journal = self.runtime.journal

        def probe() -> RequestRecord | None:
            for record in journal.requests:
                if (
                    record.method == method
                    and pattern.search(record.path)
                    and record.status is not None
                ):
                    return record
            return None

        return journal.wait_for(probe, timeout)
