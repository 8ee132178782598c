"""The objects of the simulated PBX and their JSON, key order included.

The key order is part of the contract: the captured events are the reference
(``events.jsonl``), and a client that happens to depend on it (or a test that
compares shapes) must see the same thing from the double. Every ``to_json``
below follows the order of the real snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

#: ``Outgoing Line`` is what an originated/ExternalMedia channel runs before Stasis.
OUTGOING_APP = ("AppDial2", "(Outgoing Line)")


@dataclass
class CallerId:
    name: str = ""
    number: str = ""

    def to_json(self) -> JsonDict:
        return {"name": self.name, "number": self.number}


@dataclass
class DialplanLocation:
    context: str
    exten: str
    priority: int
    app_name: str
    app_data: str

    def to_json(self) -> JsonDict:
        return {
            "context": self.context,
            "exten": self.exten,
            "priority": self.priority,
            "app_name": self.app_name,
            "app_data": self.app_data,
        }


@dataclass
class ExternalMediaInfo:
    """What an ExternalMedia RTP channel was created with (for the media layer)."""

    external_host: str
    format: str
    encapsulation: str
    transport: str
    local_address: str
    local_port: int


@dataclass
class Channel:
    """An Asterisk channel as ARI snapshots it."""

    id: str
    name: str
    state: str
    caller: CallerId
    connected: CallerId
    dialplan: DialplanLocation
    creationtime: str
    language: str = "en"
    accountcode: str = ""
    protocol_id: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    #: Stasis app the channel is in (None: in the dialplan).
    stasis_app: str | None = None
    stasis_args: list[str] = field(default_factory=list)
    #: True when the channel entered Stasis through dialplan ``Stasis()``: the app's
    #: subscription ends with StasisEnd and it never sees ChannelDestroyed.
    via_dialplan: bool = False
    bridge_id: str | None = None
    external_media: ExternalMediaInfo | None = None

    def to_json(self) -> JsonDict:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": self.protocol_id,
            "caller": self.caller.to_json(),
            "connected": self.connected.to_json(),
            "accountcode": self.accountcode,
            "dialplan": self.dialplan.to_json(),
            "creationtime": self.creationtime,
            "language": self.language,
        }

    def enter_stasis(self, app: str, args: list[str]) -> None:
        """Run ``Stasis(app,args...)``: the snapshot's dialplan app changes."""
        self.stasis_app = app
        self.stasis_args = list(args)
        self.dialplan.app_name = "Stasis"
        self.dialplan.app_data = ",".join([app, *args])


@dataclass
class Bridge:
    """A Stasis bridge.

    A ``mixing`` bridge reports ``simple_bridge`` with up to two channels and
    ``softmix`` from the third on (README item 6). The technology in a
    ChannelLeftBridge snapshot is the one before re-evaluation.
    """

    id: str
    bridge_type: str
    name: str
    creationtime: str
    technology: str = "simple_bridge"
    channels: list[str] = field(default_factory=list)
    video_mode: str = "talker"

    def to_json(self) -> JsonDict:
        return {
            "id": self.id,
            "technology": self.technology,
            "bridge_type": self.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": self.name,
            "channels": list(self.channels),
            "creationtime": self.creationtime,
            "video_mode": self.video_mode,
        }

    def reevaluate_technology(self) -> None:
        if self.video_mode == "sfu":
            self.technology = "softmix"
        elif self.bridge_type == "holding":
            self.technology = "holding_bridge"
        else:
            self.technology = "softmix" if len(self.channels) > 2 else "simple_bridge"


@dataclass
class Playback:
    """A playback of one or more media URIs on a channel or bridge."""

    id: str
    media: list[str]
    target_uri: str
    language: str
    state: str = "queued"
    index: int = 0

    @property
    def media_uri(self) -> str:
        return self.media[self.index]

    @property
    def next_media_uri(self) -> str | None:
        return self.media[self.index + 1] if self.index + 1 < len(self.media) else None

    @property
    def target_kind(self) -> str:
        return self.target_uri.split(":", 1)[0]

    @property
    def target_id(self) -> str:
        return self.target_uri.split(":", 1)[1]

    def to_json(self) -> JsonDict:
        body: JsonDict = {"id": self.id, "media_uri": self.media_uri}
        if self.next_media_uri is not None:
            body["next_media_uri"] = self.next_media_uri
        body.update(target_uri=self.target_uri, language=self.language, state=self.state)
        return body


@dataclass
class Application:
    """A Stasis application: registered by an events websocket, or lingering.

    Asterisk keeps an app whose websocket went away as long as something still
    subscribes it (a channel in Stasis); ``GET /applications/{name}`` then still
    answers. An app with neither a websocket nor subscriptions is removed (404).
    """

    name: str
    session_id: str | None = None
    subscribe_all: bool = False
    channel_ids: list[str] = field(default_factory=list)
    bridge_ids: list[str] = field(default_factory=list)
    endpoint_ids: list[str] = field(default_factory=list)
    device_names: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.session_id is not None

    def to_json(self) -> JsonDict:
        return {
            "name": self.name,
            "channel_ids": list(self.channel_ids),
            "bridge_ids": list(self.bridge_ids),
            "endpoint_ids": list(self.endpoint_ids),
            "device_names": list(self.device_names),
            "events_allowed": [],
            "events_disallowed": [],
        }

    def subscribe(self, kind: str, object_id: str) -> None:
        ids = self.channel_ids if kind == "channel" else self.bridge_ids
        if object_id not in ids:
            ids.append(object_id)

    def unsubscribe(self, kind: str, object_id: str) -> None:
        ids = self.channel_ids if kind == "channel" else self.bridge_ids
        if object_id in ids:
            ids.remove(object_id)

    def is_subscribed(self, kind: str, object_id: str) -> bool:
        if self.subscribe_all:
            return True
        return object_id in (self.channel_ids if kind == "channel" else self.bridge_ids)
