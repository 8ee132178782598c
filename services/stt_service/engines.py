"""Speech-to-text engines: OpenAI transcription (primary) and pocketsphinx (local).

Both take one endpointed utterance (`Audio`, usually 8 kHz from the phone
line) and a turn deadline, and give back the transcript. An empty
transcript is a valid answer ("the caller said nothing we could read"): the
service decides what to play for it. Errors leave as exceptions `classify`
understands, so the service can walk its fallback chain:

* OpenAI is a network dependency, called through the one policy layer
  (`Dependency`: timeout, retry, breaker).
* pocketsphinx runs in this process. It cannot be "down" like a network, so
  it has no breaker; it is bounded by the deadline all the same.

Audio shorter than `MIN_UTTERANCE_S` is refused by both engines before any
work is done: the API would answer 400 `audio_too_short` for it anyway, and a
blip that short is a VAD artefact, not words.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from openai import AsyncOpenAI, omit

from vagent.services import metrics
from vagent.services.audio import WIDEBAND_RATE, Audio, write_wav
from vagent.services.resilience import (
    DeadlineExceeded,
    Dependency,
    DependencyError,
    ErrorKind,
    time_left,
)

log = logging.getLogger("vagent.stt.engines")

MIN_UTTERANCE_S = 0.1
"""OpenAI's own minimum ("Minimum audio length is 0.1 seconds"); applied to both engines."""

UPLOAD_MAX_RATE = WIDEBAND_RATE
"""The highest rate worth uploading: the transcription models work at 16 kHz internally."""

DECODER_RATE = WIDEBAND_RATE
"""The shipped en-us acoustic model is wideband: it only accepts 16 kHz features."""

DECODE_CHUNK_S = 0.1
"""How much audio pocketsphinx gets per call. It holds the GIL while it works, so
small pieces let the event loop run between them and let an overdue decode stop."""

CMN_WINDOW_S = 3.0
"""How much of an utterance its cepstral mean is measured on (see `Recogniser`)."""

NOISE_FLOOR = 0.01
"""The noise floor added before decoding, relative to the speech level: -40 dB."""

_NOISE_SEED = 0x5EED
_MEAN_SEARCH = "cmn"


class SttEngine(Protocol):
    """What stt_service needs from an engine."""

    name: str  # e.g. "openai:gpt-4o-mini-transcribe" or "pocketsphinx": logs, metrics
    kind: str  # "primary" (network, behind a breaker) or "local"

    async def transcribe(self, audio: Audio, deadline: float) -> str:
        """The transcript ("" when nothing was recognised); never later than `deadline`."""
        ...


def require_utterance(audio: Audio, engine: str) -> None:
    """Refuse audio too short to hold a word: the caller's mistake, so no retry, no breaker."""
    if audio.duration_s < MIN_UTTERANCE_S:
        raise DependencyError(
            f"{engine}: utterance of {audio.duration_s:.3f}s is shorter than "
            f"{MIN_UTTERANCE_S}s, nothing to transcribe",
            ErrorKind.REJECTED,
        )


# --------------------------------------------------------------------------- OpenAI


def upload_audio(audio: Audio) -> Audio:
    """The audio as it is uploaded: at its own rate, but never above 16 kHz.

    Telephony audio (8 kHz) goes up as it is. Upsampling it to 16 kHz would
    add no information (the line carries nothing above 4 kHz; the upper band
    would be empty), would double the bytes on the uplink, which is latency on
    every turn, and the provider resamples whatever it gets to its own 16 kHz
    anyway. Wider audio (e.g. a 24 kHz test recording) is brought down to
    16 kHz for the same reason: the model never sees more than that.
    """
    return audio.resample(UPLOAD_MAX_RATE) if audio.rate > UPLOAD_MAX_RATE else audio


class OpenAIStt:
    """OpenAI `/v1/audio/transcriptions` with a WAV upload, called through the policy layer."""

    kind = "primary"

    def __init__(
        self,
        client: AsyncOpenAI,
        model: str,
        dependency: Dependency,
        language: str | None = "en",
    ) -> None:
        self.client = client
        self.model = model
        self.dependency = dependency
        # A known language skips detection: faster, and short phone answers
        # ("yes", "no") are exactly where detection guesses wrong.
        self.language = language
        self.name = f"openai:{model}"

    async def transcribe(self, audio: Audio, deadline: float) -> str:
        require_utterance(audio, self.name)
        wav = write_wav(upload_audio(audio))  # once: retries upload the same bytes
        text = await self.dependency.call(lambda: self._request(wav), deadline=deadline)
        return text.strip()

    async def _request(self, wav: bytes) -> str:
        """One attempt; the policy layer owns its timeout and classifies what it raises.

        The JSON answer is read inside the client, so a body cut mid-transfer
        already arrives as `APIConnectionError` (transient), not as a raw
        transport error. A 200 whose body is not a transcription (not JSON,
        no text) is the provider misbehaving: transient, and said plainly.
        """
        try:
            result = await self.client.audio.transcriptions.create(
                model=self.model,
                file=("utterance.wav", wav, "audio/wav"),
                response_format="json",
                language=self.language if self.language else omit,
            )
            text = result.text
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, AttributeError) as exc:
            # What the client raises for a body that is not JSON (nested past
            # the stack, or not even UTF-8), or JSON that is not an object.
            raise self._malformed(type(exc).__name__) from exc
        if not isinstance(text, str):
            raise self._malformed(f"text is {type(text).__name__}")
        return text

    def _malformed(self, what: str) -> DependencyError:
        metrics.REJECTED_INPUT.labels("openai", "malformed_transcription").inc()
        return DependencyError(
            f"{self.name}: answered 200 without a transcription ({what})", ErrorKind.TRANSIENT
        )


# --------------------------------------------------------------------------- pocketsphinx


def speech_level(audio: Audio) -> float:
    """The level of the loud part of the utterance: 95th percentile of 10 ms frame RMS.

    A percentile, not the mean: pauses between words must not pull it down.
    """
    samples = audio.array().astype(np.float64)
    frame = max(1, audio.rate // 100)
    usable = samples[: samples.size // frame * frame]
    if usable.size == 0:
        return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
    frames_rms = np.sqrt(np.mean(usable.reshape(-1, frame) ** 2, axis=1))
    return float(np.percentile(frames_rms, 95))


def decoder_input(audio: Audio) -> bytes:
    """16 kHz PCM with a noise floor 40 dB below the speech, as the decoder gets it.

    Why the noise: the en-us model was trained on wideband speech, which
    always has some energy in every band. Phone audio upsampled to 16 kHz has
    none above 4 kHz, and digital silence none at all; the log of those empty
    filter-bank energies gives features the model never saw, and it "hears"
    words in them (2 s of digital silence decoded as "swoop"). A floor
    relative to the speech level fills them whatever the caller's volume:
    measured on espeak-ng speech through mu-law at three volumes, word recall
    went from 0.26 (one bit of dither) to 0.40. The generator is seeded per
    call, so the transcript is a function of the audio alone.
    """
    wide = audio.resample(DECODER_RATE).array().astype(np.float64)
    floor = max(1.0, speech_level(audio) * NOISE_FLOOR)
    noise = np.random.default_rng(_NOISE_SEED).normal(0.0, floor, wide.size)
    return Audio.from_array(wide + noise, DECODER_RATE).pcm


@contextlib.contextmanager
def _utterance(decoder: Any) -> Iterator[None]:
    """start_utt/end_utt as a pair: the next job must find the decoder idle, even after an abort."""
    decoder.start_utt()
    try:
        yield
    finally:
        decoder.end_utt()


@dataclass
class _Job:
    """One decode request. `abandoned` is set when nobody waits for the answer any more."""

    audio: Audio
    deadline: float
    abandoned: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Stop work nobody can use: the turn is over, or the caller left."""
        if self.abandoned.is_set() or time.time() >= self.deadline:
            raise DeadlineExceeded("pocketsphinx: turn deadline passed")


class Recogniser:
    """The process's one pocketsphinx decoder and the one thread that uses it.

    Why one: a decoder costs ~90 MB of memory and ~0.2-1 s to load, so one per
    call (or per engine object) would spend the turn's budget on loading;
    and a decoder is not thread-safe. So every use of it (load included) runs
    on a single worker thread: decodes queue up instead of sharing the decoder
    concurrently, and no thread of the default executor blocks on a lock. The
    load lock is for `load()` called directly from any other thread.
    """

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="pocketsphinx"
        )
        self._load_lock = threading.Lock()
        self._decoder: Any = None
        self._main_search = ""
        self.loads = 0
        self.load_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self._decoder is not None

    def load(self) -> Any:
        """The decoder, loaded on first use (thread-safe; at most one successful load)."""
        with self._load_lock:
            if self._decoder is None:
                self._decoder = self._load_decoder()
            return self._decoder

    def _load_decoder(self) -> Any:
        # Imported here: service.py (which owns the model path) imports this module.
        from vagent.services.stt_service.service import pocketsphinx_model

        try:
            import pocketsphinx  # a compiled extension that may be missing

            model = pocketsphinx_model()
            start = time.perf_counter()
            decoder = pocketsphinx.Decoder(
                hmm=str(model),
                lm=str(model.parent / "en-us.lm.bin"),
                dict=str(model.parent / "cmudict-en-us.dict"),
                samprate=DECODER_RATE,
                loglevel="FATAL",
            )
            self._main_search = str(decoder.current_search())
            decoder.add_keyphrase(_MEAN_SEARCH, "oh")  # any word: only its cost matters
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            # The same installation fails the same way every time: permanent.
            message = f"pocketsphinx: cannot load the en-us model ({type(exc).__name__}: {exc})"
            raise DependencyError(message, ErrorKind.PERMANENT) from exc
        self.load_seconds = time.perf_counter() - start
        self.loads += 1
        log.info("pocketsphinx en-us model loaded in %.2fs", self.load_seconds)
        return decoder

    async def warm(self) -> None:
        await asyncio.wrap_future(self._executor.submit(self.load))

    def submit(self, job: _Job) -> concurrent.futures.Future[str]:
        return self._executor.submit(self._decode, job)

    def _decode(self, job: _Job) -> str:
        """Runs on the worker thread. A job whose turn ended while it queued never starts."""
        job.check()
        decoder = self.load()
        pcm = decoder_input(job.audio)
        try:
            mean = self._utterance_mean(decoder, pcm)
            decoder.reinit_feat()
            decoder.set_cmn(mean)
            self._search(decoder, pcm, job)
            hypothesis = decoder.hyp()
        except RuntimeError as exc:
            message = f"pocketsphinx: decode failed: {exc}"
            raise DependencyError(message, ErrorKind.TRANSIENT) from exc
        return str(hypothesis.hypstr).strip() if hypothesis is not None else ""

    def _utterance_mean(self, decoder: Any, pcm: bytes) -> str:
        """This utterance's cepstral mean, measured before the real search.

        Fed whole (`full_utt`), pocketsphinx normalises an utterance by its
        own mean: the most accurate, and independent of earlier calls. But
        then it searches the whole utterance in one call that holds the GIL
        (the event loop stalls for the entire decode) and cannot be stopped
        at the deadline. So the whole-utterance pass only measures the mean,
        under a one-word keyphrase search that costs ~18 ms per second of
        audio, on at most the first `CMN_WINDOW_S`; the real search then runs
        in chunks with that mean. `reinit_feat` first: the running mean and
        the noise estimate of the last caller must not leak into this one.
        """
        decoder.reinit_feat()
        decoder.activate_search(_MEAN_SEARCH)
        try:
            with _utterance(decoder):
                window = pcm[: 2 * round(CMN_WINDOW_S * DECODER_RATE)]
                decoder.process_raw(window, True, True)  # features only, no search: ~1 ms
                return str(decoder.get_cmn())
        finally:
            decoder.activate_search(self._main_search)

    def _search(self, decoder: Any, pcm: bytes, job: _Job) -> None:
        step = 2 * round(DECODE_CHUNK_S * DECODER_RATE)
        with _utterance(decoder):
            for offset in range(0, len(pcm), step):
                job.check()
                decoder.process_raw(pcm[offset : offset + step], False, False)


_shared: Recogniser | None = None
_shared_lock = threading.Lock()


def shared_recogniser() -> Recogniser:
    """The process-wide recogniser: every PocketsphinxStt shares its one model load."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Recogniser()
        return _shared


class PocketsphinxStt:
    """pocketsphinx 5 with the en-us model shipped in its wheel: works with no network, no key.

    Accuracy on 8 kHz phone audio is modest (the model is wideband), so this
    is the fallback, not the primary. The decode runs on the recogniser's
    worker thread and is bounded by the deadline: when it passes,
    `transcribe` raises `DeadlineExceeded` at once and the worker drops the
    job at its next 0.1 s chunk. DEADLINE rather than TRANSIENT: nothing is
    broken, the turn's budget ran out (typically because another decode held
    the one decoder); a retry could only be later still, and a local engine
    has no breaker to count it.

    One cost remains: pocketsphinx holds the GIL in its final passes
    (`end_utt`: second search pass and best path), about 50 ms per second of
    audio, which cannot be cut into chunks. During that time the event loop
    (and so the deadline timer) waits: ~0.15 s for a 3 s utterance. Turning
    the second pass off halves it but lost 3 points of word recall.
    """

    kind = "local"
    name = "pocketsphinx"

    def __init__(self, recogniser: Recogniser | None = None) -> None:
        self.recogniser = recogniser if recogniser is not None else shared_recogniser()

    async def warm(self) -> None:
        """Load the model now (at startup) rather than inside the first caller's turn."""
        await self.recogniser.warm()

    async def transcribe(self, audio: Audio, deadline: float) -> str:
        require_utterance(audio, self.name)
        remaining = time_left(deadline, self.name)
        job = _Job(audio, deadline)
        try:
            async with asyncio.timeout(remaining):
                return await asyncio.wrap_future(self.recogniser.submit(job))
        except TimeoutError:
            raise DeadlineExceeded(f"{self.name}: turn deadline passed") from None
        finally:
            job.abandoned.set()  # a no-op when done; otherwise the worker stops early
