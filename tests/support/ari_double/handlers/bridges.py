"""``/bridges`` (resource_bridges.c and bridge_create_common of res_stasis.c).

Note the asymmetries real clients trip over: an unknown *bridge* is 404 but
an unknown *channel* in addChannel/removeChannel is 400, and a channel that
exists outside Stasis is 422 here where channel operations say 409.
``BridgeCreated`` reaches only subscribeAll apps (README 5).
"""

from __future__ import annotations

from .. import events, flows
from ..clock import ari_timestamp
from ..engine import Engine
from ..models import Bridge, Channel
from ..params import DecodedArgs
from ..responses import AriResponse, error, no_content, ok
from .registry import find_bridge, find_channel_control, handler


def _bridge_kind(type_text: str | None) -> tuple[str, str] | None:
    """Parse ``type=mixing,dtmf_events,...`` into (bridge_type, video_mode); None = invalid."""
    mixing = holding = False
    video_mode = "talker"
    for token in (type_text or "mixing").split(","):
        token = token.strip()
        if token == "mixing":
            mixing = True
        elif token == "holding":
            holding = True
        elif token == "video_sfu":
            video_mode = "sfu"
        elif token == "video_single":
            video_mode = "single"
    if video_mode == "sfu":
        return ("mixing", video_mode)
    if mixing == holding:
        return None
    return ("mixing" if mixing else "holding", video_mode)


def _create(engine: Engine, args: DecodedArgs, bridge_id: str | None, failure: str) -> AriResponse:
    if bridge_id and bridge_id in engine.bridges:
        return error(409, f"Bridge with id '{bridge_id}' already exists")
    kind = _bridge_kind(args.text("type"))
    if kind is None:
        return error(500, failure)
    bridge = Bridge(
        id=bridge_id or engine.ids.uuid(),
        bridge_type=kind[0],
        name=args.text("name") or "",
        creationtime=ari_timestamp(),
        video_mode=kind[1],
    )
    bridge.reevaluate_technology()
    engine.bridges[bridge.id] = bridge
    subscribe_all = [name for name, app in engine.apps.apps.items() if app.subscribe_all]
    engine.apps.emit(events.bridge_created(bridge), subscribe_all)
    return ok(bridge.to_json())


@handler("bridges.list")
def list_bridges(engine: Engine, args: DecodedArgs) -> AriResponse:
    return ok([bridge.to_json() for bridge in engine.bridges.values()])


@handler("bridges.create")
def create(engine: Engine, args: DecodedArgs) -> AriResponse:
    bridge_id = args.text("bridgeId")
    failure = f"Unable to create bridge. Possible duplicate bridge id '{bridge_id or '(null)'}'"
    return _create(engine, args, bridge_id, failure)


@handler("bridges.createWithId")
def create_with_id(engine: Engine, args: DecodedArgs) -> AriResponse:
    return _create(engine, args, args.path["bridgeId"], "Unable to create bridge")


@handler("bridges.get")
def get(engine: Engine, args: DecodedArgs) -> AriResponse:
    bridge = find_bridge(engine, args.path["bridgeId"])
    return bridge if isinstance(bridge, AriResponse) else ok(bridge.to_json())


@handler("bridges.destroy")
def destroy(engine: Engine, args: DecodedArgs) -> AriResponse:
    bridge = find_bridge(engine, args.path["bridgeId"])
    if isinstance(bridge, AriResponse):
        return bridge
    flows.destroy_bridge(engine, bridge)
    return no_content()


def _controls(engine: Engine, args: DecodedArgs) -> list[Channel] | AriResponse:
    """``control_list_create``: empty entries are skipped, the first bad one fails all."""
    channels: list[Channel] = []
    for channel_id in args.items("channel"):
        if not channel_id:
            continue
        channel = find_channel_control(engine, channel_id)
        if isinstance(channel, AriResponse):
            return channel
        channels.append(channel)
    return channels or error(400, "Missing parameter channel")


@handler("bridges.addChannel")
def add_channel(engine: Engine, args: DecodedArgs) -> AriResponse:
    bridge = find_bridge(engine, args.path["bridgeId"])
    if isinstance(bridge, AriResponse):
        return bridge
    channels = _controls(engine, args)
    if isinstance(channels, AriResponse):
        return channels
    for channel in channels:
        flows.join_bridge(engine, bridge, channel)
    return no_content()


@handler("bridges.removeChannel")
def remove_channel(engine: Engine, args: DecodedArgs) -> AriResponse:
    bridge = find_bridge(engine, args.path["bridgeId"])
    if isinstance(bridge, AriResponse):
        return bridge
    channels = _controls(engine, args)
    if isinstance(channels, AriResponse):
        return channels
    if any(channel.bridge_id != bridge.id for channel in channels):
        return error(422, "Channel not in this bridge")
    for channel in channels:
        flows.leave_bridge(engine, bridge, channel)
    return no_content()
