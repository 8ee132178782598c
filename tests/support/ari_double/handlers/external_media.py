"""``POST /channels/externalMedia`` (``ast_ari_channels_external_media``).

Validation runs in Asterisk's order with Asterisk's messages (rest.jsonl
244-251, 175-176, 192-193). The RTP/UDP flavour is implemented: the response
says ``Down`` and carries ``channelvars`` with UNICASTRTP_LOCAL_ADDRESS/PORT,
while the app at once gets Dial -> ChannelStateChange(Up) -> Dial(ANSWER) ->
ChannelVarset STASISSTATUS -> StasisStart(Up, args []) (events.jsonl
167-171). AudioSocket and WebSocket media pass the same validation and then
get a 501 naming the double's gap. The channel's media (what it sends into
and receives from the app) lives in rtp_stream.py and bridge_media.py.
"""

from __future__ import annotations

import time
from typing import Any

from .. import events, flows
from ..config import AUDIO_FORMATS
from ..engine import Engine
from ..models import OUTGOING_APP, CallerId, Channel, DialplanLocation, ExternalMediaInfo
from ..params import DecodedArgs
from ..responses import AriResponse, error, ok
from ..rtp import RtpSink, bind_rtp_socket, start_sink
from ..rtp_stream import ExternalRtpStream, resolve_external_host
from ..strict_rtp import StrictRtp
from .registry import handler

INTERNAL_ERROR = "An internal error prevented this request from being handled"


def _variables_error(variables: Any) -> AriResponse | None:
    """``json_to_ast_variables``: non-object containers are silently ignored."""
    if not isinstance(variables, dict):
        return None
    for key, value in variables.items():
        if not key or isinstance(value, str):
            continue
        if isinstance(value, dict):
            if not isinstance(value.get("value"), str):
                return error(
                    400, "Each object value in 'variables' must include string field 'value'"
                )
            if "report_events" in value and not isinstance(value["report_events"], bool):
                return error(400, "Field 'report_events' in 'variables' entries must be boolean")
            continue
        return error(
            400,
            "Each value in 'variables' must be a string or an object with 'value' and "
            "optional 'report_events'",
        )
    return None


def _has_port(external_host: str) -> bool:
    """``ast_sockaddr_split_hostport(..., PARSE_PORT_REQUIRE)``."""
    if external_host.startswith("["):
        host, bracket, rest = external_host[1:].partition("]")
        return bool(host and bracket and rest.startswith(":") and rest[1:])
    host, colon, port = external_host.rpartition(":")
    return bool(colon and host and port)


def _transport_error(encapsulation: str, transport: str, connection_type: str) -> str | None:
    if transport == "websocket" and encapsulation != "none":
        return "encapsulation must be 'none' for websocket transport"
    if encapsulation == "rtp" and transport != "udp":
        return "transport must be 'udp' for rtp encapsulation"
    if encapsulation == "audiosocket" and transport != "tcp":
        return "transport must be 'tcp' for audiosocket encapsulation"
    if transport != "websocket" and connection_type == "server":
        return "'server' connection_type can only be used with the websocket transport"
    return None


def _validate(args: DecodedArgs) -> AriResponse | None:
    body = args.body if isinstance(args.body, dict) else {}
    problem = _variables_error(body.get("variables"))
    if problem is not None:
        return problem
    if not args.text("app"):
        return error(400, "app cannot be empty")
    encapsulation = args.text("encapsulation") or "rtp"
    transport = args.text("transport") or "udp"
    connection_type = args.text("connection_type") or "client"
    message = _transport_error(encapsulation, transport, connection_type)
    if message:
        return error(400, message)
    external_host = args.text("external_host")
    if not external_host and connection_type == "client":
        return error(400, "external_host is required for all but websocket server connections")
    if transport == "websocket":
        if connection_type == "client":
            return error(400, "external_host must be a valid websocket_client connection id.")
    elif not _has_port(external_host or ""):
        return error(
            400, "external_host must be <host>:<port> for all transports other than websocket"
        )
    if not args.text("format"):
        return error(400, "format cannot be empty")
    direction = args.text("direction")
    if direction and direction not in ("both", "in", "out"):
        return error(400, "Invalid direction specified")
    return None


def _create_rtp_channel(engine: Engine, args: DecodedArgs) -> Channel | AriResponse:
    external_host, fmt = args.text("external_host") or "", args.text("format") or ""
    channel_id = args.text("channelId")
    if fmt not in AUDIO_FORMATS or (channel_id and channel_id in engine.channels):
        return error(500, INTERNAL_ERROR)
    channel = flows.new_channel(
        engine,
        name=f"UnicastRTP/{external_host}-{engine.ids.pointer()}",
        state="Down",
        caller=CallerId(),
        dialplan=DialplanLocation("default", "s", 1, *OUTGOING_APP),
        channel_id=channel_id,
    )
    bound = bind_rtp_socket(engine.config.rtp_address, engine.rtp_ports.candidates())
    if bound is None:
        flows.forget(engine, channel)
        return error(500, INTERNAL_ERROR)
    port, sock = bound
    engine.rtp_ports.claim(port)
    sink = engine.rtp_sinks[channel.id] = start_sink(engine.loop, sock)
    engine.bridge_media.add_stream(_rtp_stream(engine, channel.id, external_host, fmt, sink))
    channel.external_media = ExternalMediaInfo(
        external_host, fmt, "rtp", "udp", engine.config.rtp_address, port
    )
    channel.variables["UNICASTRTP_LOCAL_ADDRESS"] = engine.config.rtp_address
    channel.variables["UNICASTRTP_LOCAL_PORT"] = str(port)
    body = args.body if isinstance(args.body, dict) else {}
    if isinstance(body.get("variables"), dict):
        for key, value in body["variables"].items():
            text = value if isinstance(value, str) else value.get("value")
            if key and isinstance(text, str):
                channel.variables[key] = text
    return channel


def _rtp_stream(
    engine: Engine, channel_id: str, external_host: str, fmt: str, sink: RtpSink
) -> ExternalRtpStream:
    """Media for the channel: sends to ``external_host``, which strict RTP trusts first."""
    config = engine.config
    destination = resolve_external_host(external_host)
    strict = StrictRtp(
        destination,
        time.monotonic(),
        window=config.strict_rtp_window,
        probation=config.strict_rtp_probation,
        enabled=config.strict_rtp,
    )
    return ExternalRtpStream(
        channel_id, fmt, destination, sink, strict, time_scale=config.rtp_time_scale
    )


def _dial_into_stasis(engine: Engine, channel: Channel, app: str, data: str | None) -> None:
    """The originate-with-app sequence of an ExternalMedia channel."""
    if engine.apps.active(app) is None:
        flows.hangup(engine, channel, cause=flows.CAUSE_NORMAL, from_app=False)
        return
    engine.apps.apps[app].subscribe("channel", channel.id)
    info = channel.external_media
    dialstring = f"{info.external_host}/c({info.format})" if info else ""
    engine.emit_channel(events.dial(channel, "", dialstring), channel)
    flows.set_state(engine, channel, "Up")
    engine.emit_channel(events.dial(channel, "ANSWER", dialstring), channel)
    channel.enter_stasis(app, [data] if data else [])
    flows.set_variable(engine, channel, "STASISSTATUS", "")
    engine.emit_stasis(events.stasis_start(channel), app)


@handler("channels.externalMedia")
def external_media(engine: Engine, args: DecodedArgs) -> AriResponse:
    problem = _validate(args)
    if problem is not None:
        return problem
    encapsulation = (args.text("encapsulation") or "rtp").lower()
    transport = (args.text("transport") or "udp").lower()
    if encapsulation == "audiosocket" and transport == "tcp":
        if not args.text("data"):
            return error(400, "data can not be empty")
        return error(501, "ARI double does not implement externalMedia encapsulation=audiosocket")
    if encapsulation == "none" and transport == "websocket":
        return error(501, "ARI double does not implement externalMedia transport=websocket")
    if encapsulation != "rtp" or transport != "udp":
        return error(501, "The encapsulation and/or transport is not supported")
    channel = _create_rtp_channel(engine, args)
    if isinstance(channel, AriResponse):
        return channel
    snapshot = channel.to_json()
    snapshot["channelvars"] = dict(reversed(list(channel.variables.items())))
    _dial_into_stasis(engine, channel, args.text("app") or "", args.text("data"))
    return ok(snapshot)
