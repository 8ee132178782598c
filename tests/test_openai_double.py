"""The OpenAI test double, driven by the official ``openai`` client.

Why these tests matter: every resilience test in the project trusts the double to fail
the way the real API fails. Each test here pins one behaviour to the exception the
official client raises for it, so a drift in the double (or the client) shows up here
first and not as a mysteriously green resilience test.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
import threading
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI, Omit
from openai.types.chat import ChatCompletionMessageParam

from support.openai_double import (
    DEFAULT_MODELS,
    DEFAULT_TRANSCRIPTION,
    PCM_SAMPLE_RATE,
    Fault,
    OpenAIDouble,
    mask_api_key,
    mp3_supported,
    synthesize_pcm,
    wav_from_pcm,
)

pytestmark = pytest.mark.asyncio

API_KEY = "sk-test-double-0123456789abcdef"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is my balance?"}]
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble(api_key=API_KEY) as server:
        yield server
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("openai-double")]
    assert leftover == [], "the double must not leave server threads behind"


@pytest.fixture(autouse=True)
def _fresh_double(double: OpenAIDouble) -> Iterator[None]:
    double.reset()
    yield
    double.reset()


@pytest_asyncio.fixture
async def client(double: OpenAIDouble) -> AsyncIterator[AsyncOpenAI]:
    """The official client as services must configure it: no hidden retries, short timeout."""
    api = AsyncOpenAI(base_url=double.base_url, api_key=API_KEY, max_retries=0, timeout=2.0)
    yield api
    await api.close()


@pytest_asyncio.fixture
async def control(double: OpenAIDouble) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=double.control_url, timeout=5.0) as http:
        yield http


async def _chat(api: AsyncOpenAI, model: str = "gpt-4o") -> str:
    reply = await api.chat.completions.create(model=model, messages=USER)
    return reply.choices[0].message.content or ""


def _rms(pcm: bytes) -> float:
    samples = array("h", pcm)
    return float((sum(s * s for s in samples) / max(len(samples), 1)) ** 0.5)


def _wav(seconds: float) -> bytes:
    return bytes(wav_from_pcm(b"\x00\x00" * int(PCM_SAMPLE_RATE * seconds)))


# --------------------------------------------------------------------------- models


async def test_models_list_and_retrieve(client: AsyncOpenAI) -> None:
    listed = await client.models.list()
    assert [m.id for m in listed.data] == list(DEFAULT_MODELS)
    assert all(m.object == "model" and m.created > 0 and m.owned_by for m in listed.data)
    model = await client.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "system")


async def test_unknown_model_is_not_found_with_the_real_body(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-9")
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.body == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    with pytest.raises(openai.NotFoundError):
        await _chat(client, "gpt-9")


async def test_configured_models_decide_what_exists(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.set_models(["gpt-4o"])
    assert [m.id for m in (await client.models.list()).data] == ["gpt-4o"]
    with pytest.raises(openai.NotFoundError):
        await _chat(client, "gpt-4o-mini")


# --------------------------------------------------------------------------- chat


async def test_chat_non_stream_echoes_the_last_user_message(client: AsyncOpenAI) -> None:
    reply = await client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "What is my balance?"},
        ],
    )
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-4o"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "You said: What is my balance."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0


async def test_chat_stream_role_then_pieces_then_stop(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks[1:-1]]
    assert len(pieces) >= 3
    assert "".join(pieces) == "You said: What is my balance."
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


async def test_chat_stream_wire_format_is_sse_ending_in_done(double: OpenAIDouble) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    payload = {"model": "gpt-4o", "messages": USER, "stream": True}
    async with (
        httpx.AsyncClient(timeout=5.0) as http,
        http.stream(
            "POST", f"{double.base_url}/chat/completions", json=payload, headers=headers
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        lines = [line async for line in response.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


async def test_chat_stream_usage_chunk_when_asked(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_scripted_replies_global_and_per_model(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.set_chat_reply("Your balance is ten dollars.")
    double.set_chat_reply("Fallback speaking.", model="gpt-4o-mini")
    assert await _chat(client, "gpt-4o") == "Your balance is ten dollars."
    assert await _chat(client, "gpt-4o-mini") == "Fallback speaking."
    double.set_chat_reply(None)
    assert await _chat(client, "gpt-4o") == "You said: What is my balance."


# --------------------------------------------------------------------------- speech


async def test_speech_pcm_is_24k_s16le_with_length_from_text(client: AsyncOpenAI) -> None:
    text = "Your balance is ten."  # 20 characters -> 1.2 s at 60 ms per character
    audio = await client.audio.speech.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm"
    )
    pcm = audio.content
    assert len(pcm) == round(len(text) * 0.060 * PCM_SAMPLE_RATE) * 2
    assert _rms(pcm) > 2000, "speech must be audible, not silence"
    assert audio.response.headers["content-type"] == "audio/pcm"


async def test_speech_speed_and_cap(client: AsyncOpenAI) -> None:
    fast = await client.audio.speech.create(
        model="tts-1", voice="alloy", input="x" * 20, response_format="pcm", speed=2.0
    )
    assert len(fast.content) == round(0.6 * PCM_SAMPLE_RATE) * 2
    capped = await client.audio.speech.create(
        model="tts-1", voice="alloy", input="y" * 400, response_format="pcm"
    )
    assert len(capped.content) == 15 * PCM_SAMPLE_RATE * 2


async def test_speech_wav_has_a_valid_header(client: AsyncOpenAI) -> None:
    text = "Hello there"
    audio = await client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="coral", input=text, response_format="wav"
    )
    data = audio.content
    riff, size, wave, fmt = struct.unpack("<4sI4s4s", data[:16])
    channels, rate, _, _, bits = struct.unpack("<HIIHH", data[22:36])
    assert (riff, wave, fmt) == (b"RIFF", b"WAVE", b"fmt ")
    assert (channels, rate, bits) == (1, PCM_SAMPLE_RATE, 16)
    assert size == len(data) - 8
    assert len(data) - 44 == round(len(text) * 0.060 * PCM_SAMPLE_RATE) * 2


async def test_speech_mp3_is_real_mpeg_or_an_honest_400(client: AsyncOpenAI) -> None:
    if mp3_supported():
        audio = await client.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        assert audio.content[0] == 0xFF and audio.content[1] & 0xE0 == 0xE0  # frame sync
        assert audio.response.headers["content-type"] == "audio/mpeg"
    else:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.audio.speech.create(model="tts-1", voice="alloy", input="Hello")
        assert caught.value.code == "unsupported_in_double"
    with pytest.raises(openai.BadRequestError) as unsupported:
        await client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello", response_format="opus"
        )
    assert unsupported.value.code == "unsupported_in_double"
    assert unsupported.value.param == "response_format"


async def test_synthesis_is_deterministic_and_text_dependent() -> None:
    assert synthesize_pcm("abc") == synthesize_pcm("abc")
    assert synthesize_pcm("abcdefgh") != synthesize_pcm("bcdefghi")


# --------------------------------------------------------------------------- transcription


async def test_transcription_formats(double: OpenAIDouble, client: AsyncOpenAI) -> None:
    upload = ("utterance.wav", _wav(1.5), "audio/wav")
    result = await client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=upload)
    assert result.text == DEFAULT_TRANSCRIPTION
    double.set_transcription("I want to pay my bill.")
    text = await client.audio.transcriptions.create(
        model="whisper-1", file=upload, response_format="text"
    )
    assert text.strip() == "I want to pay my bill."
    verbose = await client.audio.transcriptions.create(
        model="whisper-1", file=upload, response_format="verbose_json"
    )
    assert verbose.text == "I want to pay my bill."
    assert verbose.duration == pytest.approx(1.5)


async def test_transcription_rejects_what_the_real_api_rejects(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad_format:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("audio.pcm", b"\x00" * 3200, "application/octet-stream")
        )
    assert "Invalid file format" in bad_format.value.message
    with pytest.raises(openai.BadRequestError) as too_short:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("tiny.wav", _wav(0.05), "audio/wav")
        )
    assert too_short.value.code == "audio_too_short"
    with pytest.raises(openai.BadRequestError) as incompatible:
        await client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe",
            file=("a.wav", _wav(1), "audio/wav"),
            response_format="verbose_json",
        )
    assert incompatible.value.param == "response_format"


async def test_transcription_stream_events(client: AsyncOpenAI) -> None:
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("a.wav", _wav(1), "audio/wav"), stream=True
    )
    events = [event async for event in stream]
    assert {e.type for e in events[:-1]} == {"transcript.text.delta"}
    assert events[-1].type == "transcript.text.done"
    assert "".join(getattr(e, "delta", "") for e in events[:-1]) == DEFAULT_TRANSCRIPTION


# --------------------------------------------------------------------------- auth and errors


async def test_missing_authorization_is_401_without_code(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.models.list(extra_headers={"Authorization": Omit()})
    assert caught.value.status_code == 401
    assert caught.value.code is None
    assert caught.value.type == "invalid_request_error"
    assert "You didn't provide an API key" in caught.value.message


async def test_wrong_key_is_401_invalid_api_key_with_masked_key(double: OpenAIDouble) -> None:
    wrong = "sk-wrong-SECRETSECRETSECRET-wxyz"
    api = AsyncOpenAI(base_url=double.base_url, api_key=wrong, max_retries=0, timeout=2.0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await _chat(api)
    await api.close()
    assert caught.value.code == "invalid_api_key"
    body: Any = caught.value.body
    assert body["message"] == (
        f"Incorrect API key provided: {mask_api_key(wrong)}. "
        "You can find your API key at https://platform.openai.com/account/api-keys."
    )
    assert mask_api_key(wrong) == "sk-wrong" + "*" * (len(wrong) - 12) + "wxyz"
    assert "SECRET" not in body["message"]


@pytest.mark.parametrize(
    ("status", "exc_type", "type_", "code"),
    [
        (401, openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
        (404, openai.NotFoundError, "invalid_request_error", "model_not_found"),
        (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "service_unavailable_error", "server_is_overloaded"),
    ],
)
async def test_injected_status_maps_to_the_client_exception(
    double: OpenAIDouble,
    client: AsyncOpenAI,
    status: int,
    exc_type: type[openai.APIStatusError],
    type_: str,
    code: str | None,
) -> None:
    double.fail("chat", status)
    with pytest.raises(exc_type) as caught:
        await _chat(client)
    assert caught.value.status_code == status
    assert (caught.value.type, caught.value.code) == (type_, code)
    body: Any = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}


async def test_rate_limit_carries_retry_after_and_quota_variant(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.fail("chat", 429, retry_after=7, count=1)
    with pytest.raises(openai.RateLimitError) as limited:
        await _chat(client)
    assert limited.value.response.headers["retry-after"] == "7"
    assert "Please try again in 7s" in limited.value.message
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    double.fail("chat", 429, error_code="insufficient_quota", count=1)
    with pytest.raises(openai.RateLimitError) as quota:
        await _chat(client)
    assert quota.value.code == "insufficient_quota"
    assert "retry-after" not in quota.value.response.headers


# --------------------------------------------------------------------------- timing faults


async def test_hang_ends_in_api_timeout_within_the_client_timeout(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.hang("chat")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.4).chat.completions.create(
            model="gpt-4o",
            messages=USER,
        )
    assert 0.35 <= time.monotonic() - started < 1.5
    assert [r.fault for r in double.requests("chat")] == ["hang"]


async def test_slow_first_byte_delays_then_answers(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.slow_first_byte("chat", 0.3, count=1)
    started = time.monotonic()
    assert await _chat(client) == "You said: What is my balance."
    assert time.monotonic() - started >= 0.3
    double.slow_first_byte("chat", 1.0, count=1)
    with pytest.raises(openai.APITimeoutError):
        await _chat(client.with_options(timeout=0.3))


async def test_stream_silent_is_caught_by_the_read_timeout(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.stream_silent("chat")
    quick = client.with_options(timeout=0.4)
    stream = await quick.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    assert stream.response.status_code == 200  # headers arrived, then nothing
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        async for _ in stream:
            pytest.fail("a silent stream must not yield chunks")
    assert time.monotonic() - started < 1.5


async def test_stream_silent_is_caught_by_an_iteration_budget(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.stream_silent("chat")
    stream = await client.with_options(timeout=30).chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.__anext__(), timeout=0.3)
    await stream.close()


async def test_stream_cut_raises_connection_error_after_some_chunks(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.stream_cut("chat", after_chunks=3)
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError) as caught:
        async for chunk in stream:
            received.append(chunk)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert len(received) == 3
    assert received[0].choices[0].delta.role == "assistant"


async def test_stream_cut_of_a_plain_json_body(double: OpenAIDouble, client: AsyncOpenAI) -> None:
    double.stream_cut("chat")
    with pytest.raises(openai.APIConnectionError):
        await _chat(client)


async def test_stream_cut_of_speech_audio(double: OpenAIDouble, client: AsyncOpenAI) -> None:
    double.stream_cut("speech", after_chunks=2)
    received = bytearray()
    # Raw byte streams are not wrapped by the client: a TTS service sees httpx2's error.
    with pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError)):
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="alloy",
            input="A fairly long sentence to speak.",
            response_format="pcm",
        ) as response:
            async for piece in response.iter_bytes():
                received += piece
    assert len(received) == 2 * 4800  # two 100 ms pieces of 24 kHz s16le


async def test_latency_per_chunk(double: OpenAIDouble, client: AsyncOpenAI) -> None:
    double.set_chat_reply("one two three")  # role + 3 pieces + stop + [DONE] = 6 chunks
    double.latency("chat", delay=0.1, chunk_delay=0.05)
    started = time.monotonic()
    stream = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 5
    assert time.monotonic() - started >= 0.1 + 5 * 0.05


# --------------------------------------------------------------------------- scoping and counts


async def test_model_scoped_fault_spares_other_models(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    double.fail("chat", 503, model="gpt-4o")
    with pytest.raises(openai.InternalServerError):
        await _chat(client, "gpt-4o")
    assert await _chat(client, "gpt-4o-mini") == "You said: What is my balance."
    with pytest.raises(openai.InternalServerError):
        await _chat(client, "gpt-4o")


async def test_count_limited_fault_heals(double: OpenAIDouble, client: AsyncOpenAI) -> None:
    fault = double.fail("chat", 500, count=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await _chat(client)
    assert await _chat(client)
    assert fault.id not in {f.id for f in double.faults()}
    assert [r.fault for r in double.requests("chat")] == ["status", "status", None]


async def test_route_scoping_and_wildcard(double: OpenAIDouble, client: AsyncOpenAI) -> None:
    double.fail("speech", 500)
    assert await _chat(client)
    double.reset()
    double.inject(Fault("status", status=503, count=2))  # route "*": everything
    with pytest.raises(openai.InternalServerError):
        await client.models.list()
    with pytest.raises(openai.InternalServerError):
        await _chat(client)
    assert await _chat(client)


async def test_fault_validation_rejects_typos() -> None:
    with pytest.raises(ValueError, match="unknown route"):
        Fault("status", route="chat/completions")
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault.from_dict({"kind": "explode"})
    with pytest.raises(ValueError, match="unknown fault fields"):
        Fault.from_dict({"kind": "hang", "modle": "gpt-4o"})


# --------------------------------------------------------------------------- request log


async def test_requests_are_recorded_without_the_key(
    double: OpenAIDouble, client: AsyncOpenAI
) -> None:
    before = time.time()
    assert double.requests() == []
    await _chat(client, "gpt-4o-mini")
    await client.models.retrieve("gpt-4o")
    chat, model = double.requests()
    assert (chat.route, chat.model, chat.method, chat.stream) == (
        "chat",
        "gpt-4o-mini",
        "POST",
        False,
    )
    assert (model.route, model.model) == ("models", "gpt-4o")
    assert before <= chat.timestamp <= model.timestamp <= time.time()
    assert "authorization" not in chat.headers
    assert API_KEY not in repr(double.requests())
    assert chat.body is not None and chat.body["messages"] == USER
    assert double.requests(route="chat", model="gpt-4o") == []


# --------------------------------------------------------------------------- control API


async def test_control_api_drives_faults_content_and_log(
    double: OpenAIDouble, client: AsyncOpenAI, control: httpx.AsyncClient
) -> None:
    spec = {"kind": "status", "route": "chat", "status": 429, "retry_after": 1, "count": 1}
    created = await control.post("/faults", json=spec)
    assert created.status_code == 201
    fault_id = created.json()["fault"]["id"]
    assert [f["id"] for f in (await control.get("/faults")).json()["faults"]] == [fault_id]
    with pytest.raises(openai.RateLimitError):
        await _chat(client)
    assert (await control.get("/faults")).json()["faults"] == []

    bad = await control.post("/faults", json={"kind": "status", "route": "nope"})
    assert bad.status_code == 400 and "unknown route" in bad.json()["error"]["message"]

    patched = await control.patch("/config", json={"chat_reply": "From the control API."})
    assert patched.json()["chat_reply"] == "From the control API."
    await control.patch("/config", json={"transcription_text": "Spoken via control."})
    assert await _chat(client) == "From the control API."
    transcript = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", _wav(1), "audio/wav")
    )
    assert transcript.text == "Spoken via control."

    logged = (await control.get("/requests", params={"route": "chat"})).json()["requests"]
    assert [r["fault"] for r in logged] == ["status", None]
    assert all("authorization" not in r["headers"] for r in logged)

    hang_id = (await control.post("/faults", json={"kind": "hang", "route": "chat"})).json()
    assert (await control.delete(f"/faults/{hang_id['fault']['id']}")).status_code == 200
    assert (await control.delete("/faults/flt_404")).status_code == 404
    assert (await control.post("/reset")).json() == {"reset": True}
    assert (await control.get("/requests")).json()["requests"] == []
    assert await _chat(client) == "You said: What is my balance."


async def test_control_release_frees_a_hung_request(
    double: OpenAIDouble, client: AsyncOpenAI, control: httpx.AsyncClient
) -> None:
    await control.post("/faults", json={"kind": "hang", "route": "chat"})
    pending = asyncio.create_task(_chat(client.with_options(timeout=30)))
    await asyncio.to_thread(double.wait_for_requests, 1, route="chat")
    started = time.monotonic()
    await control.post("/release")
    with pytest.raises(openai.InternalServerError):
        await pending
    assert time.monotonic() - started < 1.0


# --------------------------------------------------------------------------- lifecycle


async def test_close_releases_hung_requests_and_restart_reuses_the_port() -> None:
    server = OpenAIDouble(api_key=API_KEY).start()
    api = AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=30)
    try:
        server.hang("chat")
        pending = asyncio.create_task(_chat(api))
        await asyncio.to_thread(server.wait_for_requests, 1, route="chat")
        started = time.monotonic()
        await asyncio.to_thread(server.close)
        assert time.monotonic() - started < 2.0
        assert not server.running
        with pytest.raises(openai.APIError):
            await pending
        with pytest.raises(openai.APIConnectionError):  # provider down: connection refused
            await _chat(api.with_options(timeout=2))
        port = server.port
        server.start()
        assert server.port == port
        server.clear_faults()
        assert await _chat(api.with_options(timeout=2)) == "You said: What is my balance."
    finally:
        await api.close()
        server.close()


async def test_cli_process_is_driven_only_through_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = (tmp_path / "double.log").open("wb")
    pending: asyncio.Task[str] | None = None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "support.openai_double",
        "--port",
        "0",
        "--api-key",
        API_KEY,
        cwd=TESTS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    try:
        assert proc.stdout is not None
        ready = (await asyncio.wait_for(proc.stdout.readline(), timeout=15)).decode()
        fields = dict(part.split("=", 1) for part in ready.split() if "=" in part)
        monkeypatch.setenv("OPENAI_BASE_URL", fields["base_url"])
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        api = AsyncOpenAI(max_retries=0, timeout=2.0)  # configured from the environment only
        assert await _chat(api) == "You said: What is my balance."
        async with httpx.AsyncClient(base_url=fields["control_url"], timeout=5) as control:
            await control.post("/faults", json={"kind": "hang", "route": "chat"})
            pending = asyncio.create_task(_chat(api.with_options(timeout=30)))
            for _ in range(100):
                if (await control.get("/requests", params={"route": "chat"})).json()["requests"][
                    1:
                ]:
                    break
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=5) == 0  # hung request released
        with pytest.raises(openai.APIError):
            await pending
        await api.close()
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
