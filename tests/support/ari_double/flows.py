"""Call flows: the event sequences Asterisk produces for each state change.

Shared by the REST handlers (the app acts) and the control API (the far end
acts), so a hangup looks the same whoever causes it. Sequences follow
events.jsonl:

* inbound through dialplan ``Stasis()``: StasisStart only; on hangup
  ChannelHangupRequest -> (bridge leave) -> StasisEnd, and nothing after
  (lines 83-90); the far end hanging up gives ``cause 16`` without ``soft``,
  ``DELETE /channels`` gives ``cause 32, soft true`` (README 3, 4);
* channels the app created (ExternalMedia): after StasisEnd also
  ``ChannelVarset STASISSTATUS=SUCCESS`` and ``ChannelDestroyed`` carrying the
  hangup cause (lines 248-253);
* bridge membership: ``BRIDGEPEER`` varsets around ChannelEnteredBridge /
  ChannelLeftBridge, ``simple_bridge`` <-> ``softmix`` (lines 172-254).
"""

from __future__ import annotations

from . import events
from .clock import ari_timestamp
from .engine import Engine
from .models import OUTGOING_APP, Bridge, CallerId, Channel, DialplanLocation

SOFTHANGUP_EXPLICIT = 32
CAUSE_NORMAL = 16


class AppNotRegistered(RuntimeError):
    """Stasis() into an app without a connected websocket: the call fails."""


def new_channel(
    engine: Engine,
    *,
    name: str,
    state: str,
    caller: CallerId,
    dialplan: DialplanLocation,
    channel_id: str | None = None,
) -> Channel:
    """Create and register a channel snapshot (no events: ChannelCreated is
    only for subscribeAll apps, which see it)."""
    channel = Channel(
        id=channel_id or engine.ids.uniqueid(),
        name=name,
        state=state,
        caller=caller,
        connected=CallerId(caller.name, caller.number),
        dialplan=dialplan,
        creationtime=ari_timestamp(),
    )
    engine.channels[channel.id] = channel
    return channel


def start_inbound(
    engine: Engine,
    *,
    app: str,
    args: list[str],
    caller: CallerId,
    answered: bool,
    context: str,
    exten: str,
    priority: int,
    name: str | None,
) -> Channel:
    """A call arrives and the dialplan runs ``Stasis(app,args...)``."""
    if engine.apps.active(app) is None:
        raise AppNotRegistered(f"Stasis app '{app}' not registered (no events websocket)")
    technology_name = (
        name or f"PJSIP/{caller.number or 'anonymous'}-" + engine.ids.channel_sequence("PJSIP")
    )
    channel = new_channel(
        engine,
        name=technology_name,
        state="Up" if answered else "Ring",
        caller=caller,
        dialplan=DialplanLocation(context, exten, priority, "Stasis", ""),
    )
    channel.via_dialplan = True
    engine.bridge_media.add_caller(channel.id)
    enter_stasis(engine, channel, app, args)
    return channel


def enter_stasis(engine: Engine, channel: Channel, app: str, args: list[str]) -> None:
    """The channel enters the app: it subscribes the channel, then StasisStart."""
    channel.enter_stasis(app, args)
    application = engine.apps.apps[app]
    application.subscribe("channel", channel.id)
    engine.emit_stasis(events.stasis_start(channel), app)


def set_state(engine: Engine, channel: Channel, state: str) -> None:
    if channel.state != state:
        channel.state = state
        engine.emit_channel(events.channel_state_change(channel), channel)


def set_variable(engine: Engine, channel: Channel, name: str, value: str) -> None:
    """A dialplan variable (not a function): ChannelVarset follows."""
    channel.variables[name] = value
    engine.emit_channel(events.channel_varset(channel, name, value), channel)


# --- hangup ---------------------------------------------------------------------------


def hangup(engine: Engine, channel: Channel, *, cause: int, from_app: bool) -> None:
    """Tear a channel down with the event sequence of the samples."""
    if from_app:
        request = events.channel_hangup_request(channel, SOFTHANGUP_EXPLICIT, soft=True)
    else:
        request = events.channel_hangup_request(channel, cause, soft=False)
    engine.emit_channel(request, channel)
    was_in_stasis = channel.stasis_app is not None
    engine.media.stop_target(f"channel:{channel.id}")
    if channel.bridge_id is not None and channel.bridge_id in engine.bridges:
        leave_bridge(engine, engine.bridges[channel.bridge_id], channel)
    if channel.stasis_app is not None:
        leave_stasis(engine, channel)
    if channel.via_dialplan:
        forget(engine, channel)
        return
    set_variable(engine, channel, "STASISSTATUS", "SUCCESS")
    if was_in_stasis:
        channel.dialplan.app_name, channel.dialplan.app_data = OUTGOING_APP
    engine.emit_channel(events.channel_destroyed(channel, cause), channel)
    forget(engine, channel)


def leave_stasis(engine: Engine, channel: Channel) -> None:
    """StasisEnd; a dialplan channel's subscription ends with it."""
    app = channel.stasis_app
    if app is None:
        return
    engine.emit_stasis(events.stasis_end(channel), app)
    channel.stasis_app = None
    if channel.via_dialplan and app in engine.apps.apps:
        engine.apps.apps[app].unsubscribe("channel", channel.id)


def continue_in_dialplan(
    engine: Engine, channel: Channel, context: str, exten: str, priority: int
) -> None:
    """``POST /channels/{id}/continue``: out of the bridge and the app, back to dialplan.

    The double has no dialplan to run, so the channel then idles at the new
    location until something hangs it up.
    """
    engine.media.stop_target(f"channel:{channel.id}")
    if channel.bridge_id is not None and channel.bridge_id in engine.bridges:
        leave_bridge(engine, engine.bridges[channel.bridge_id], channel)
    leave_stasis(engine, channel)
    channel.dialplan = DialplanLocation(context, exten, priority, "", "")


def forget(engine: Engine, channel: Channel) -> None:
    """The channel is gone: drop it, its subscriptions and its RTP socket."""
    engine.channels.pop(channel.id, None)
    engine.bridge_media.channel_gone(channel.id)
    sink = engine.rtp_sinks.get(channel.id)
    if sink is not None:
        sink.close()
    for app in engine.apps.apps.values():
        app.unsubscribe("channel", channel.id)
    if channel.external_media is not None:
        engine.rtp_ports.release(channel.external_media.local_port)
    engine.apps.cleanup()


# --- bridges --------------------------------------------------------------------------


def _peers_value(engine: Engine, bridge: Bridge, channel_id: str) -> str:
    names = [engine.channels[c].name for c in bridge.channels if c != channel_id]
    return ",".join(names)


def _update_peers(engine: Engine, bridge: Bridge, skip: str | None = None) -> None:
    if len(bridge.channels) < 2:
        return
    for member_id in bridge.channels:
        if member_id == skip:
            continue
        member = engine.channels[member_id]
        set_variable(engine, member, "BRIDGEPEER", _peers_value(engine, bridge, member_id))


def join_bridge(engine: Engine, bridge: Bridge, channel: Channel) -> None:
    """``addChannel``: leave any other bridge, enter, announce, update BRIDGEPEER."""
    if channel.bridge_id == bridge.id:
        return
    if channel.bridge_id is not None and channel.bridge_id in engine.bridges:
        leave_bridge(engine, engine.bridges[channel.bridge_id], channel)
    bridge.channels.append(channel.id)
    channel.bridge_id = bridge.id
    bridge.reevaluate_technology()
    if channel.stasis_app is not None and channel.stasis_app in engine.apps.apps:
        engine.apps.apps[channel.stasis_app].subscribe("bridge", bridge.id)
    engine.emit_bridge(events.channel_entered_bridge(bridge, channel), bridge, channel)
    _update_peers(engine, bridge)
    engine.bridge_media.refresh(bridge)


def leave_bridge(engine: Engine, bridge: Bridge, channel: Channel) -> None:
    """``removeChannel`` or hangup: BRIDGEPEER cleared, ChannelLeftBridge, peers updated."""
    if channel.id not in bridge.channels:
        return
    if channel.variables.get("BRIDGEPEER"):
        set_variable(engine, channel, "BRIDGEPEER", "")
    bridge.channels.remove(channel.id)
    channel.bridge_id = None
    engine.bridge_media.refresh(bridge)
    engine.emit_bridge(events.channel_left_bridge(bridge, channel), bridge, channel)
    bridge.reevaluate_technology()
    _update_peers(engine, bridge)


def destroy_bridge(engine: Engine, bridge: Bridge) -> None:
    """``DELETE /bridges/{id}``: members leave, then BridgeDestroyed to its subscribers."""
    for member_id in list(bridge.channels):
        member = engine.channels.get(member_id)
        if member is not None:
            leave_bridge(engine, bridge, member)
    engine.media.stop_target(f"bridge:{bridge.id}")
    engine.emit_bridge(events.bridge_destroyed(bridge), bridge, None)
    engine.bridges.pop(bridge.id, None)
    for app in engine.apps.apps.values():
        app.unsubscribe("bridge", bridge.id)
    engine.apps.cleanup()
