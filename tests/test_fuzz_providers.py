"""Fuzzing what the OpenAI engines see: any status, content type and body, cut anywhere.

The official client talks to an `httpx2.MockTransport` that answers with
hypothesis-drawn responses (tests/support/openai_double.py plays the
realistic faults; random bytes are this file's job). The property, for chat,
transcription and speech alike: an engine gives a usable result or raises a
*clear* error (a DependencyError saying what was wrong, or an openai.APIError
for an HTTP status) that `classify` sorts into a kind, so `walk` moves on to
the next provider. For chat, a reply that started streams on to its end
whatever the rest of the stream holds: a cut or garbage ends the reply there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2
import numpy as np
import openai
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_fuzz_wire import rejected

from vagent.services.audio import Audio
from vagent.services.llm_service.engines import OpenAIChat, ScriptedChat
from vagent.services.resilience import (
    Dependency,
    DependencyError,
    ErrorKind,
    Link,
    Policy,
    classify,
    walk,
)
from vagent.services.responses import FallbackResponseManager
from vagent.services.stt_service.engines import OpenAIStt
from vagent.services.tts_service.engines import OpenAITts

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = set(ErrorKind)
CLEAR = (DependencyError, openai.APIError)
UTTERANCE = Audio(np.zeros(1600, dtype="<i2").tobytes(), 8000)  # 0.2 s


@dataclass(frozen=True)
class Answer:
    """A drawn HTTP response: the body comes in `parts`; `cut` ends it with a transport error."""

    status: int
    content_type: str
    parts: tuple[bytes, ...]
    cut: bool
    encoding: str = ""  # Content-Encoding: a gzip header on bytes that are not gzip

    async def body(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        if self.cut:
            raise httpx2.RemoteProtocolError("peer closed connection mid-body")

    def response(self, request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": self.content_type} if self.content_type else {}
        if self.encoding:
            headers["content-encoding"] = self.encoding
        return httpx2.Response(self.status, headers=headers, content=self.body())


class MockOpenAI:
    """One client for every example, answering `answer` (building one per example is slow)."""

    def __init__(self) -> None:
        self.answer = Answer(500, "", (), False)
        transport = httpx2.MockTransport(lambda request: self.answer.response(request))
        self.client = openai.AsyncOpenAI(
            api_key="sk-fuzz",
            base_url="http://openai.invalid/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
        )


OPENAI = MockOpenAI()


def _dependency() -> Dependency:
    """A fresh policy per example: one attempt, and no breaker left open by the last example."""
    return Dependency(Policy("fuzz", timeout_s=2.0, attempts=1))


# --------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=10,
)
contents = st.text(max_size=30) | st.sampled_from(["Hello there. ", "How are you? ", ""])
chunks = st.one_of(
    st.builds(lambda c: {"choices": [{"index": 0, "delta": {"content": c}}]}, contents),
    st.builds(lambda c: {"choices": [{"delta": {"content": c}}]}, json_values),
    st.builds(lambda c: {"choices": c}, json_values),
    st.builds(lambda m: {"error": {"message": m}}, json_values),
    json_values,
)
sse_events = st.one_of(
    chunks.map(lambda c: b"data: " + json.dumps(c).encode() + b"\n\n"),
    st.sampled_from([b"data: [DONE]\n\n", b"data: garbage\n\n", b"\n", b": keep-alive\n\n"]),
    st.sampled_from([b"event: error\ndata: {}\n\n", b"data: " + b"[" * 3000 + b"\n\n"]),
    st.binary(max_size=30),
)
STATUSES = st.sampled_from([200, 200, 200, 200, 400, 401, 404, 413, 429, 500, 503]) | st.integers(
    200, 599
)
TYPES = st.sampled_from(
    ["text/event-stream", "application/json", "text/html", "audio/pcm", "application/octet-stream"]
) | st.just("")


ENCODINGS = st.sampled_from(["", "", "", "gzip", "deflate", "identity", "x-unknown"])


def answers(bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[Answer]:
    parts = st.lists(bodies, max_size=6).map(tuple)
    return st.builds(Answer, STATUSES, TYPES, parts, st.booleans(), ENCODINGS)


json_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda t: json.dumps({"text": t}).encode(), json_values),
    st.binary(max_size=40),
    st.just(b"[" * 100_000),
)
FIRST = b'data: {"choices": [{"delta": {"content": "Hello there. "}}]}\n\n'


def _sse(*events: bytes) -> Answer:
    return Answer(200, "text/event-stream", events, cut=False)


# --------------------------------------------------------------------------- chat


async def _chat(answer: Answer) -> list[str] | BaseException:
    OPENAI.answer = answer
    engine = OpenAIChat(OPENAI.client, "gpt-fuzz", "primary", _dependency())
    try:
        reply = await engine.start([{"role": "user", "content": "hi"}], time.time() + 5)
    except Exception as exc:
        return exc
    return [reply.first, *[piece async for piece in reply.rest]]  # must never raise


@FUZZ
@given(answers(sse_events))
@example(_sse(FIRST, b"data: garbage\n\n"))
@example(_sse(FIRST, b'data: {"choices": 5}\n\n'))
@example(_sse(FIRST, b'data: {"choices": [{"delta": null}]}\n\n'))
@example(_sse(b'data: {"choices": [{"delta": {"content": 5}}]}\n\n'))
@example(Answer(200, "text/event-stream", (FIRST,), cut=True))
@example(Answer(300, "", (), cut=True))  # an error body cut: the client let httpx2's error out
@example(Answer(200, "text/event-stream", (FIRST, b"\x00\x01"), False, "gzip"))
def test_chat_streams_a_reply_to_its_end_or_fails_clearly(answer: Answer) -> None:
    """Regression: garbage after the first sentence escaped the reply iterator as
    JSONDecodeError/TypeError/AttributeError and failed the whole llm turn."""
    outcome = asyncio.run(_chat(answer))
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, CLEAR), repr(outcome)
        assert classify(outcome) in KINDS
    else:
        assert outcome and all(isinstance(piece, str) and piece for piece in outcome)


def test_a_malformed_chunk_is_counted() -> None:
    before = rejected("openai", "malformed_chunk")
    outcome = asyncio.run(_chat(Answer(200, "text/event-stream", (b"data: {{\n\n",), False)))
    assert isinstance(outcome, DependencyError) and "malformed stream chunk" in str(outcome)
    assert rejected("openai", "malformed_chunk") == before + 1


async def _chain(answer: Answer) -> str:
    OPENAI.answer = answer
    engines = [
        OpenAIChat(OPENAI.client, "gpt-fuzz", "primary", _dependency()),
        ScriptedChat(FallbackResponseManager.load()),
    ]
    messages = [{"role": "user", "content": "what are your opening hours"}]
    links = [Link(e.name, e.kind, lambda d, e=e: e.start(messages, d)) for e in engines]
    served = await walk("llm", links, time.time() + 5)
    return served.link.kind


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(sse_events))
def test_whatever_openai_answers_the_chain_serves(answer: Answer) -> None:
    assert asyncio.run(_chain(answer)) in ("primary", "scripted")


# --------------------------------------------------------------------------- transcription


async def _transcribe(answer: Answer) -> str | Exception:
    OPENAI.answer = answer
    engine = OpenAIStt(OPENAI.client, "whisper-fuzz", _dependency())
    try:
        return await engine.transcribe(UTTERANCE, time.time() + 5)
    except Exception as exc:
        return exc


@FUZZ
@given(answers(json_bodies))
@example(Answer(200, "application/json", (b"garbage",), False))
@example(Answer(200, "application/json", (b"[]",), False))
@example(Answer(200, "application/json", (b'{"text": 5}',), False))
@example(Answer(200, "application/json", (b"[" * 100_000,), False))
def test_transcription_is_text_or_a_clear_error(answer: Answer) -> None:
    """Regression: a 200 that was not a transcription raised JSONDecodeError,
    AttributeError or RecursionError, errors that say nothing about the provider."""
    outcome = asyncio.run(_transcribe(answer))
    if isinstance(outcome, Exception):
        assert isinstance(outcome, CLEAR), repr(outcome)
        assert classify(outcome) in KINDS
    else:
        assert isinstance(outcome, str)


# --------------------------------------------------------------------------- speech


async def _speak(answer: Answer) -> Audio | Exception:
    OPENAI.answer = answer
    engine = OpenAITts(OPENAI.client, "tts-fuzz", "alloy", _dependency())
    try:
        return await engine.synthesize("Hello there.", time.time() + 5)
    except Exception as exc:
        return exc


@FUZZ
@given(answers(st.binary(max_size=2000)))
@example(Answer(200, "application/json", (b'{"error": {"message": "quota"}}',), False))
@example(Answer(200, "text/html", (b"<html>" + b" " * 2000 + b"</html>",), False))
def test_speech_is_audio_or_a_clear_error(answer: Answer) -> None:
    """Regression: a 200 carrying JSON or an HTML page (a proxy's error) was played
    to the caller as 24 kHz PCM noise."""
    outcome = asyncio.run(_speak(answer))
    if isinstance(outcome, Exception):
        assert isinstance(outcome, CLEAR), repr(outcome)
        assert classify(outcome) in KINDS
        return
    assert outcome.rate == 24_000 and outcome.samples >= 480
    assert not answer.content_type.startswith(("application/json", "text/"))
