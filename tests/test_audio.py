"""Telephony audio conversions, checked against the G.711 reference and real speech."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from vagent.services.audio import (
    Audio,
    AudioFormatError,
    read_wav,
    silence,
    slin16_le,
    ulaw_decode,
    ulaw_encode,
    write_wav,
)


def _g711_reference(sample: int) -> int:
    """The classic CCITT G.711 mu-law encoder, one sample at a time."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, (magnitude >> 7).bit_length() - 1)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone(freq: float, seconds: float, rate: int, amplitude: float = 8000) -> Audio:
    t = np.arange(int(seconds * rate)) / rate
    return Audio.from_array(amplitude * np.sin(2 * np.pi * freq * t), rate)


def test_ulaw_encoder_matches_the_reference_for_every_sample() -> None:
    every = Audio.from_array(np.arange(-32768, 32768), 8000)
    expected = bytes(_g711_reference(s) for s in range(-32768, 32768))
    assert ulaw_encode(every) == expected


def test_ulaw_round_trip_keeps_the_signal() -> None:
    original = tone(1000, 1.0, 8000)
    decoded = ulaw_decode(ulaw_encode(original))
    assert decoded.rate == 8000 and decoded.samples == 8000
    error = decoded.array().astype(float) - original.array().astype(float)
    assert np.sqrt(np.mean(error**2)) < 0.03 * original.rms()


def test_silence_is_0xff_in_ulaw() -> None:
    assert set(ulaw_encode(silence(0.02))) == {0xFF}


def test_resampling_24k_to_8k_keeps_voice_band_and_removes_aliases() -> None:
    voice = tone(1000, 1.0, 24000)
    above_nyquist = tone(6000, 1.0, 24000)  # would alias to 2 kHz with naive decimation
    assert len(ulaw_encode(voice)) == 8000
    assert voice.resample(8000).rms() == pytest.approx(voice.rms(), rel=0.05)
    assert above_nyquist.resample(8000).rms() < 0.02 * above_nyquist.rms()


def test_slin16_is_16k_little_endian() -> None:
    data = slin16_le(tone(440, 0.5, 24000))
    assert len(data) == 2 * 8000


def test_wav_round_trip_and_bad_input() -> None:
    audio = tone(500, 0.3, 16000)
    assert read_wav(write_wav(audio)) == audio
    with pytest.raises(AudioFormatError, match="not a readable WAV"):
        read_wav(b"RIFF\x00\x00not a wav")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")
def test_real_speech_from_espeak_converts_to_telephony() -> None:
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "hello world"], capture_output=True, check=True
    ).stdout
    speech = read_wav(wav)
    assert speech.rate == 22050 and 0.5 < speech.duration_s < 3
    ulaw = ulaw_encode(speech)
    assert len(ulaw) == pytest.approx(speech.duration_s * 8000, abs=2)
    assert ulaw_decode(ulaw).rms() > 500
