"""Things a test makes the far end (or the PBX) do, run on the server loop.

Both the Python API of :class:`~.double.AriDouble` and the ``/_double/`` HTTP
routes call these, so a test in another process drives the exact same code.
"""

from __future__ import annotations

from . import flows
from .apps import Signal
from .engine import Engine
from .models import CallerId


def start_inbound_call(
    engine: Engine,
    *,
    args: list[str] | None = None,
    caller: str = "1001",
    caller_name: str = "",
    app: str | None = None,
    answered: bool = False,
    context: str = "vagent-in",
    exten: str = "100",
    priority: int = 1,
    channel_name: str | None = None,
) -> str:
    """A caller dials in and the dialplan hands the call to ``Stasis(app,args...)``.

    ``answered=False`` is a call that was ``Dial()``-ed into the Stasis context:
    it arrives ringing (state ``Ring``) and needs ``POST .../answer``;
    ``answered=True`` is one the dialplan answered first (state ``Up``).
    """
    channel = flows.start_inbound(
        engine,
        app=app or engine.config.default_app,
        args=list(args or []),
        caller=CallerId(caller_name, caller),
        answered=answered,
        context=context,
        exten=exten,
        priority=priority,
        name=channel_name,
    )
    return channel.id


def far_end_hangup(engine: Engine, channel_id: str, cause: int = flows.CAUSE_NORMAL) -> None:
    """The caller hangs up: ``ChannelHangupRequest {cause}`` without ``soft``."""
    channel = engine.channels.get(channel_id)
    if channel is None:
        raise KeyError(f"no channel {channel_id!r}")
    flows.hangup(engine, channel, cause=cause, from_app=False)


def drop_websockets(engine: Engine, app: str | None = None, graceful: bool = False) -> int:
    """Cut events websockets: abruptly (no close frame) unless ``graceful``."""
    return engine.apps.drop_sessions(app, Signal.CLOSE if graceful else Signal.DROP)


def shutdown(engine: Engine) -> None:
    """Boot ends: timers stop, websockets vanish like a crashed process's."""
    engine.closed = True
    engine.media.shutdown()
    engine.bridge_media.shutdown()
    for sink in engine.rtp_sinks.values():
        sink.close()
    engine.apps.drop_sessions(None, Signal.DROP)
