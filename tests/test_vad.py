"""VAD and endpointing on real speech: espeak-ng voices through the telephone
(8 kHz, mu-law round trip), with silence, line hiss, clicks and noise around them.

Speech boundaries are measured on the clean speech (first and last sample
above 2% of the peak); the endpointer must find them through the noise.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
from typing import TypeVar

import numpy as np
import pytest

from vagent.services.audio import Audio, read_wav, ulaw_decode, ulaw_encode
from vagent.services.call_controller.vad import (
    Endpointer,
    EndpointerConfig,
    EndpointEvent,
    SpeechDiscarded,
    SpeechStarted,
    UtteranceEnded,
    Vad,
    level_dbfs,
    split_frames,
)

RATE = 8000
T = TypeVar("T")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


@functools.cache
def speech(text: str) -> np.ndarray:
    """espeak-ng's voice at 8 kHz, cut to the speech itself (2% of peak)."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    samples = read_wav(wav).resample(RATE).array().astype(np.float64)
    loud = np.nonzero(np.abs(samples) > 0.02 * np.abs(samples).max())[0]
    return samples[loud[0] : loud[-1] + 1]


def noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, rms, round(seconds * RATE))


def telephone(samples: np.ndarray) -> Audio:
    """What the call controller actually receives: 8 kHz mu-law, decoded."""
    return ulaw_decode(ulaw_encode(Audio.from_array(samples, RATE)))


def scene(
    *parts: tuple[str, float | str], hiss: float = 30.0
) -> tuple[Audio, list[tuple[float, float]]]:
    """Silence ("gap", seconds) and speech ("say", text) in a row, hiss under all of it.

    Returns the line audio and the (start, end) time of every spoken part.
    """
    pieces: list[np.ndarray] = []
    spoken: list[tuple[float, float]] = []
    at = 0
    for kind, value in parts:
        piece = speech(str(value)) if kind == "say" else np.zeros(round(float(value) * RATE))
        if kind == "say":
            spoken.append((at / RATE, (at + piece.size) / RATE))
        pieces.append(piece)
        at += piece.size
    line = np.concatenate(pieces)
    return telephone(line + noise(line.size / RATE, hiss, seed=at)), spoken


def run(line: Audio, endpointer: Endpointer | None = None) -> list[tuple[float, EndpointEvent]]:
    """(stream time at which the event was emitted, event) for a whole signal."""
    endpointer = endpointer or Endpointer()
    events: list[tuple[float, EndpointEvent]] = []
    for index, frame in enumerate(split_frames(line)):
        events += [((index + 1) * 0.02, event) for event in endpointer.process(frame)]
    return events


def of_type(events: list[tuple[float, EndpointEvent]], kind: type[T]) -> list[tuple[float, T]]:
    return [(at, e) for at, e in events if isinstance(e, kind)]


REQUESTS = [
    "Hello, I would like to check the balance of my account please.",
    "Can you tell me when the store opens tomorrow morning?",
    "Transfer me to an agent.",
]


# --------------------------------------------------------------------------- the VAD


def test_level_is_dbfs_and_ignores_dc() -> None:
    full = Audio.from_array(np.full(160, 32767.0) * np.sign(np.sin(np.arange(160))), RATE)
    assert level_dbfs(full) == pytest.approx(0.0, abs=0.1)
    assert level_dbfs(Audio.from_array(np.full(160, 5000.0), RATE)) == -100.0
    assert level_dbfs(Audio(bytes(320), RATE)) == -100.0


def test_vad_speech_is_loud_relative_to_the_floor_not_absolute() -> None:
    vad = Vad()
    hiss = [vad.process(f) for f in split_frames(telephone(noise(1.0, 300)))]
    assert not any(hiss)
    floor = vad.noise_floor_db
    assert -45 < floor < -38  # rms 300 is about -41 dBFS
    loud = telephone(speech("hello there") + noise(1.0, 300)[: speech("hello there").size])
    assert any(vad.process(f) for f in split_frames(loud))
    vad.reset()
    assert vad.noise_floor_db == -100.0


# --------------------------------------------------------------------------- boundaries


@pytest.mark.parametrize("text", REQUESTS)
def test_utterance_boundaries_on_real_speech(text: str) -> None:
    line, [(start, end)] = scene(("gap", 1.0), ("say", text), ("gap", 2.0))
    events = run(line)
    [(started_at, started)] = of_type(events, SpeechStarted)
    [(ended_at, ended)] = of_type(events, UtteranceEnded)
    assert len(events) == 2
    assert abs(started.at_s - start) <= 0.1
    assert started_at - start <= 0.1  # barge-in: the agent stops within 100 ms
    assert abs(ended.end_s - end) <= 0.1
    assert 0.6 <= ended_at - end <= 0.8
    assert ended.reason == "silence"
    # The utterance is the line itself from 200 ms before the onset to 200 ms after the end.
    first = round((ended.start_s - 0.2) * RATE)
    last = round((ended.end_s + 0.2) * RATE)
    assert ended.audio.pcm == line.pcm[2 * first : 2 * last]
    assert ended.audio.duration_s == pytest.approx(end - start + 0.4, abs=0.1)


def test_boundaries_hold_in_noise_20_db_below_the_voice() -> None:
    line, [(start, end)] = scene(("gap", 2.0), ("say", REQUESTS[1]), ("gap", 2.0), hiss=300)
    events = run(line)
    [(started_at, started)] = of_type(events, SpeechStarted)
    [(ended_at, ended)] = of_type(events, UtteranceEnded)
    assert abs(started.at_s - start) <= 0.1 and started_at - start <= 0.12
    # A soft last syllable can drown in the noise: the end may come a little early.
    assert 0.5 <= ended_at - end <= 0.8
    assert ended.start_s == started.at_s


def test_two_utterances_a_second_and_a_half_apart_are_two_turns() -> None:
    line, spoken = scene(
        ("gap", 1.0),
        ("say", "What time is it?"),
        ("gap", 1.5),
        ("say", "And tomorrow?"),
        ("gap", 1.5),
    )
    ended = [e for _, e in of_type(run(line), UtteranceEnded)]
    assert len(ended) == 2
    for utterance, (start, end) in zip(ended, spoken, strict=True):
        assert abs(utterance.start_s - start) <= 0.1 and abs(utterance.end_s - end) <= 0.1
    assert ended[0].end_s + 0.2 <= ended[1].start_s - 0.2  # no audio is in both


def test_pauses_inside_a_sentence_do_not_end_it() -> None:
    line, [(start, _), (_, end)] = scene(
        ("gap", 1.0),
        ("say", "I want to pay"),
        ("gap", 0.4),
        ("say", "my last bill"),
        ("gap", 1.5),
    )
    [(_, ended)] = of_type(run(line), UtteranceEnded)
    assert abs(ended.start_s - start) <= 0.1 and abs(ended.end_s - end) <= 0.1


def test_end_silence_is_configurable() -> None:
    line, [(_, end)] = scene(("gap", 0.5), ("say", "Yes please."), ("gap", 2.0))
    patient = Endpointer(EndpointerConfig(end_silence_ms=1000))
    [(ended_at, _)] = of_type(run(line, patient), UtteranceEnded)
    assert 0.95 <= ended_at - end <= 1.1


def test_a_short_yes_is_an_utterance_even_on_a_noisy_line() -> None:
    for hiss in (30, 300):
        line, _ = scene(("gap", 1.5), ("say", "Yes."), ("gap", 1.5), hiss=hiss)
        assert len(of_type(run(line), UtteranceEnded)) == 1, hiss


# --------------------------------------------------------------------------- not speech


@pytest.mark.parametrize("offset_ms", [0, 5, 10, 15])
@pytest.mark.parametrize("level", [3000, 20000])
def test_a_40_ms_click_is_ignored_wherever_it_falls(offset_ms: int, level: int) -> None:
    line = noise(2.0, 30)
    at = round((1.0 + offset_ms / 1000) * RATE)
    line[at : at + 320] += noise(0.04, level, seed=offset_ms)
    assert run(telephone(line)) == []


def test_a_short_knock_starts_speech_but_is_discarded() -> None:
    line = noise(2.0, 30)
    line[8000:9200] += noise(0.15, 5000)  # 150 ms: longer than a click, shorter than a word
    events = [e for _, e in run(telephone(line))]
    assert [type(e) for e in events] == [SpeechStarted, SpeechDiscarded]
    assert isinstance(events[1], SpeechDiscarded) and events[1].reason == "short"


@pytest.mark.parametrize("rms", [100, 300, 1000, 3000])
def test_steady_noise_from_the_start_is_never_speech(rms: float) -> None:
    assert run(telephone(noise(10.0, rms))) == []


@pytest.mark.parametrize("rms", [300, 1000, 3000])
def test_noise_that_starts_mid_call_is_adapted_to_and_never_an_utterance(rms: float) -> None:
    line = np.concatenate([noise(1.0, 10), noise(12.0, rms, seed=1)])
    events = run(telephone(line))
    assert not of_type(events, UtteranceEnded)
    # Its onset looks like speech for a moment; within half a second it is called noise.
    kinds = [(type(e), getattr(e, "reason", None)) for _, e in events]
    assert kinds == [(SpeechStarted, None), (SpeechDiscarded, "noise")]
    assert events[1][0] - 1.0 < 0.5
    assert all(at < 3.0 for at, _ in events)  # after adaptation: nothing at all


def test_speech_is_still_heard_over_noise_the_vad_adapted_to() -> None:
    hum = noise(6.0, 300, seed=2)
    voice = speech(REQUESTS[2])
    hum[24000 : 24000 + voice.size] += voice
    events = run(telephone(hum))
    [(_, ended)] = of_type(events, UtteranceEnded)
    assert abs(ended.start_s - 3.0) <= 0.1
    assert abs(ended.end_s - (3.0 + voice.size / RATE)) <= 0.15


# --------------------------------------------------------------------------- limits and API


def test_a_monologue_is_cut_at_the_maximum_and_continues_without_overlap() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 8  # about 22 s
    line, [(start, end)] = scene(("gap", 1.0), ("say", text), ("gap", 1.5))
    ended = [e for _, e in of_type(run(line), UtteranceEnded)]
    assert [e.reason for e in ended] == ["max_length", "silence"]
    assert ended[0].audio.duration_s == pytest.approx(15.0, abs=0.02)
    assert abs(ended[0].start_s - start) <= 0.1
    assert ended[1].start_s >= ended[0].start_s - 0.2 + 15.0  # begins where the first stopped
    assert abs(ended[1].end_s - end) <= 0.1


def test_flush_ends_an_open_utterance_when_media_stops() -> None:
    endpointer = Endpointer()
    line, _ = scene(("gap", 0.5), ("say", REQUESTS[2]))  # no silence after: packets stopped
    run(line, endpointer)
    assert endpointer.in_speech
    [flushed] = endpointer.flush()
    assert isinstance(flushed, UtteranceEnded) and flushed.reason == "flush"
    assert not endpointer.in_speech and endpointer.flush() == []


@pytest.mark.serial
def test_endpointing_is_deterministic_and_much_faster_than_real_time() -> None:
    line, _ = scene(*[(k, v) for text in REQUESTS for k, v in (("gap", 1.0), ("say", text))])
    began = time.perf_counter()
    first = run(line)
    took = time.perf_counter() - began
    assert first == run(line)
    assert took < line.duration_s / 20


def test_frames_must_be_at_the_configured_rate() -> None:
    with pytest.raises(ValueError, match="8000 Hz"):
        Endpointer().process(Audio(bytes(640), 16000))


def test_split_frames_pads_or_keeps_the_tail() -> None:
    audio = Audio(bytes(2 * 170), RATE)
    assert [f.samples for f in split_frames(audio)] == [160, 160]
    assert [f.samples for f in split_frames(audio, 10, pad=False)] == [80, 80, 10]
