"""``/channels`` (resource_channels.c): the checks run in Asterisk's order.

The order matters because it decides which error a client sees when a
request is wrong in several ways at once (e.g. ``GET .../variable`` without
``variable`` on an unknown channel is 400, not 404).
"""

from __future__ import annotations

import re

from .. import flows
from ..engine import Engine
from ..models import Channel, Playback
from ..params import DecodedArgs
from ..responses import AriResponse, created, error, no_content, ok
from .registry import channel_state_invalid, find_control, handler

#: ``convert_reason_to_hangup_code`` of resource_channels.c.
HANGUP_REASONS = {
    "normal": 16,
    "busy": 17,
    "congestion": 34,
    "no_answer": 19,
    "timeout": 18,
    "rejected": 21,
    "unallocated": 1,
    "normal_unspecified": 31,
    "number_incomplete": 28,
    "codec_mismatch": 58,
    "interworking": 127,
    "failure": 38,
    "answered_elsewhere": 26,
}


@handler("channels.list")
def list_channels(engine: Engine, args: DecodedArgs) -> AriResponse:
    return ok([channel.to_json() for channel in engine.channels.values()])


@handler("channels.get")
def get_channel(engine: Engine, args: DecodedArgs) -> AriResponse:
    channel = engine.channels.get(args.path["channelId"])
    return ok(channel.to_json()) if channel else error(404, "Channel not found")


def _hangup_cause(args: DecodedArgs) -> int | AriResponse:
    reason, reason_code = args.text("reason"), args.text("reason_code")
    if reason and reason_code:
        return error(400, "The reason and reason_code can't both be specified")
    if reason_code:
        match = re.match(r"\s*([+-]?\d+)", reason_code)
        if match is None:
            return error(400, "Invalid reason for hangup reason code provided")
        return int(match.group(1))
    if reason:
        cause = HANGUP_REASONS.get(reason)
        return (
            cause if cause is not None else error(400, "Invalid reason for hangup reason provided")
        )
    return flows.CAUSE_NORMAL


@handler("channels.hangup")
def hangup(engine: Engine, args: DecodedArgs) -> AriResponse:
    """``DELETE /channels/{id}``: works on channels outside Stasis too."""
    channel = engine.channels.get(args.path["channelId"])
    if channel is None:
        return error(404, "Channel not found")
    cause = _hangup_cause(args)
    if isinstance(cause, AriResponse):
        return cause
    flows.hangup(engine, channel, cause=cause, from_app=True)
    return no_content()


def _control_in_state(engine: Engine, channel_id: str) -> Channel | AriResponse:
    channel = find_control(engine, channel_id)
    if isinstance(channel, AriResponse):
        return channel
    invalid = channel_state_invalid(channel)
    return invalid if invalid is not None else channel


@handler("channels.answer")
def answer(engine: Engine, args: DecodedArgs) -> AriResponse:
    channel = _control_in_state(engine, args.path["channelId"])
    if isinstance(channel, AriResponse):
        return channel
    flows.set_state(engine, channel, "Up")
    return no_content()


@handler("channels.continueInDialplan")
def continue_in_dialplan(engine: Engine, args: DecodedArgs) -> AriResponse:
    channel = _control_in_state(engine, args.path["channelId"])
    if isinstance(channel, AriResponse):
        return channel
    location = channel.dialplan
    context = args.text("context")
    if context:
        exten = args.text("extension") or "s"
    else:
        context, exten = location.context, args.text("extension") or location.exten
    label = args.text("label")
    if label:
        if not label.lstrip("-").isdigit():
            return error(404, "Requested label can not be found")
        priority = int(label)
        if priority == 0:
            return error(400, "Requested priority is illegal")
    elif args.integer("priority"):
        priority = args.integer("priority")
    elif not args.text("context") and not args.text("extension"):
        priority = location.priority + 1
    else:
        priority = 1
    flows.continue_in_dialplan(engine, channel, context, exten, priority)
    return no_content()


def _play(engine: Engine, args: DecodedArgs, playback_id: str | None) -> AriResponse:
    channel = _control_in_state(engine, args.path["channelId"])
    if isinstance(channel, AriResponse):
        return channel
    if args.integer("skipms") < 0:
        return error(400, "skipms cannot be negative")
    if args.integer("offsetms") < 0:
        return error(400, "offsetms cannot be negative")
    media = args.items("media")
    if not media:
        return error(500, "Failed to queue media for playback")
    playback = Playback(
        id=playback_id or engine.ids.uuid(),
        media=media,
        target_uri=f"channel:{channel.id}",
        language=args.text("lang") or channel.language,
    )
    engine.media.enqueue(playback)
    return created(playback.to_json(), f"/ari/playbacks/{playback.id}")


@handler("channels.play")
def play(engine: Engine, args: DecodedArgs) -> AriResponse:
    return _play(engine, args, args.text("playbackId"))


@handler("channels.playWithId")
def play_with_id(engine: Engine, args: DecodedArgs) -> AriResponse:
    return _play(engine, args, args.path["playbackId"])


def _read_function(channel: Channel, expression: str) -> str | None:
    """The few dialplan functions a client plausibly reads over ARI."""
    values = {
        "CHANNEL(state)": channel.state,
        "CHANNEL(name)": channel.name,
        "CHANNEL(uniqueid)": channel.id,
        "CHANNEL(language)": channel.language,
        "CALLERID(num)": channel.caller.number,
        "CALLERID(name)": channel.caller.name,
    }
    if expression == "CHANNEL(audionativeformat)" and channel.external_media is not None:
        return f"({channel.external_media.format})"
    return values.get(expression)


@handler("channels.getChannelVar")
def get_channel_var(engine: Engine, args: DecodedArgs) -> AriResponse:
    variable = args.text("variable")
    if not variable:
        return error(400, "Variable name is required")
    channel = engine.channels.get(args.path["channelId"])
    if channel is None:
        return error(404, "Provided channel was not found")
    if variable.endswith(")"):
        value = _read_function(channel, variable)
        if value is None:
            return error(500, "Unable to read provided function")
        return ok({"value": value})
    if variable not in channel.variables:
        return error(404, "Provided variable was not found")
    return ok({"value": channel.variables[variable]})


@handler("channels.setChannelVar")
def set_channel_var(engine: Engine, args: DecodedArgs) -> AriResponse:
    """Plain variables raise ChannelVarset; functions (``TALK_DETECT(set)``) do not."""
    variable = args.text("variable")
    if not variable:
        return error(400, "Variable name is required")
    channel = find_control(engine, args.path["channelId"])
    if isinstance(channel, AriResponse):
        return channel
    if not variable.endswith(")"):
        flows.set_variable(engine, channel, variable, args.text("value") or "")
    return no_content()
