"""The handler registry and the lookups every resource shares."""

from __future__ import annotations

from collections.abc import Callable

from ..engine import Engine
from ..models import Bridge, Channel
from ..params import DecodedArgs
from ..responses import AriResponse, error

Handler = Callable[[Engine, DecodedArgs], AriResponse]
HANDLERS: dict[str, Handler] = {}


def handler(key: str) -> Callable[[Handler], Handler]:
    """Register the function as the implementation of Swagger operation ``key``."""

    def register(function: Handler) -> Handler:
        HANDLERS[key] = function
        return function

    return register


def find_control(engine: Engine, channel_id: str) -> Channel | AriResponse:
    """``find_control`` of resource_channels.c: 404 unknown, 409 not in Stasis."""
    channel = engine.channels.get(channel_id)
    if channel is None:
        return error(404, "Channel not found")
    if channel.stasis_app is None:
        return error(409, "Channel not in Stasis application")
    return channel


def channel_state_invalid(channel: Channel) -> AriResponse | None:
    """Down/Reserved/Ringing channels cannot be answered, played to, continued: 412."""
    if channel.state in ("Down", "Rsrvd", "Ringing"):
        return error(412, "Channel in invalid state")
    return None


def find_bridge(engine: Engine, bridge_id: str) -> Bridge | AriResponse:
    """``find_bridge`` of resource_bridges.c (every double bridge is a Stasis bridge)."""
    bridge = engine.bridges.get(bridge_id)
    return bridge if bridge is not None else error(404, "Bridge not found")


def find_channel_control(engine: Engine, channel_id: str) -> Channel | AriResponse:
    """The bridges flavour: unknown channel is 400, not in Stasis is 422."""
    channel = engine.channels.get(channel_id)
    if channel is None:
        return error(400, "Channel not found")
    if channel.stasis_app is None:
        return error(422, "Channel not in Stasis application")
    return channel
