"""ARI event bodies with exactly the fields and field order of Asterisk 22.10.1.

Reference: ``ari-samples/events.jsonl``. Asterisk builds the body, then the
websocket layer appends ``asterisk_id`` and ``application``; a few types
differ and are spelled out here (``ChannelVarset`` and
``ChannelHangupRequest`` put their own fields *before* ``type``,
``ChannelTalkingFinished`` puts ``duration`` first, ``ApplicationReplaced``
and ``RESTResponse`` have their own order).
"""

from __future__ import annotations

from typing import Any

from .clock import ari_timestamp
from .models import Bridge, Channel, Playback

JsonDict = dict[str, Any]

#: Q.850 cause texts exactly as ``ast_cause2str`` (main/channel.c, 22.10.1) spells them.
CAUSE_TEXT = {
    1: "Unallocated (unassigned) number",
    2: "No route to specified transmit network",
    3: "No route to destination",
    5: "Misdialed trunk prefix",
    6: "Channel unacceptable",
    7: "Call awarded and being delivered in an established channel",
    8: "Pre-empted",
    14: "Number ported elsewhere",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    20: "Subscriber absent",
    21: "Call Rejected",
    22: "Number changed",
    23: "Redirected to new destination",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format",
    29: "Facility rejected",
    30: "Response to STATus ENQuiry",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    43: "Access information discarded",
    44: "Requested channel not available",
    50: "Facility not subscribed",
    52: "Outgoing call barred",
    54: "Incoming call barred",
    57: "Bearer capability not authorized",
    58: "Bearer capability not available",
    65: "Bearer capability not implemented",
    66: "Channel not implemented",
    69: "Facility not implemented",
    81: "Invalid call reference value",
    88: "Incompatible destination",
    95: "Invalid message unspecified",
    96: "Mandatory information element is missing",
    97: "Message type nonexist.",
    98: "Wrong message",
    99: "Info. element nonexist or not implemented",
    100: "Invalid information element contents",
    101: "Message not compatible with call state",
    102: "Recover on timer expiry",
    103: "Mandatory IE length error",
    111: "Protocol error, unspecified",
    127: "Interworking, unspecified",
}


def _typed(event_type: str, **fields: Any) -> JsonDict:
    return {"type": event_type, "timestamp": ari_timestamp(), **fields}


def finalize(event: JsonDict, asterisk_id: str, application: str) -> JsonDict:
    """Append the two trailing fields every app event carries."""
    return {**event, "asterisk_id": asterisk_id, "application": application}


def stasis_start(channel: Channel) -> JsonDict:
    return _typed("StasisStart", args=list(channel.stasis_args), channel=channel.to_json())


def stasis_end(channel: Channel) -> JsonDict:
    return _typed("StasisEnd", channel=channel.to_json())


def channel_state_change(channel: Channel) -> JsonDict:
    return _typed("ChannelStateChange", channel=channel.to_json())


def channel_varset(channel: Channel, variable: str, value: str) -> JsonDict:
    return {
        "variable": variable,
        "value": value,
        **_typed("ChannelVarset", channel=channel.to_json()),
    }


def channel_hangup_request(channel: Channel, cause: int, soft: bool) -> JsonDict:
    head: JsonDict = {"cause": cause}
    if soft:
        head["soft"] = True
    return {**head, **_typed("ChannelHangupRequest", channel=channel.to_json())}


def channel_destroyed(channel: Channel, cause: int) -> JsonDict:
    return _typed(
        "ChannelDestroyed",
        cause=cause,
        cause_txt=CAUSE_TEXT.get(cause, "Unknown"),
        channel=channel.to_json(),
    )


def dial(peer: Channel, dialstatus: str, dialstring: str) -> JsonDict:
    return _typed(
        "Dial", dialstatus=dialstatus, forward="", dialstring=dialstring, peer=peer.to_json()
    )


def channel_entered_bridge(bridge: Bridge, channel: Channel) -> JsonDict:
    return _typed("ChannelEnteredBridge", bridge=bridge.to_json(), channel=channel.to_json())


def channel_left_bridge(bridge: Bridge, channel: Channel) -> JsonDict:
    return _typed("ChannelLeftBridge", bridge=bridge.to_json(), channel=channel.to_json())


def bridge_created(bridge: Bridge) -> JsonDict:
    return _typed("BridgeCreated", bridge=bridge.to_json())


def bridge_destroyed(bridge: Bridge) -> JsonDict:
    return _typed("BridgeDestroyed", bridge=bridge.to_json())


def playback_event(event_type: str, playback: Playback) -> JsonDict:
    """PlaybackStarted / PlaybackContinuing / PlaybackFinished."""
    return _typed(event_type, playback=playback.to_json())


def application_replaced(application: str, asterisk_id: str) -> JsonDict:
    """Sent to the websocket that lost the app; note the field order."""
    return {
        "type": "ApplicationReplaced",
        "timestamp": ari_timestamp(),
        "application": application,
        "asterisk_id": asterisk_id,
    }


def rest_response_parse_error(application: str, asterisk_id: str) -> JsonDict:
    """What a non-JSON text frame on the events websocket gets (events.jsonl 701)."""
    return {
        "type": "RESTResponse",
        "transaction_id": "",
        "request_id": "",
        "status_code": 400,
        "reason_phrase": "Failed to parse request message JSON",
        "uri": "",
        "application": application,
        "timestamp": ari_timestamp(),
        "asterisk_id": asterisk_id,
    }
