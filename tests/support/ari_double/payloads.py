"""RTP payload formats of an ExternalMedia channel, both directions.

Sending follows the measured table of rtp-notes.md section 1: ``ulaw`` PT 0
and ``alaw`` PT 8 with 160-byte payloads, ``slin`` PT **10** with 320 bytes
of big-endian 8 kHz samples, ``slin16`` PT **118** with 640 bytes of
big-endian 16 kHz samples, one packet per 20 ms.

Receiving follows what Asterisk *accepts*: it decodes by payload type, not
by the channel's format, and only the static types are mapped: 0 (G.711
mu-law), 8 (G.711 A-law), 10 and 11 (L16 big-endian, recorded as 8 kHz).
Dynamic PT 118 is silently dropped, so ``slin16`` is one-way unless the app
answers with a static type.

G.711 is implemented here from the reference algorithm (Sun's g711.c)
instead of reusing the product's codec, so that a bug in the product's
encoder cannot cancel out against the same bug in the double.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]

FRAME_SECONDS = 0.020
NARROWBAND = 8000
WIDEBAND = 16000

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)

#: Why Asterisk ignores an inbound payload type (it logs nothing for these).
PT_DYNAMIC_SLIN16 = 118


def as_samples(values: npt.ArrayLike) -> Samples:
    """Round and clip to signed 16-bit, the only sample type on the wire."""
    array = np.clip(np.rint(np.asarray(values, dtype=np.float64)), -32768, 32767)
    return array.astype(np.int16)


def ulaw_encode(samples: Samples) -> bytes:
    """G.711 mu-law: 0 becomes 0xff, which is why Asterisk's silence is all 0xff."""
    data = samples.astype(np.int32)
    sign = np.where(data < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(data), _ULAW_CLIP) + _ULAW_BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return bytes(code.astype(np.uint8).tobytes())


def ulaw_decode(payload: bytes) -> Samples:
    code = ~np.frombuffer(payload, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def alaw_encode(samples: Samples) -> bytes:
    """G.711 A-law (linear2alaw of g711.c on 16-bit input): 0 becomes 0xd5."""
    value = samples.astype(np.int32) >> 3
    negative = value < 0
    mask = np.where(negative, 0x55, 0xD5)
    value = np.where(negative, -value - 1, value)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, value, side="left").astype(np.int32)
    shift = np.where(segment < 2, 1, segment)
    code = (np.minimum(segment, 7) << 4) | ((value >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8).tobytes()


def alaw_decode(payload: bytes) -> Samples:
    code = np.frombuffer(payload, dtype=np.uint8).astype(np.int32) ^ 0x55
    mantissa = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    magnitude = np.where(segment == 0, mantissa + 8, mantissa + 0x108)
    magnitude = np.where(segment > 1, magnitude << np.maximum(segment - 1, 0), magnitude)
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def l16_encode(samples: Samples) -> bytes:
    """Network byte order: Asterisk's L16 (PT 10/118) is big-endian on the wire."""
    return samples.astype(">i2").tobytes()


def l16_decode(payload: bytes) -> Samples:
    usable = len(payload) - len(payload) % 2
    return np.frombuffer(payload[:usable], dtype=">i2").astype(np.int16)


@dataclass(frozen=True)
class SendFormat:
    """How Asterisk packetises one ExternalMedia ``format`` toward the app."""

    name: str
    payload_type: int
    rate: int
    encode: Callable[[Samples], bytes]

    @property
    def samples_per_frame(self) -> int:
        """Also the first timestamp and the timestamp step (160 or 320)."""
        return round(self.rate * FRAME_SECONDS)


SEND_FORMATS: dict[str, SendFormat] = {
    "ulaw": SendFormat("ulaw", 0, NARROWBAND, ulaw_encode),
    "alaw": SendFormat("alaw", 8, NARROWBAND, alaw_encode),
    "slin": SendFormat("slin", 10, NARROWBAND, l16_encode),
    "slin16": SendFormat("slin16", PT_DYNAMIC_SLIN16, WIDEBAND, l16_encode),
}

#: Inbound payload types Asterisk maps, decoded to 8 kHz samples.
RECEIVE_DECODERS: dict[int, Callable[[bytes], Samples]] = {
    0: ulaw_decode,
    8: alaw_decode,
    10: l16_decode,
    11: l16_decode,
}


def receive_refusal(payload_type: int) -> str | None:
    """None if Asterisk decodes this payload type, else why it silently drops it."""
    if payload_type in RECEIVE_DECODERS:
        return None
    if payload_type == PT_DYNAMIC_SLIN16:
        return "dynamic payload type 118 is not mapped for receive (slin16 is one-way)"
    if payload_type >= 96:
        return f"dynamic payload type {payload_type} is not mapped for receive"
    return f"static payload type {payload_type} is not decoded by the double"
