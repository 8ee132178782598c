"""TTS engines and the fixed-prompt cache, against real things only.

OpenAI TTS is driven through the OpenAI double (a real HTTP server) and the
policy layer, so every failure is the exception production would see.
espeak-ng really runs: the deadline tests look the child process up in /proc
and prove it is gone (killed *and* reaped: a zombie still has a /proc entry).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI

from support.openai_double import PCM_SAMPLE_RATE, OpenAIDouble, synthesize_pcm
from vagent.services.audio import TELEPHONY_RATE, ulaw_decode
from vagent.services.config import Settings
from vagent.services.openai_client import make_client
from vagent.services.resilience import (
    BreakerOpenError,
    DeadlineExceeded,
    Dependency,
    DependencyError,
    ErrorKind,
    Policy,
    classify,
)
from vagent.services.responses import FallbackResponseManager
from vagent.services.tts_service.engines import (
    ESPEAK_NOT_FOUND,
    EspeakTts,
    OpenAITts,
    telephony,
)
from vagent.services.tts_service.prompts import (
    PROMPT_NAMES,
    PromptCache,
    prompt_filename,
    prompts_directory,
)

API_KEY = "sk-test-tts-0123456789abcdef"
MODEL = "gpt-4o-mini-tts"
VOICE = "alloy"
MS_PER_CHAR = 60.0
# Longer than any text espeak-ng could speak within the short deadlines below.
LONG_TEXT = "This sentence keeps the speech engine busy for a very long time. " * 20_000


@pytest.fixture(scope="module")
def double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble(api_key=API_KEY, ms_per_char=MS_PER_CHAR) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_double(double: OpenAIDouble) -> None:
    # reset() leaves ms_per_char / max_speech_seconds as the last test set them.
    double.reset()
    double.apply_config({"ms_per_char": MS_PER_CHAR, "max_speech_seconds": 15.0})


@pytest.fixture
async def client(double: OpenAIDouble) -> AsyncIterator[AsyncOpenAI]:
    settings = Settings(openai_api_key=API_KEY, openai_base_url=double.base_url)
    openai_client = make_client(settings, timeout_s=5.0)
    yield openai_client
    await openai_client.close()


def fast_policy(attempts: int = 3, fail_max: int = 5) -> Policy:
    """The default shape, with backoff short enough for a test."""
    return Policy(
        name="openai-tts",
        timeout_s=5.0,
        attempts=attempts,
        backoff_initial_s=0.05,
        backoff_max_s=0.1,
        fail_max=fail_max,
    )


def openai_tts(client: AsyncOpenAI, policy: Policy | None = None) -> OpenAITts:
    return OpenAITts(client, MODEL, VOICE, Dependency(policy or fast_policy()))


def soon(seconds: float = 5.0) -> float:
    return time.time() + seconds


def responses() -> FallbackResponseManager:
    return FallbackResponseManager.load()


# --------------------------------------------------------------------------- OpenAI TTS


async def test_openai_pcm_is_24k_audio_exactly_as_sent(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    text = "Hello, thank you for calling."
    audio = await openai_tts(client).synthesize(text, soon())

    assert audio.rate == PCM_SAMPLE_RATE == 24_000
    assert audio.pcm == synthesize_pcm(text, ms_per_char=double.ms_per_char)
    assert audio.duration_s == pytest.approx(len(text) * double.ms_per_char / 1000)
    [request] = double.requests(route="speech")
    assert request.body is not None
    assert request.body["response_format"] == "pcm"
    assert (request.body["model"], request.body["voice"]) == (MODEL, VOICE)


async def test_telephony_is_8k_mulaw_of_the_same_duration(client: AsyncOpenAI) -> None:
    audio = await openai_tts(client).synthesize("One moment, please, I am looking.", soon())
    ulaw = telephony(audio)

    assert len(ulaw) == pytest.approx(audio.duration_s * TELEPHONY_RATE, abs=1)
    decoded = ulaw_decode(ulaw)
    assert decoded.rms() == pytest.approx(audio.rms(), rel=0.1), "mu-law keeps the loudness"


async def test_openai_500_is_transient_and_retried(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.fail("speech", 500)
    engine = openai_tts(client, fast_policy(attempts=3))

    with pytest.raises(openai.InternalServerError) as caught:
        await engine.synthesize("Hello there.", soon())

    assert classify(caught.value) is ErrorKind.TRANSIENT
    assert len(double.requests(route="speech")) == 3
    assert engine.dependency.breaker.fail_count == 3
    assert engine.dependency.breaker.state == "closed"


async def test_openai_401_is_permanent_and_opens_the_breaker(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.fail("speech", 401)
    engine = openai_tts(client)

    with pytest.raises(openai.AuthenticationError) as caught:
        await engine.synthesize("Hello there.", soon())
    assert classify(caught.value) is ErrorKind.PERMANENT
    assert engine.dependency.breaker.state == "open"

    with pytest.raises(BreakerOpenError):
        await engine.synthesize("Hello again.", soon())
    assert len(double.requests(route="speech")) == 1, "no retry, and nothing sent while open"


async def test_openai_hang_is_bounded_by_the_deadline(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.hang("speech")
    started = time.monotonic()

    with pytest.raises(DeadlineExceeded):
        await openai_tts(client).synthesize("Hello there.", soon(0.5))

    assert 0.4 < time.monotonic() - started < 1.0
    assert len(double.requests(route="speech")) == 1


async def test_openai_cut_body_is_transient_and_retried(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    text = "A reply long enough to span several chunks of audio."
    double.stream_cut("speech", after_chunks=2, count=1)

    audio = await openai_tts(client).synthesize(text, soon())

    assert audio.pcm == synthesize_pcm(text, ms_per_char=double.ms_per_char), "never half audio"
    assert len(double.requests(route="speech")) == 2


async def test_openai_cut_body_that_persists_fails_transient(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.stream_cut("speech", after_chunks=2)
    engine = openai_tts(client, fast_policy(attempts=2))

    with pytest.raises(Exception) as caught:
        await engine.synthesize("A reply long enough to span several chunks of audio.", soon())

    assert classify(caught.value) is ErrorKind.TRANSIENT
    assert len(double.requests(route="speech")) == 2
    assert engine.dependency.breaker.fail_count == 2


async def test_openai_empty_audio_is_a_transient_failure(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.apply_config({"ms_per_char": 0})  # the double then answers 200 with one sample

    with pytest.raises(DependencyError, match="without audio") as caught:
        await openai_tts(client, fast_policy(attempts=2)).synthesize("Hello there.", soon())

    assert caught.value.kind is ErrorKind.TRANSIENT
    assert len(double.requests(route="speech")) == 2, "retried like any transient failure"


async def test_empty_text_is_rejected_without_a_request(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    with pytest.raises(DependencyError) as caught:
        await openai_tts(client).synthesize("  ", soon())
    assert caught.value.kind is ErrorKind.REJECTED
    assert double.requests(route="speech") == []


# --------------------------------------------------------------------------- espeak-ng


def espeak_children() -> list[int]:
    """PIDs of espeak-ng processes whose parent is this test process (zombies included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == "espeak-ng" and ppid == os.getpid():
            found.append(int(entry.name))
    return found


def process_gone(pid: int) -> bool:
    """No /proc entry: the process exited and was reaped (a zombie keeps its entry)."""
    return not Path(f"/proc/{pid}").exists()


def stored_files(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}-*.ulaw"))


async def wait_for_espeak_child(task: asyncio.Task[object]) -> int:
    for _ in range(500):
        children = espeak_children()
        if children:
            return children[0]
        assert not task.done(), "espeak-ng finished before it could be observed"
        await asyncio.sleep(0.005)
    raise AssertionError("espeak-ng never started")


async def test_espeak_speaks_a_text_that_starts_with_a_dash() -> None:
    audio = await EspeakTts().synthesize("-v --help is spoken, not parsed as an option.", soon())

    assert audio.rate == 22_050
    assert 1.0 < audio.duration_s < 6.0
    assert audio.rms() > 300


async def test_espeak_deadline_kills_and_reaps_the_process() -> None:
    started = time.monotonic()
    task = asyncio.ensure_future(EspeakTts().synthesize(LONG_TEXT, soon(0.4)))
    pid = await wait_for_espeak_child(task)

    with pytest.raises(DeadlineExceeded):
        await task

    assert time.monotonic() - started < 1.0
    assert process_gone(pid), "killed and reaped: not even a zombie is left"
    assert espeak_children() == []


async def test_espeak_cancellation_kills_and_reaps_the_process() -> None:
    task = asyncio.ensure_future(EspeakTts().synthesize(LONG_TEXT, soon(30)))
    pid = await wait_for_espeak_child(task)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert process_gone(pid)
    assert espeak_children() == []


async def test_espeak_past_deadline_starts_nothing() -> None:
    with pytest.raises(DeadlineExceeded):
        await EspeakTts().synthesize("Too late.", time.time() - 1)
    assert espeak_children() == []


async def test_espeak_missing_binary_is_permanent() -> None:
    engine = EspeakTts(binary="espeak-ng-is-not-installed-here")
    with pytest.raises(DependencyError) as caught:
        await engine.synthesize("Hello.", soon())
    assert caught.value.kind is ErrorKind.PERMANENT
    assert str(caught.value) == ESPEAK_NOT_FOUND == "espeak-ng not found: apt-get install espeak-ng"


async def test_espeak_unknown_voice_is_permanent() -> None:
    with pytest.raises(DependencyError, match="voice") as caught:
        await EspeakTts(voice="xx-no-such-voice").synthesize("Hello.", soon())
    assert caught.value.kind is ErrorKind.PERMANENT


# --------------------------------------------------------------------------- prompt cache


def engines_used(cache: PromptCache) -> set[str | None]:
    """Which engines rendered the prompts; a missing prompt shows as None."""
    return {p.engine if p else None for p in map(cache.get, PROMPT_NAMES)}


async def test_prompts_fall_back_to_espeak_when_openai_fails(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.fail("speech", 500)
    cache = PromptCache(responses(), [openai_tts(client, fast_policy(attempts=2)), EspeakTts()])

    await cache.warm(deadline_per_prompt_s=3.0)

    assert cache.names() == PROMPT_NAMES
    assert engines_used(cache) == {"espeak-ng"}
    error_stt = cache.get("ERROR_STT")
    assert error_stt is not None
    assert error_stt.text == "I'm sorry, I didn't catch that. Could you please repeat yourself?"
    assert 2.0 < error_stt.duration_s < 5.0
    assert ulaw_decode(error_stt.ulaw).rms() > 300, "real speech, not silence"


async def test_prompts_render_with_openai_when_it_works(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    cache = PromptCache(responses(), [openai_tts(client), EspeakTts()])

    await cache.warm(deadline_per_prompt_s=3.0)

    filler = cache.get("FILLER")
    assert filler is not None
    assert filler.engine == f"openai:{MODEL}"
    expected_s = len(filler.text) * double.ms_per_char / 1000
    assert filler.duration_s == pytest.approx(expected_s, abs=1 / TELEPHONY_RATE)
    assert len(double.requests(route="speech")) == len(PROMPT_NAMES)


async def test_prompts_missing_when_every_engine_fails(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.fail("speech", 401)
    missing_espeak = EspeakTts(binary="espeak-ng-is-not-installed-here")
    cache = PromptCache(responses(), [openai_tts(client), missing_espeak])

    await cache.warm(deadline_per_prompt_s=1.0)

    assert cache.get("GREETING") is None
    assert cache.names() == ()
    assert cache.missing() == PROMPT_NAMES


async def test_prompts_persist_and_reload_without_rendering(
    double: OpenAIDouble, client: AsyncOpenAI, tmp_path: Path
) -> None:
    directory = prompts_directory(tmp_path)
    first = PromptCache(responses(), [openai_tts(client), EspeakTts()], directory)
    await first.warm(deadline_per_prompt_s=3.0)
    rendered = len(double.requests(route="speech"))

    second = PromptCache(responses(), [openai_tts(client), EspeakTts()], directory)
    await second.warm(deadline_per_prompt_s=3.0)

    assert rendered == len(PROMPT_NAMES)
    assert len(double.requests(route="speech")) == rendered, "a restart renders nothing"
    for name in PROMPT_NAMES:
        before, after = first.get(name), second.get(name)
        assert before is not None and after is not None
        assert (after.ulaw, after.engine, after.text) == (before.ulaw, before.engine, before.text)
        assert after.from_disk and not before.from_disk
    files = sorted(p.name for p in directory.iterdir())
    assert len(files) == len(PROMPT_NAMES)
    assert all(f.endswith(".ulaw") and f.split("-", 1)[0] in PROMPT_NAMES for f in files)


async def test_changed_template_is_rendered_again(
    double: OpenAIDouble, client: AsyncOpenAI, tmp_path: Path
) -> None:
    original = responses()
    await PromptCache(original, [openai_tts(client)], tmp_path).warm(3.0)
    double.clear_requests()

    edited = dataclasses.replace(
        original, templates={**original.templates, "FILLER": "Just a second, please."}
    )
    cache = PromptCache(edited, [openai_tts(client)], tmp_path)
    await cache.warm(3.0)

    [request] = double.requests(route="speech")
    assert request.body is not None and request.body["input"] == "Just a second, please."
    filler = cache.get("FILLER")
    assert filler is not None and filler.text == "Just a second, please." and not filler.from_disk
    greeting = cache.get("GREETING")
    assert greeting is not None and greeting.from_disk
    assert len(stored_files(tmp_path, "FILLER")) == 2, "the stale file is ignored, not read"


async def test_stored_fallback_prompts_upgrade_when_openai_recovers(
    double: OpenAIDouble, client: AsyncOpenAI, tmp_path: Path
) -> None:
    double.fail("speech", 500)
    await PromptCache(
        responses(), [openai_tts(client, fast_policy(attempts=1)), EspeakTts()], tmp_path
    ).warm(3.0)
    double.reset()

    espeak = EspeakTts()
    cache = PromptCache(responses(), [openai_tts(client), espeak], tmp_path)
    await cache.warm(3.0)

    assert engines_used(cache) == {f"openai:{MODEL}"}
    greeting = responses().template("GREETING")
    assert (tmp_path / prompt_filename("GREETING", greeting, espeak)).is_file()
