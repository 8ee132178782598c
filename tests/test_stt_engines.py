"""STT engines against real things only.

pocketsphinx really decodes speech that espeak-ng really spoke, after the
trip a caller's voice takes: resampled to 8 kHz and through G.711 mu-law and
back. OpenAI transcription is driven through the OpenAI double (a real HTTP
server) and the policy layer, so every failure is the exception production
would see.

What pocketsphinx makes of espeak-ng on a phone line (en-us+m3, 150 wpm):
"hello world" -> "hello world"; "what are your opening hours" -> "what are
your opening our in"; "I would like to check the status of my order" -> "i
would like that you know and but my order". The assertions ask for about
that much (most words of each phrase, none of the words only another phrase
has), so a recogniser that hears nothing, or always the same, fails.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
import openai
import pytest
from openai import AsyncOpenAI

from support.openai_double import OpenAIDouble
from vagent.services.audio import (
    TELEPHONY_RATE,
    Audio,
    read_wav,
    silence,
    ulaw_decode,
    ulaw_encode,
)
from vagent.services.config import Settings
from vagent.services.openai_client import make_client
from vagent.services.resilience import (
    DeadlineExceeded,
    Dependency,
    DependencyError,
    ErrorKind,
    Policy,
    classify,
)
from vagent.services.stt_service.engines import (
    MIN_UTTERANCE_S,
    OpenAIStt,
    PocketsphinxStt,
    Recogniser,
    SttEngine,
    decoder_input,
    shared_recogniser,
)

API_KEY = "sk-test-stt-0123456789abcdef"
MODEL = "gpt-4o-mini-transcribe"
WAV_HEADER = 44

# phrase -> (its words, how many of them pocketsphinx must get, words no other phrase has)
PHRASES: dict[str, tuple[frozenset[str], int, frozenset[str]]] = {
    "hello world": (frozenset({"hello", "world"}), 2, frozenset({"hello", "world"})),
    "what are your opening hours": (
        frozenset({"what", "are", "your", "opening", "hours"}),
        3,
        frozenset({"opening", "hours"}),
    ),
    "I would like to check the status of my order": (
        frozenset({"i", "would", "like", "check", "status", "my", "order"}),
        4,
        frozenset({"like", "check", "status", "order"}),
    ),
}


def espeak(text: str) -> Audio:
    """Real speech. A male US voice at a calm pace: espeak's default voice and
    speed come out too clipped for a wideband model behind an 8 kHz line."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: apt-get install espeak-ng")
    argv = ["espeak-ng", "-v", "en-us+m3", "-s", "150", "--stdout", text]
    return read_wav(subprocess.run(argv, capture_output=True, check=True).stdout)


def phone_line(audio: Audio) -> Audio:
    """What reaches the service from a call: 8 kHz G.711 mu-law, decoded back to PCM."""
    return ulaw_decode(ulaw_encode(audio.resample(TELEPHONY_RATE)))


def soon(seconds: float = 10.0) -> float:
    return time.time() + seconds


@pytest.fixture(scope="module")
def speech() -> dict[str, Audio]:
    return {text: phone_line(espeak(text)) for text in PHRASES}


@pytest.fixture(scope="module")
def recogniser() -> Recogniser:
    """The shared recogniser, warmed once for the module: the model load is the slow part."""
    shared = shared_recogniser()
    asyncio.run(PocketsphinxStt(shared).warm())
    return shared


@pytest.fixture
def sphinx(recogniser: Recogniser) -> PocketsphinxStt:
    return PocketsphinxStt()


def words(transcript: str) -> set[str]:
    return set(transcript.lower().split())


# --------------------------------------------------------------------------- pocketsphinx


def test_engines_satisfy_the_protocol(sphinx: PocketsphinxStt) -> None:
    engine: SttEngine = sphinx
    assert (engine.name, engine.kind) == ("pocketsphinx", "local")


@pytest.mark.parametrize("text", list(PHRASES))
async def test_pocketsphinx_recognises_phone_line_speech(
    sphinx: PocketsphinxStt, speech: dict[str, Audio], text: str
) -> None:
    audio = speech[text]
    assert audio.rate == TELEPHONY_RATE
    transcript = await sphinx.transcribe(audio, soon())

    own, needed, _ = PHRASES[text]
    heard = words(transcript)
    assert len(heard & own) >= needed, f"{text!r} was heard as {transcript!r}"
    others = frozenset().union(*(d for t, (_, _, d) in PHRASES.items() if t != text))
    assert not heard & others, f"{text!r} was heard as {transcript!r}"


@pytest.mark.parametrize("gain", [0.1, 2.0], ids=["quiet-caller-20dB", "hot-line-clipping"])
async def test_pocketsphinx_does_not_care_about_the_callers_volume(
    sphinx: PocketsphinxStt, gain: float
) -> None:
    """The noise floor and the per-utterance mean both follow the speech level."""
    spoken = espeak("hello world").resample(TELEPHONY_RATE)
    audio = phone_line(Audio.from_array(spoken.array() * gain, TELEPHONY_RATE))
    assert words(await sphinx.transcribe(audio, soon())) >= {"hello", "world"}


async def test_pocketsphinx_transcript_depends_on_the_audio_alone(
    sphinx: PocketsphinxStt, speech: dict[str, Audio]
) -> None:
    """Decoder state is reset and the noise floor seeded per call: no decode history
    (the last caller's mean, noise estimate or dither) changes what the next one hears."""
    hours = speech["what are your opening hours"]
    first = await sphinx.transcribe(hours, soon())
    await sphinx.transcribe(speech["hello world"], soon())
    assert await sphinx.transcribe(hours, soon()) == first
    assert decoder_input(hours) == decoder_input(hours)


@pytest.mark.parametrize(
    "audio",
    [
        phone_line(silence(2.0)),
        phone_line(
            Audio.from_array(np.random.default_rng(1).normal(0, 30, 16_000), TELEPHONY_RATE)
        ),
    ],
    ids=["digital-silence", "line-hiss"],
)
async def test_pocketsphinx_hears_nothing_in_silence(sphinx: PocketsphinxStt, audio: Audio) -> None:
    assert await sphinx.transcribe(audio, soon()) == ""


async def test_concurrent_decodes_are_serialised_and_each_gets_its_own_words(
    sphinx: PocketsphinxStt, speech: dict[str, Audio]
) -> None:
    texts = list(PHRASES)
    alone = [await sphinx.transcribe(speech[t], soon()) for t in texts]
    together = await asyncio.gather(*(sphinx.transcribe(speech[t], soon()) for t in texts))
    assert together == alone


async def test_the_model_is_loaded_once_per_process(
    recogniser: Recogniser, speech: dict[str, Audio]
) -> None:
    engines = [PocketsphinxStt() for _ in range(3)]
    await asyncio.gather(*(e.warm() for e in engines))
    await engines[2].transcribe(speech["hello world"], soon())
    assert all(e.recogniser is recogniser for e in engines)
    assert recogniser.loads == 1
    assert recogniser.load_seconds is not None and recogniser.load_seconds < 5


@pytest.mark.serial
async def test_decoding_leaves_the_event_loop_running(
    sphinx: PocketsphinxStt, speech: dict[str, Audio]
) -> None:
    """pocketsphinx holds the GIL while it decodes; fed whole, a 3 s utterance stalls
    the loop for the entire decode. Fed in 0.1 s chunks only the final pass stalls it."""
    audio = speech["I would like to check the status of my order"]
    stalls: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls.append(time.perf_counter() - start - 0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    start = time.perf_counter()
    await sphinx.transcribe(audio, soon())
    decode_s = time.perf_counter() - start
    done.set()
    await task
    assert max(stalls) < 0.5 * decode_s, (max(stalls), decode_s)


@pytest.mark.serial
async def test_pocketsphinx_is_bounded_by_the_deadline_and_frees_the_decoder(
    sphinx: PocketsphinxStt, speech: dict[str, Audio]
) -> None:
    long = Audio(b"".join(a.pcm for a in speech.values()) * 3, TELEPHONY_RATE)  # ~17 s
    start = time.perf_counter()
    with pytest.raises(DeadlineExceeded) as caught:
        await sphinx.transcribe(long, time.time() + 0.15)
    assert time.perf_counter() - start < 0.3
    assert classify(caught.value) is ErrorKind.DEADLINE
    # The abandoned job stops at its next chunk: the next turn is not stuck behind
    # the ~4 s the whole decode would take.
    start = time.perf_counter()
    assert "hello" in await sphinx.transcribe(speech["hello world"], soon(3.0))
    assert time.perf_counter() - start < 2.0


async def test_pocketsphinx_refuses_a_turn_already_over(
    sphinx: PocketsphinxStt, speech: dict[str, Audio]
) -> None:
    with pytest.raises(DeadlineExceeded):
        await sphinx.transcribe(speech["hello world"], time.time() - 0.01)


@pytest.mark.parametrize("seconds", [0.0, 0.05, MIN_UTTERANCE_S - 0.001])
async def test_pocketsphinx_rejects_too_short_audio(
    sphinx: PocketsphinxStt, seconds: float
) -> None:
    with pytest.raises(DependencyError) as caught:
        await sphinx.transcribe(silence(seconds), soon())
    assert caught.value.kind is ErrorKind.REJECTED


# --------------------------------------------------------------------------- OpenAI


@pytest.fixture(scope="module")
def double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble(api_key=API_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_double(request: pytest.FixtureRequest) -> None:
    if "double" in request.fixturenames:
        request.getfixturevalue("double").reset()


@pytest.fixture
async def client(double: OpenAIDouble) -> AsyncIterator[AsyncOpenAI]:
    settings = Settings(openai_api_key=API_KEY, openai_base_url=double.base_url)
    openai_client = make_client(settings, timeout_s=5.0)
    yield openai_client
    await openai_client.close()


def fast_policy(attempts: int = 3, fail_max: int = 5, timeout_s: float = 5.0) -> Policy:
    """The default shape, with backoff short enough for a test."""
    return Policy(
        name="openai-stt",
        timeout_s=timeout_s,
        attempts=attempts,
        backoff_initial_s=0.05,
        backoff_max_s=0.1,
        fail_max=fail_max,
    )


def openai_stt(
    client: AsyncOpenAI, policy: Policy | None = None, **kwargs: str | None
) -> OpenAIStt:
    return OpenAIStt(client, MODEL, Dependency(policy or fast_policy()), **kwargs)


async def test_openai_returns_the_transcript_stripped(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    double.set_transcription("  What are your opening hours?\n")
    engine: SttEngine = openai_stt(client)
    assert (engine.name, engine.kind) == (f"openai:{MODEL}", "primary")
    text = await engine.transcribe(speech["what are your opening hours"], soon())
    assert text == "What are your opening hours?"


async def test_openai_upload_is_the_phone_audio_as_an_8k_wav(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    audio = speech["hello world"]
    await openai_stt(client).transcribe(audio, soon())

    [request] = double.requests(route="transcriptions")
    assert request.body is not None
    upload = request.body["file"]
    assert upload["filename"] == "utterance.wav"
    # 8 kHz as it came from the line: 16-bit mono, so the size gives the duration.
    assert upload["size"] == WAV_HEADER + len(audio.pcm)
    assert (upload["size"] - WAV_HEADER) / (2 * TELEPHONY_RATE) == pytest.approx(audio.duration_s)
    assert request.body["model"] == MODEL
    assert request.body["response_format"] == "json"
    assert request.body["language"] == "en"
    assert request.headers["content-type"].startswith("multipart/form-data")


async def test_openai_wideband_audio_goes_up_at_16k(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    audio = espeak("hello world")  # 22.05 kHz
    assert audio.rate > 16_000
    await openai_stt(client, language=None).transcribe(audio, soon())

    [request] = double.requests(route="transcriptions")
    assert request.body is not None
    size = request.body["file"]["size"]
    assert (size - WAV_HEADER) / (2 * 16_000) == pytest.approx(audio.duration_s, abs=0.001)
    assert "language" not in request.body  # None: let the model detect it


async def test_openai_401_is_permanent_and_opens_the_breaker_at_once(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    double.fail("transcriptions", 401)
    engine = openai_stt(client)
    with pytest.raises(openai.AuthenticationError) as caught:
        await engine.transcribe(speech["hello world"], soon())
    assert classify(caught.value) is ErrorKind.PERMANENT
    assert engine.dependency.breaker.state == "open"
    assert len(double.requests(route="transcriptions")) == 1  # never retried
    with pytest.raises(DependencyError) as fast:
        await engine.transcribe(speech["hello world"], soon())
    assert fast.value.kind is ErrorKind.BREAKER_OPEN
    assert len(double.requests(route="transcriptions")) == 1


async def test_openai_unknown_model_is_permanent(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    engine = OpenAIStt(client, "whisper-9", Dependency(fast_policy()))
    with pytest.raises(openai.NotFoundError) as caught:
        await engine.transcribe(speech["hello world"], soon())
    assert classify(caught.value) is ErrorKind.PERMANENT
    assert engine.dependency.breaker.state == "open"


async def test_openai_500_is_transient_and_retried_per_policy(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    double.fail("transcriptions", 500, count=2)
    double.set_transcription("hello world")
    engine = openai_stt(client, fast_policy(attempts=3))
    assert await engine.transcribe(speech["hello world"], soon()) == "hello world"
    assert len(double.requests(route="transcriptions")) == 3
    assert engine.dependency.breaker.state == "closed"


async def test_openai_500_gives_up_after_the_policy_attempts(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    double.fail("transcriptions", 500)
    engine = openai_stt(client, fast_policy(attempts=3, fail_max=5))
    with pytest.raises(openai.InternalServerError) as caught:
        await engine.transcribe(speech["hello world"], soon())
    assert classify(caught.value) is ErrorKind.TRANSIENT
    assert len(double.requests(route="transcriptions")) == 3
    assert engine.dependency.breaker.fail_count == 3
    assert engine.dependency.breaker.state == "closed"


async def test_openai_cut_body_is_a_transient_failure(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    double.stream_cut("transcriptions")
    engine = openai_stt(client, fast_policy(attempts=1))
    with pytest.raises(openai.APIConnectionError) as caught:
        await engine.transcribe(speech["hello world"], soon())
    assert classify(caught.value) is ErrorKind.TRANSIENT
    assert engine.dependency.breaker.fail_count == 1


async def test_openai_hang_is_bounded_by_the_deadline(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    double.hang("transcriptions")
    engine = openai_stt(client, fast_policy(timeout_s=5.0))
    start = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        await engine.transcribe(speech["hello world"], time.time() + 0.4)
    assert 0.35 < time.perf_counter() - start < 0.8
    assert len(double.requests(route="transcriptions")) == 1
    # Our budget ran out; that says nothing against the provider.
    assert engine.dependency.breaker.fail_count == 0


async def test_openai_slow_first_byte_past_the_attempt_timeout_is_retried(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    double.slow_first_byte("transcriptions", 2.0, count=1)
    double.set_transcription("hello world")
    engine = openai_stt(client, fast_policy(timeout_s=0.3))
    assert await engine.transcribe(speech["hello world"], soon(3.0)) == "hello world"
    assert len(double.requests(route="transcriptions")) == 2


@pytest.mark.parametrize("seconds", [0.0, 0.05, MIN_UTTERANCE_S - 0.001])
async def test_openai_too_short_audio_is_rejected_without_a_request(
    double: OpenAIDouble, client: AsyncOpenAI, seconds: float
) -> None:
    engine = openai_stt(client)
    with pytest.raises(DependencyError) as caught:
        await engine.transcribe(silence(seconds), soon())
    assert caught.value.kind is ErrorKind.REJECTED
    assert double.requests(route="transcriptions") == []
    assert engine.dependency.breaker.fail_count == 0


async def test_openai_minimum_length_passes(double: OpenAIDouble, client: AsyncOpenAI) -> None:
    """Exactly 0.1 s is accepted here and by the (double of the) API: the limits agree."""
    assert await openai_stt(client).transcribe(silence(MIN_UTTERANCE_S), soon()) != ""
    assert len(double.requests(route="transcriptions")) == 1


async def test_openai_turn_already_over_sends_nothing(
    double: OpenAIDouble, client: AsyncOpenAI, speech: dict[str, Audio]
) -> None:
    with pytest.raises(DeadlineExceeded):
        await openai_stt(client).transcribe(speech["hello world"], time.time() - 0.01)
    assert double.requests(route="transcriptions") == []
