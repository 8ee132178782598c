"""A faithful test double of Asterisk 22.10.1's ARI (REST + events websocket).

Product code is pointed at :attr:`AriDouble.base_url` and cannot tell it from
Asterisk: requests are validated against the real Swagger files and answered
with the statuses and bodies captured from a real Asterisk; events have the
captured shapes and field order. Tests steer it (inbound calls, hangups,
faults, restarts) and read what happened from its journal.

    with AriDouble() as ari:
        ...connect the product to ari.base_url / ari.events_url()...
        ari.wait_for_app("vagent")
        channel_id = ari.start_inbound_call(args=["inbound", "100"], caller="1001")
        ari.say(channel_id, wav_bytes)      # real RTP once bridged with ExternalMedia
        ari.heard(channel_id)               # what the app played back to the caller

Media follows rtp-notes.md (see media_api.py for the whole media API).
"""

from __future__ import annotations

from .caller import SpeechRecord
from .config import DoubleConfig
from .double import AriDouble, DoubleViolations
from .flows import AppNotRegistered
from .journal import EventRecord, RequestRecord, Violation
from .media import PlaybackRecord
from .recorder import PacketRecord
from .rtp_stream import SentPacket

__all__ = [
    "AppNotRegistered",
    "AriDouble",
    "DoubleConfig",
    "DoubleViolations",
    "EventRecord",
    "PacketRecord",
    "PlaybackRecord",
    "RequestRecord",
    "SentPacket",
    "SpeechRecord",
    "Violation",
]
