"""Telephony audio: one in-memory form, and the conversions the phone line needs.

Inside vagent audio is 16-bit signed little-endian mono PCM at some rate
(`Audio`). The phone side wants 8 kHz G.711 mu-law (RTP payload type 0) or
16 kHz signed linear; OpenAI TTS gives 24 kHz PCM and espeak-ng 22.05 kHz.
Resampling uses soxr (band-limited), never naive decimation, which would
alias the 24 kHz voice into the 4 kHz telephone band.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np
import soxr

TELEPHONY_RATE = 8000
WIDEBAND_RATE = 16000
FRAME_MS = 20

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635
# The classic G.711 segment table: the exponent is the position of the top bit of magnitude >> 7.
_EXPONENT = np.array([0] + [int(i).bit_length() - 1 for i in range(1, 256)], dtype=np.int32)


class AudioFormatError(ValueError):
    """Audio bytes that cannot be understood; the message says what was expected."""


@dataclass(frozen=True)
class Audio:
    pcm: bytes  # 16-bit signed little-endian mono
    rate: int

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def duration_s(self) -> float:
        return self.samples / self.rate if self.rate else 0.0

    def array(self) -> np.ndarray:
        return np.frombuffer(self.pcm[: self.samples * 2], dtype="<i2")

    @classmethod
    def from_array(cls, samples: np.ndarray, rate: int) -> Audio:
        clipped = np.clip(np.rint(samples), -32768, 32767).astype("<i2")
        return cls(clipped.tobytes(), rate)

    def resample(self, rate: int) -> Audio:
        if rate == self.rate or not self.pcm:
            return Audio(self.pcm, rate)
        converted = soxr.resample(self.array().astype(np.float32), self.rate, rate, quality="HQ")
        return Audio.from_array(converted, rate)

    def rms(self) -> float:
        data = self.array().astype(np.float64)
        return float(np.sqrt(np.mean(data**2))) if data.size else 0.0


def silence(seconds: float, rate: int = TELEPHONY_RATE) -> Audio:
    return Audio(bytes(2 * round(seconds * rate)), rate)


def ulaw_encode(audio: Audio) -> bytes:
    """G.711 mu-law of the audio resampled to 8 kHz."""
    data = audio.resample(TELEPHONY_RATE).array().astype(np.int32)
    sign = np.where(data < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(data), _ULAW_CLIP) + _ULAW_BIAS
    exponent = _EXPONENT[(magnitude >> 7) & 0xFF]
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    encoded = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return bytes(encoded.astype(np.uint8).tobytes())


def ulaw_decode(data: bytes) -> Audio:
    """8 kHz mu-law bytes to PCM."""
    codes = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return Audio.from_array(np.where(sign != 0, -magnitude, magnitude), TELEPHONY_RATE)


def slin16_le(audio: Audio) -> bytes:
    """16 kHz signed linear, little-endian (Asterisk's .sln16 files, AudioSocket)."""
    return audio.resample(WIDEBAND_RATE).pcm


def read_wav(data: bytes) -> Audio:
    """A mono or stereo 16-bit WAV; stereo is mixed down."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioFormatError(f"not a readable WAV file: {exc}") from None
    if width != 2:
        raise AudioFormatError(f"WAV must be 16-bit PCM, got {8 * width}-bit")
    samples = np.frombuffer(frames[: len(frames) - len(frames) % (2 * channels)], dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return Audio.from_array(samples, rate)


def write_wav(audio: Audio) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(audio.rate)
        wav.writeframes(audio.pcm)
    return out.getvalue()
