"""Media steering and inspection, run on the server loop.

Shared by :class:`~.media_api.MediaControls` (the Python API of the double)
and the ``/_double/`` control routes, like actions.py is for calls. Records
are copied on the way out because the loop keeps mutating the originals.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vagent.services.audio import read_wav

from .caller import HeardChunk, SimulatedCaller, SpeechRecord
from .engine import Engine
from .media import PlaybackRecord
from .payloads import Samples
from .recorder import PacketRecord
from .rtp_stream import ExternalRtpStream, SentPacket

#: What ``heard`` returns is always 8 kHz: the static payload types Asterisk decodes.
HEARD_RATE = 8000


def speech_samples(speech: Any) -> tuple[Samples, int]:
    """WAV bytes or an ``Audio`` (16-bit little-endian ``pcm`` at ``rate``) to samples."""
    if isinstance(speech, bytes | bytearray):
        speech = read_wav(bytes(speech))
    pcm, rate = getattr(speech, "pcm", None), getattr(speech, "rate", None)
    if not isinstance(pcm, bytes) or not isinstance(rate, int) or rate <= 0:
        raise TypeError("speech must be WAV bytes or an Audio with .pcm and .rate")
    usable = len(pcm) - len(pcm) % 2
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.int16), rate


def caller(engine: Engine, channel_id: str) -> SimulatedCaller:
    found = engine.bridge_media.callers.get(channel_id)
    if found is None:
        raise KeyError(f"no simulated caller on channel {channel_id!r} (not an inbound call)")
    return found


def stream(engine: Engine, channel_id: str) -> ExternalRtpStream:
    found = engine.bridge_media.streams.get(channel_id)
    if found is None:
        raise KeyError(f"no ExternalMedia RTP channel {channel_id!r}")
    return found


def say(engine: Engine, channel_id: str, samples: Samples, rate: int) -> SpeechRecord:
    return dataclasses.replace(caller(engine, channel_id).say(samples, rate))


def speaking(engine: Engine, channel_id: str) -> bool:
    return caller(engine, channel_id).speaking


def speech_log(engine: Engine, channel_id: str) -> list[SpeechRecord]:
    return [dataclasses.replace(record) for record in caller(engine, channel_id).speech]


def heard(engine: Engine, channel_id: str) -> Samples:
    """ExternalMedia channel: the app audio Asterisk accepted. Caller: what reached its ear."""
    media = engine.bridge_media
    if channel_id in media.streams:
        return media.streams[channel_id].recorder.heard()
    if channel_id in media.callers:
        return media.callers[channel_id].heard_samples()
    raise KeyError(f"{channel_id!r} is neither an ExternalMedia RTP channel nor an inbound call")


def heard_chunks(engine: Engine, channel_id: str, start: int = 0) -> list[HeardChunk]:
    """The caller's ear packet by packet, from index ``start``: arrival time and samples.

    Incremental on purpose: a soak polls many calls for minutes, and copying
    the whole ear on every poll would slow the loop that paces the RTP.
    """
    return list(caller(engine, channel_id).heard[start:])


def rtp_log(engine: Engine, channel_id: str) -> list[PacketRecord]:
    return list(stream(engine, channel_id).recorder.log)


def rtp_sent(engine: Engine, channel_id: str) -> list[SentPacket]:
    return list(stream(engine, channel_id).sent)


def external_media_channels(engine: Engine) -> list[str]:
    """ExternalMedia RTP channel ids of this boot, oldest first (hung up ones too)."""
    return list(engine.bridge_media.streams)


def playback_log(engine: Engine, target_id: str) -> list[PlaybackRecord]:
    """Playbacks on the channel or bridge ``target_id``, oldest first."""
    return [
        dataclasses.replace(record, started=list(record.started))
        for record in engine.media.history
        if record.target_id == target_id
    ]
