"""The chaos soak's measurements on made-up ears: a soak that reports 0 lost, 0 silent
and 0 duplicates is only worth something if these would have been seen."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from chaos_calls import FRAME_S, evaluate, repeated_run
from chaos_rig import REPLY

from support.ari_double import PlaybackRecord, SpeechRecord
from support.ari_double.caller import HeardChunk
from support.openai_double import PCM_SAMPLE_RATE, synthesize_pcm
from vagent.services.audio import Audio, ulaw_decode, ulaw_encode

T0 = 1_000_000.0  # the caller stops speaking here


def reply_frames(text: str = REPLY) -> list[np.ndarray]:
    """The double's speech for `text` as the caller gets it: 8 kHz mu-law, 20 ms packets."""
    pcm = np.frombuffer(synthesize_pcm(text), dtype="<i2").astype(np.float32)
    narrow = soxr.resample(pcm, PCM_SAMPLE_RATE, 8000).astype(np.int16)
    heard = ulaw_decode(ulaw_encode(Audio(narrow.tobytes(), 8000)))
    samples = np.frombuffer(heard.pcm, dtype="<i2")
    return [samples[i : i + 160] for i in range(0, len(samples) - 159, 160)]


def ear(start: float, *pieces: list[np.ndarray]) -> list[HeardChunk]:
    """Packets 20 ms apart from `start`, the pieces back to back."""
    frames = [frame for piece in pieces for frame in piece]
    return [HeardChunk(start + i * FRAME_S, frame) for i, frame in enumerate(frames)]


def said(start: float, end: float) -> SpeechRecord:
    return SpeechRecord(seconds=end - start, queued_at=start, started_at=start, finished_at=end)


def keys(chunks: list[HeardChunk]) -> list[bytes | None]:
    return [c.samples.tobytes() if np.abs(c.samples).max() >= 64 else None for c in chunks]


def test_one_reply_is_not_a_repeat_of_itself() -> None:
    assert repeated_run(keys(ear(T0, reply_frames())), 50) is None


def test_a_reply_heard_twice_is_found() -> None:
    frames = reply_frames()
    assert repeated_run(keys(ear(T0, frames, frames)), 50) == (0, len(frames))


def test_silence_heard_twice_is_no_repeat() -> None:
    silence = [np.zeros(160, dtype=np.int16)] * 200
    assert repeated_run(keys(ear(T0, silence)), 50) is None


def test_a_turn_with_no_audio_is_lost_and_one_answered_late_is_timed() -> None:
    speech = [said(T0 - 1, T0), said(T0 + 8, T0 + 9)]
    chunks = ear(T0 + 9 + 3.0, reply_frames())  # nothing in the first window
    first, second = evaluate("c", speech, chunks, [], T0 + 20, trailing_s=0.3)
    assert not first.ended_in_audio
    assert second.latency_s is not None and abs(second.latency_s - 3.3) < 1e-6


def test_the_same_reply_twice_in_a_turn_is_a_duplicate_with_both_times() -> None:
    frames = reply_frames()
    chunks = ear(T0 + 1, frames, frames)
    [turn] = evaluate("c", [said(T0 - 1, T0)], chunks, [], T0 + 20, trailing_s=0.0)
    assert turn.duplicate is not None
    assert turn.duplicate.first_at == T0 + 1
    assert abs(turn.duplicate.second_at - (T0 + 1 + len(frames) * FRAME_S)) < 1e-6


def test_asterisk_asked_twice_to_say_the_same_text_is_a_duplicate() -> None:
    def spoken(at: float) -> PlaybackRecord:
        return PlaybackRecord("p", "channel:c", [f"characters:{REPLY}"], at, started=[(at, "")])

    [turn] = evaluate(
        "c", [said(T0 - 1, T0)], [], [spoken(T0 + 1), spoken(T0 + 5)], T0 + 20, trailing_s=0.0
    )
    assert turn.first_audio == T0 + 1
    assert turn.duplicate is not None and "twice" in turn.duplicate.why
