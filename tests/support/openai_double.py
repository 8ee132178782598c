"""A faithful OpenAI-compatible test double that runs as a real HTTP server on loopback.

Why a real server and not a mocked transport: the resilience layer must be proven against
real sockets, where a hang is a socket that never answers, a cut stream is a connection
that closes mid-body, and a stopped provider is a refused connection. Only a real server
lets the official ``openai`` client raise exactly what it raises in production.

Two ways to run it:

* in-process, in a background thread::

      with OpenAIDouble(api_key="sk-test-123") as double:
          client = AsyncOpenAI(base_url=double.base_url, api_key="sk-test-123")
          double.fail("chat", 429, retry_after=2, model="gpt-4o", count=1)

* as its own process, reached only through ``OPENAI_BASE_URL``::

      cd tests && python -m support.openai_double --port 0 --api-key sk-test-123

  It prints ``openai-double ready base_url=... control_url=...`` once it accepts
  connections; tests in other processes drive it through ``/_double/...``.

Routes follow the public API: ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/chat/completions`` (JSON or SSE), ``POST /v1/audio/speech`` (mp3, wav, pcm) and
``POST /v1/audio/transcriptions`` (json, text, verbose_json, srt, vtt; SSE for the gpt-4o
transcribe models). Error bodies copy the real ones field for field.

Control API (JSON, loopback only, no auth), under ``/_double``:

* ``GET /health``; ``POST /reset`` (faults, content, log, releases hung requests);
  ``POST /release`` (release hung/paused requests only)
* ``GET|POST|DELETE /faults``, ``DELETE /faults/{id}``; a POST body is a ``Fault`` as JSON,
  e.g. ``{"kind": "status", "route": "chat", "status": 429, "retry_after": 2, "count": 1}``
* ``GET /requests?route=&model=``, ``DELETE /requests``
* ``GET /config``; ``PATCH|POST /config`` with any of ``models``, ``chat_reply``,
  ``chat_replies`` (model -> reply), ``transcription_text``, ``api_key``, ``ms_per_char``,
  ``max_speech_seconds``

Deliberate limits, each answered with a real-shaped 400 (code ``unsupported_in_double``):
speech formats opus/aac/flac, and mp3 when the optional ``lameenc`` encoder is not
installed (the double never passes off WAV or PCM bytes as mp3).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextvars
import copy
import importlib
import json
import logging
import math
import re
import signal
import socket
import struct
import threading
import time
import uuid
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from types import FrameType, ModuleType
from typing import Any, Literal, get_args

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_TRANSCRIPTION",
    "PCM_SAMPLE_RATE",
    "ROUTES",
    "Fault",
    "FaultKind",
    "OpenAIDouble",
    "RequestRecord",
    "build_app",
    "mask_api_key",
    "mp3_supported",
    "synthesize_pcm",
]

# --------------------------------------------------------------------------- constants

PCM_SAMPLE_RATE = 24_000
"""OpenAI's ``pcm`` speech format: raw 24 kHz, 16-bit signed little-endian, mono."""

ROUTES: tuple[str, ...] = ("models", "chat", "speech", "transcriptions")
"""Route names used by faults and request records; ``"*"`` in a fault matches them all."""

FaultKind = Literal["status", "hang", "slow_first_byte", "stream_silent", "stream_cut", "latency"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

# id -> (created, owned_by), as the real /v1/models lists them.
_MODEL_CATALOG: dict[str, tuple[int, str]] = {
    "gpt-4o": (1715367049, "system"),
    "gpt-4o-mini": (1721172741, "system"),
    "gpt-3.5-turbo": (1677610602, "openai"),
    "gpt-4o-mini-transcribe": (1742068463, "system"),
    "gpt-4o-transcribe": (1742068463, "system"),
    "whisper-1": (1677532384, "openai-internal"),
    "gpt-4o-mini-tts": (1742403959, "system"),
    "tts-1": (1681940951, "openai-internal"),
}
DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-3.5-turbo",
    "gpt-4o-mini-transcribe",
    "whisper-1",
    "gpt-4o-mini-tts",
    "tts-1",
)
DEFAULT_TRANSCRIPTION = "Hello, I would like to check the status of my order."
DEFAULT_GREETING = "Hello! How can I help you today?"

_SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
_AUDIO_CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav", "pcm": "audio/pcm"}
_TRANSCRIBE_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
_TRANSCRIBE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
_WHISPER_ONLY_FORMATS = ("srt", "verbose_json", "vtt")
_MAX_SPEECH_INPUT = 4096

_POLL_S = 0.02
"""How often a paused request checks for release or client disconnect (cross-thread safe)."""

_AUDIO_CHUNK_BYTES = 4_800
"""100 ms of 24 kHz PCM: audio is streamed in these pieces so chunk faults apply to it too."""

_KEY_URL = "https://platform.openai.com/account/api-keys"
_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(with blank username) if you're accessing the API from your browser and are prompted for "
    f"a username and password. You can obtain an API key from {_KEY_URL}."
)
_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)

_log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- errors


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The one error envelope every OpenAI endpoint uses; clients parse exactly these keys."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def mask_api_key(key: str) -> str:
    """Mask a key the way the real 401 message does: first 8 and last 4 characters kept.

    The real API echoes very short strings (e.g. ``undefined``) unmasked; so does the double,
    so a service that logs provider errors verbatim is caught leaking either way.
    """
    if len(key) <= 12:
        return key
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


def _invalid_key_body(presented_key: str) -> dict[str, Any]:
    masked = mask_api_key(presented_key)
    message = f"Incorrect API key provided: {masked}. You can find your API key at {_KEY_URL}."
    return error_body(message, "invalid_request_error", None, "invalid_api_key")


def _model_not_found_message(model: str) -> str:
    return f"The model `{model}` does not exist or you do not have access to it."


def _retry_after_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _status_error(
    status: int, *, model: str | None, presented_key: str, fault: Fault
) -> tuple[dict[str, Any], dict[str, str]]:
    """Body and headers of an injected status error, shaped like the real one for ``status``."""
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["retry-after"] = _retry_after_text(fault.retry_after)
    if status == 429:
        reset = _retry_after_text(fault.retry_after) if fault.retry_after is not None else "20"
        headers["x-ratelimit-limit-requests"] = "3"
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = f"{reset}s"
    body = _canned_status_error(status, model=model, presented_key=presented_key, fault=fault)
    if fault.message is not None:
        body["error"]["message"] = fault.message
    return body, headers


def _canned_status_error(
    status: int, *, model: str | None, presented_key: str, fault: Fault
) -> dict[str, Any]:
    name = model or "gpt-4o"
    if status == 401:
        return _invalid_key_body(presented_key)
    if status == 404:
        return error_body(
            _model_not_found_message(name), "invalid_request_error", None, "model_not_found"
        )
    if status == 429 and fault.error_code == "insufficient_quota":
        message = (
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        )
        return error_body(message, "insufficient_quota", None, "insufficient_quota")
    if status == 429:
        wait = _retry_after_text(fault.retry_after) if fault.retry_after is not None else "20"
        message = (
            f"Rate limit reached for {name} in organization org-double on requests per min "
            f"(RPM): Limit 3, Used 3, Requested 1. Please try again in {wait}s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        )
        return error_body(message, "requests", None, fault.error_code or "rate_limit_exceeded")
    if status == 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return error_body(message, "server_error", None, fault.error_code)
    if status == 503:
        message = "The server is overloaded or not ready yet."
        code = fault.error_code or "server_is_overloaded"
        return error_body(message, "service_unavailable_error", None, code)
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return error_body(f"The OpenAI double injected HTTP {status}.", type_, None, fault.error_code)


# --------------------------------------------------------------------------- audio


@cache
def _syllable(period: int) -> bytes:
    """One 250 ms voiced 'syllable' with a smooth envelope, so VAD sees speech-like bursts.

    Precomputed once per pitch and tiled: synthesis stays O(copy) even for long inputs.
    """
    length = PCM_SAMPLE_RATE // 4
    samples = array("h")
    for n in range(length):
        phase = 2 * math.pi * n / period
        voice = 0.6 * math.sin(phase) + 0.25 * math.sin(2 * phase) + 0.15 * math.sin(3 * phase)
        envelope = math.sin(math.pi * n / length) ** 2
        samples.append(int(16_000 * envelope * voice))
    if samples.itemsize != 2:  # pragma: no cover - array('h') is 16-bit on every CPython
        raise RuntimeError("array('h') is not 16-bit on this platform")
    data = samples.tobytes()
    return data if _little_endian() else _byteswap(data)


def _little_endian() -> bool:
    return struct.pack("=h", 1) == struct.pack("<h", 1)


def _byteswap(data: bytes) -> bytes:
    swapped = array("h", data)
    swapped.byteswap()
    return swapped.tobytes()


_PITCH_PERIODS = (120, 100, 150, 80)  # 200, 240, 160, 300 Hz; each divides a syllable evenly


def synthesize_pcm(
    text: str, *, ms_per_char: float = 60.0, max_seconds: float = 15.0, speed: float = 1.0
) -> bytes:
    """Audible, deterministic 24 kHz s16le mono audio whose length follows the text.

    Duration is ``min(len(text) * ms_per_char, max_seconds) / speed`` so tests can predict
    byte counts exactly; pitch follows the characters so different texts sound different.
    """
    seconds = min(len(text) * ms_per_char / 1000.0, max_seconds) / speed
    samples = max(1, round(seconds * PCM_SAMPLE_RATE))
    syllable_samples = PCM_SAMPLE_RATE // 4
    count = -(-samples // syllable_samples)
    codes = [ord(ch) for ch in text] or [0]
    pieces = [_syllable(_PITCH_PERIODS[codes[i % len(codes)] % 4]) for i in range(count)]
    return b"".join(pieces)[: samples * 2]


def wav_from_pcm(pcm: bytes, sample_rate: int = PCM_SAMPLE_RATE) -> bytes:
    """Wrap PCM in a canonical 44-byte RIFF/WAVE header (mono, 16-bit)."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm


def wav_duration(data: bytes) -> float | None:
    """Seconds of audio in a PCM WAV file, or None when it is not one we can read."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, byte_rate, data_size = 12, 0, -1
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack("<4sI", data[offset : offset + 8])
        if chunk_id == b"fmt " and offset + 16 <= len(data):
            byte_rate = struct.unpack("<I", data[offset + 16 : offset + 20])[0]
        if chunk_id == b"data":
            data_size = min(size, len(data) - offset - 8)
            break
        offset += 8 + size + (size & 1)
    if byte_rate <= 0 or data_size < 0:
        return None
    return data_size / byte_rate


def _load_lameenc() -> ModuleType | None:
    """lameenc is optional: without it the double refuses mp3 instead of faking it."""
    try:
        return importlib.import_module("lameenc")
    except ImportError:
        return None


def mp3_supported() -> bool:
    """True when the double can produce real MPEG audio (the ``lameenc`` package exists)."""
    return _load_lameenc() is not None


def mp3_from_pcm(pcm: bytes) -> bytes:
    """Encode 24 kHz mono PCM to MPEG-2 Layer III with LAME."""
    lameenc = _load_lameenc()
    if lameenc is None:
        raise RuntimeError("lameenc is not installed")
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(48)
    encoder.set_in_sample_rate(PCM_SAMPLE_RATE)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return bytes(encoder.encode(pcm)) + bytes(encoder.flush())


# --------------------------------------------------------------------------- faults and records


@dataclass
class Fault:
    """One injected failure. The first live fault matching a request's route and model wins.

    kind:
      ``status``          answer ``status`` with the real error body (``retry_after`` adds the
                          header; ``error_code`` picks a variant, e.g. ``insufficient_quota``).
      ``hang``            accept the request and never send a byte, until the client leaves,
                          the fault is cleared/reset, or the double closes.
      ``slow_first_byte`` wait ``delay`` seconds before the status line, then answer normally.
      ``stream_silent``   send 200 headers, then nothing (until released or the client leaves).
      ``stream_cut``      send ``after_chunks`` body chunks (SSE events / 100 ms audio pieces),
                          then close the connection without the end of the body; a non-stream
                          body is cut in half.
      ``latency``         ``delay`` before the answer and ``chunk_delay`` between chunks.
    Every kind honours ``delay`` and ``chunk_delay``. ``count`` = fail the next N matching
    requests, then heal (None = until removed). ``model`` = only requests for that model.
    """

    kind: FaultKind
    route: str = "*"
    model: str | None = None
    count: int | None = None
    status: int = 500
    retry_after: float | None = None
    error_code: str | None = None
    message: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    after_chunks: int = 2
    id: str = ""
    hits: int = 0

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        """Reject nonsense early, so a typo in a test fails loudly instead of never matching."""
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.route != "*" and self.route not in ROUTES:
            raise ValueError(f"unknown route {self.route!r}; expected '*' or one of {ROUTES}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be 400-599, not {self.status}")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1 (or None for 'until removed')")
        if self.delay < 0 or self.chunk_delay < 0 or self.after_chunks < 0:
            raise ValueError("delay, chunk_delay and after_chunks must be >= 0")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")

    def matches(self, route: str, model: str | None) -> bool:
        return self.route in ("*", route) and (self.model is None or self.model == model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build from the control API's JSON; unknown keys are an error, not silently dropped."""
        allowed = set(cls.__dataclass_fields__) - {"id", "hits"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault needs a 'kind'")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


@dataclass(frozen=True)
class RequestRecord:
    """What reached the double: enough to assert on routing, retries and breaker behaviour."""

    route: str
    method: str
    path: str
    model: str | None
    timestamp: float
    headers: dict[str, str]
    body: dict[str, Any] | None
    stream: bool
    fault: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECRET_HEADERS = frozenset({"authorization", "api-key"})

# --------------------------------------------------------------------------- state


class DoubleState:
    """Everything tests control: content, models, key, faults and the request log.

    Thread-safe: the server's event loop and the test thread both touch it, so every
    mutation happens under one lock and readers get copies.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "sk-test-double",
        models: Iterable[str] | None = None,
        chat_reply: str | None = None,
        transcription_text: str | None = None,
        ms_per_char: float = 60.0,
        max_speech_seconds: float = 15.0,
    ) -> None:
        self._lock = threading.Lock()
        self._initial = (api_key, tuple(models or DEFAULT_MODELS), chat_reply, transcription_text)
        self.ms_per_char = ms_per_char
        self.max_speech_seconds = max_speech_seconds
        self._faults: list[Fault] = []
        self._records: list[RequestRecord] = []
        self._fault_seq = 0
        self._generation = 0
        self._closing = False
        self._restore_content()

    def _restore_content(self) -> None:
        api_key, models, chat_reply, transcription_text = self._initial
        self._api_key = api_key
        self._models = list(models)
        self._chat_replies: dict[str | None, str] = {}
        if chat_reply is not None:
            self._chat_replies[None] = chat_reply
        self._transcription = transcription_text

    # -- content ----------------------------------------------------------------------

    @property
    def api_key(self) -> str | None:
        """The accepted key; None accepts any Bearer key (a missing header is still a 401)."""
        return self._api_key

    def set_api_key(self, key: str | None) -> None:
        with self._lock:
            self._api_key = key

    def models(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def set_models(self, models: Iterable[str]) -> None:
        with self._lock:
            self._models = list(models)

    def has_model(self, model: str) -> bool:
        with self._lock:
            return model in self._models

    def set_chat_reply(self, reply: str | None, *, model: str | None = None) -> None:
        """Fix the assistant's reply (for one model, or all); None restores the default."""
        with self._lock:
            if reply is None:
                self._chat_replies.pop(model, None)
            else:
                self._chat_replies[model] = reply

    def chat_reply_for(self, model: str, messages: Sequence[Any]) -> str:
        with self._lock:
            scripted = self._chat_replies.get(model, self._chat_replies.get(None))
        return scripted if scripted is not None else default_chat_reply(messages)

    def set_transcription(self, text: str | None) -> None:
        """Fix what every transcription returns; None restores DEFAULT_TRANSCRIPTION."""
        with self._lock:
            self._transcription = text

    @property
    def transcription_text(self) -> str:
        with self._lock:
            text = self._transcription
        return DEFAULT_TRANSCRIPTION if text is None else text

    # -- faults -----------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        """Add a fault (a copy is stored); returns it with its id, e.g. ``flt_3``."""
        with self._lock:
            self._fault_seq += 1
            stored = replace(fault, id=f"flt_{self._fault_seq}", hits=0)
            self._faults.append(stored)
            return copy.copy(stored)

    def fail(
        self,
        route: str,
        status: int,
        *,
        model: str | None = None,
        count: int | None = None,
        retry_after: float | None = None,
        error_code: str | None = None,
        message: str | None = None,
    ) -> Fault:
        """Answer ``route`` with a real-shaped ``status`` error (401/404/429/500/503/...)."""
        return self.inject(
            Fault(
                "status",
                route,
                model,
                count,
                status=status,
                retry_after=retry_after,
                error_code=error_code,
                message=message,
            )
        )

    def hang(self, route: str, *, model: str | None = None, count: int | None = None) -> Fault:
        """Accept requests on ``route`` and never answer (until released, cleared or closed)."""
        return self.inject(Fault("hang", route, model, count))

    def slow_first_byte(
        self, route: str, delay: float, *, model: str | None = None, count: int | None = None
    ) -> Fault:
        """Hold the status line back ``delay`` seconds, then answer normally."""
        return self.inject(Fault("slow_first_byte", route, model, count, delay=delay))

    def stream_silent(
        self, route: str, *, model: str | None = None, count: int | None = None
    ) -> Fault:
        """Send 200 headers, then silence: the failure only a read/iteration budget catches."""
        return self.inject(Fault("stream_silent", route, model, count))

    def stream_cut(
        self,
        route: str,
        after_chunks: int = 2,
        *,
        model: str | None = None,
        count: int | None = None,
        chunk_delay: float = 0.0,
    ) -> Fault:
        """Send ``after_chunks`` chunks, then drop the connection without ``[DONE]``."""
        return self.inject(
            Fault(
                "stream_cut",
                route,
                model,
                count,
                after_chunks=after_chunks,
                chunk_delay=chunk_delay,
            )
        )

    def latency(
        self,
        route: str,
        *,
        delay: float = 0.0,
        chunk_delay: float = 0.0,
        model: str | None = None,
        count: int | None = None,
    ) -> Fault:
        """Add ``delay`` before each answer and ``chunk_delay`` between streamed chunks."""
        return self.inject(
            Fault("latency", route, model, count, delay=delay, chunk_delay=chunk_delay)
        )

    def faults(self) -> list[Fault]:
        """Live faults (copies), with remaining ``count`` and ``hits`` so far."""
        with self._lock:
            return [copy.copy(f) for f in self._faults]

    def remove_fault(self, fault_id: str) -> bool:
        with self._lock:
            kept = [f for f in self._faults if f.id != fault_id]
            removed = len(kept) != len(self._faults)
            self._faults = kept
            self._generation += 1
            return removed

    def clear_faults(self) -> None:
        """Remove every fault and release requests that are hanging or paused."""
        with self._lock:
            self._faults.clear()
            self._generation += 1

    def take_fault(self, route: str, model: str | None) -> Fault | None:
        """Claim the first matching fault for one request, spending one of its ``count``."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(route, model):
                    continue
                fault.hits += 1
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                return copy.copy(fault)
        return None

    # -- hang release -------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped by every release; a paused request gives up once it changes."""
        with self._lock:
            return self._generation

    def released_since(self, generation: int) -> bool:
        with self._lock:
            return self._closing or self._generation != generation

    def release_hung(self) -> None:
        """Let go of every hanging or paused request (they are closed without an answer)."""
        with self._lock:
            self._generation += 1

    def _set_closing(self, closing: bool) -> None:
        with self._lock:
            self._closing = closing
            self._generation += 1

    # -- request log --------------------------------------------------------------------

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self._records.append(entry)

    def requests(self, route: str | None = None, model: str | None = None) -> list[RequestRecord]:
        """Requests received so far (oldest first), optionally filtered."""
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if (route is None or r.route == route) and (model is None or r.model == model)
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    def wait_for_requests(
        self,
        count: int,
        *,
        route: str | None = None,
        model: str | None = None,
        timeout: float = 5.0,
    ) -> list[RequestRecord]:
        """Block until ``count`` matching requests arrived (for tests driving other threads)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests(route, model)
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(_POLL_S)

    # -- whole-state operations ---------------------------------------------------------

    def reset(self) -> None:
        """Back to the constructor's state: no faults, default content, empty request log,
        and every hanging request released."""
        with self._lock:
            self._faults.clear()
            self._records.clear()
            self._generation += 1
            self._restore_content()

    def config_snapshot(self) -> dict[str, Any]:
        """Current content settings; never the key itself, only whether one is required."""
        with self._lock:
            return {
                "models": list(self._models),
                "chat_reply": self._chat_replies.get(None),
                "chat_replies": {k: v for k, v in self._chat_replies.items() if k is not None},
                "transcription_text": self._transcription,
                "api_key_required": self._api_key is not None,
                "ms_per_char": self.ms_per_char,
                "max_speech_seconds": self.max_speech_seconds,
            }

    def apply_config(self, data: dict[str, Any]) -> None:
        """Partial update from the control API; keys that are absent are left alone."""
        known = {"models", "chat_reply", "chat_replies", "transcription_text", "api_key"}
        unknown = set(data) - known - {"ms_per_char", "max_speech_seconds"}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        if "models" in data:
            self.set_models(_str_list(data["models"], "models"))
        if "chat_reply" in data:
            self.set_chat_reply(_opt_str(data["chat_reply"], "chat_reply"))
        if "chat_replies" in data:
            self._apply_chat_replies(data["chat_replies"])
        if "transcription_text" in data:
            self.set_transcription(_opt_str(data["transcription_text"], "transcription_text"))
        if "api_key" in data:
            self.set_api_key(_opt_str(data["api_key"], "api_key"))
        if "ms_per_char" in data:
            self.ms_per_char = float(data["ms_per_char"])
        if "max_speech_seconds" in data:
            self.max_speech_seconds = float(data["max_speech_seconds"])

    def _apply_chat_replies(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValueError("chat_replies must be an object of model -> reply (or null)")
        for model, reply in value.items():
            self.set_chat_reply(_opt_str(reply, f"chat_replies.{model}"), model=str(model))


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings")
    return list(value)


def _opt_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null")
    return value


# --------------------------------------------------------------------------- chat content


def _message_text(content: Any) -> str:
    """Text of a message whose content is a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def default_chat_reply(messages: Sequence[Any]) -> str:
    """Deterministic echo of the last user message, so tests can predict replies."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _message_text(message.get("content")).strip().rstrip(".!?").strip()
            if text:
                return f"You said: {text}."
    return DEFAULT_GREETING


def split_reply(reply: str) -> list[str]:
    """Word-sized pieces that join back to exactly ``reply`` (one streamed delta each)."""
    pieces = re.findall(r"\S+\s*", reply)
    if pieces and not reply[0].isspace():
        return pieces
    lead = reply[: len(reply) - len(reply.lstrip())]
    return [lead + pieces[0], *pieces[1:]] if pieces else ([reply] if reply else [])


def _count_words(messages: Sequence[Any]) -> int:
    return sum(
        len(_message_text(m.get("content")).split()) + 3 for m in messages if isinstance(m, dict)
    )


# --------------------------------------------------------------------------- response plans


@dataclass
class _Plan:
    """What a healthy server would send; faults then decide how much of it goes out."""

    status: int
    chunks: list[bytes]
    media_type: str
    streaming: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def _json_plan(status: int, obj: Any, headers: dict[str, str] | None = None) -> _Plan:
    body = json.dumps(obj, indent=2).encode()
    return _Plan(status, [body], "application/json", headers=dict(headers or {}))


def _error_plan(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> _Plan:
    return _json_plan(status, error_body(message, type_, param, code))


def _missing_param(param: str) -> _Plan:
    message = f"Missing required parameter: '{param}'."
    return _error_plan(400, message, param=param, code="missing_required_parameter")


def _sse_plan(events: Iterable[Any], *, done: bool) -> _Plan:
    chunks = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in events]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    return _Plan(200, chunks, "text/event-stream; charset=utf-8", streaming=True)


def _unsupported_in_double(param: str, detail: str) -> _Plan:
    return _error_plan(400, detail, "invalid_request_error", param, "unsupported_in_double")


# Marks requests whose abrupt end is intentional, so uvicorn's error log stays quiet for them.
_ABORT_MARK: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "openai_double_abort", default=None
)


class _QuietIntentionalAborts(logging.Filter):
    """Drop uvicorn's 'returned without completing response' for faults we caused on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        mark = _ABORT_MARK.get()
        return not (mark and mark[0])


_FILTER_LOCK = threading.Lock()


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    with _FILTER_LOCK:
        if not any(isinstance(f, _QuietIntentionalAborts) for f in logger.filters):
            logger.addFilter(_QuietIntentionalAborts())


class _Pauser:
    """Waits that end early when the double releases requests or the client goes away.

    Polling (every 20 ms) instead of an asyncio.Event because releases come from other
    threads (the test) and other event loops; a poll needs no loop handle.
    """

    def __init__(self, state: DoubleState, generation: int, request: Request) -> None:
        self._state = state
        self._generation = generation
        self._request = request

    async def pause(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None = forever); False if released or disconnected first."""
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            if self._state.released_since(self._generation):
                return False
            if await self._request.is_disconnected():
                return False
            left = _POLL_S if deadline is None else deadline - loop.time()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, _POLL_S))


class _FaultyResponse(Response):
    """Sends a plan through the fault's lens: hang, delays, silence or an abrupt cut.

    An abrupt end is returning from the ASGI call without finishing the response; uvicorn
    then closes the socket (mid-body: the client sees an incomplete chunked read).
    """

    def __init__(
        self, plan: _Plan | None, fault: Fault | None, state: DoubleState, generation: int
    ) -> None:
        super().__init__(status_code=plan.status if plan else 500)
        self._plan = plan
        self._fault = fault
        self._state = state
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pauser = _Pauser(self._state, self._generation, Request(scope, receive))
        fault, plan = self._fault, self._plan
        if plan is None or (fault is not None and fault.kind == "hang"):
            await pauser.pause(None)
            self._abort()
            return
        if fault is not None and fault.delay > 0 and not await pauser.pause(fault.delay):
            self._abort()
            return
        stream_fault = fault if fault is not None and plan.status < 400 else None
        await self._send(plan, stream_fault, pauser, send)

    async def _send(self, plan: _Plan, fault: Fault | None, pauser: _Pauser, send: Send) -> None:
        chunks, cut_after = plan.chunks, None
        silent = fault is not None and fault.kind == "stream_silent"
        if fault is not None and fault.kind == "stream_cut":
            chunks, cut_after = _cut_layout(plan, fault.after_chunks)
        chunked = plan.streaming or silent or cut_after is not None
        await send(_start_message(plan, chunked))
        if silent:
            await pauser.pause(None)
            self._abort()
            return
        chunk_delay = fault.chunk_delay if fault is not None else 0.0
        for index, chunk in enumerate(chunks):
            interrupted = index and chunk_delay > 0 and not await pauser.pause(chunk_delay)
            if interrupted or (cut_after is not None and index >= cut_after):
                self._abort()
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    def _abort() -> None:
        mark = _ABORT_MARK.get()
        if mark is not None:
            mark[0] = True


def _cut_layout(plan: _Plan, after_chunks: int) -> tuple[list[bytes], int]:
    """Where to cut: never after the last chunk (the body must stay incomplete)."""
    if not plan.streaming:
        body = b"".join(plan.chunks)
        half = len(body) // 2
        return [body[:half], body[half:]], 1
    return plan.chunks, min(after_chunks, max(len(plan.chunks) - 1, 0))


def _start_message(plan: _Plan, chunked: bool) -> dict[str, Any]:
    headers = {
        "content-type": plan.media_type,
        "x-request-id": f"req_{uuid.uuid4().hex}",
        "openai-processing-ms": "7",
        "openai-version": "2020-10-01",
        **plan.headers,
    }
    if plan.media_type.startswith("text/event-stream"):
        headers["cache-control"] = "no-cache"
    if not chunked:
        headers["content-length"] = str(sum(len(c) for c in plan.chunks))
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return {"type": "http.response.start", "status": plan.status, "headers": raw}


# --------------------------------------------------------------------------- request parsing


@dataclass
class _Parsed:
    """A request reduced to what routing, recording and handlers need."""

    model: str | None = None
    body: dict[str, Any] | None = None
    error: _Plan | None = None
    upload: bytes = b""
    filename: str = ""

    @property
    def stream(self) -> bool:
        return bool(self.body and self.body.get("stream") in (True, "true", "True"))


async def _parse_json(request: Request) -> _Parsed:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return _Parsed(error=_error_plan(400, _BAD_JSON_MESSAGE))
    if not isinstance(body, dict):
        return _Parsed(error=_error_plan(400, _BAD_JSON_MESSAGE))
    model = body.get("model")
    parsed = _Parsed(model=model if isinstance(model, str) else None, body=body)
    if parsed.model is None:
        parsed.error = _error_plan(400, "you must provide a model parameter")
    return parsed


async def _parse_form(request: Request) -> _Parsed:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        message = "Invalid Content-Type header, expected multipart/form-data."
        return _Parsed(error=_error_plan(400, message))
    form = await request.form()
    fields: dict[str, Any] = {}
    parsed = _Parsed()
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value
        elif key == "file":
            parsed.upload = await value.read()
            parsed.filename = value.filename or ""
            fields["file"] = {"filename": parsed.filename, "size": len(parsed.upload)}
    parsed.body = fields
    parsed.model = fields.get("model") if isinstance(fields.get("model"), str) else None
    parsed.error = _form_error(parsed)
    return parsed


def _form_error(parsed: _Parsed) -> _Plan | None:
    body = parsed.body or {}
    if "file" not in body:
        return _missing_param("file")
    if parsed.model is None:
        return _error_plan(400, "you must provide a model parameter")
    return None


# --------------------------------------------------------------------------- route handlers


def _model_object(model: str) -> dict[str, Any]:
    created, owned_by = _MODEL_CATALOG.get(model, (1700000000, "system"))
    return {"id": model, "object": "model", "created": created, "owned_by": owned_by}


def _models_plan(state: DoubleState, model: str | None) -> _Plan:
    if model is not None:
        return _json_plan(200, _model_object(model))
    data = [_model_object(m) for m in state.models()]
    return _json_plan(200, {"object": "list", "data": data})


def _chat_plan(state: DoubleState, parsed: _Parsed) -> _Plan:
    body = parsed.body or {}
    messages = body.get("messages")
    if not isinstance(messages, list):
        return _missing_param("messages")
    model = parsed.model or ""
    pieces = split_reply(state.chat_reply_for(model, messages))
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if isinstance(limit, int) and 0 < limit < len(pieces):
        pieces, finish = pieces[:limit], "length"
    prompt_tokens = _count_words(messages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(pieces),
        "total_tokens": prompt_tokens + len(pieces),
    }
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
    if parsed.stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return _sse_plan(_chat_chunks(meta, pieces, finish, usage, include_usage), done=True)
    return _json_plan(200, _chat_completion(meta, "".join(pieces), finish, usage))


def _chat_completion(
    meta: dict[str, Any], content: str, finish: str, usage: dict[str, int]
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {
        **meta,
        "object": "chat.completion",
        "choices": [choice],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_double",
    }


def _chat_chunks(
    meta: dict[str, Any],
    pieces: list[str],
    finish: str,
    usage: dict[str, int],
    include_usage: bool,
) -> list[dict[str, Any]]:
    """Role delta, one content delta per piece, the finish chunk, then optionally usage."""

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        return {
            **meta,
            "object": "chat.completion.chunk",
            "service_tier": "default",
            "system_fingerprint": "fp_double",
            "choices": [choice],
            **extra,
        }

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    chunks += [chunk({"content": piece}, None) for piece in pieces]
    chunks.append(chunk({}, finish))
    if include_usage:
        chunks.append({**chunk({}, None), "choices": [], "usage": usage})
    return chunks


def _speech_error(body: dict[str, Any]) -> _Plan | None:
    text = body.get("input")
    if not isinstance(text, str) or not text:
        return _missing_param("input")
    if len(text) > _MAX_SPEECH_INPUT:
        message = f"string too long. Expected a string with maximum length {_MAX_SPEECH_INPUT}."
        return _error_plan(400, message, param="input", code="string_above_max_length")
    if not isinstance(body.get("voice"), str | dict):
        return _missing_param("voice")
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        message = f"Invalid 'speed': {speed!r}. Expected a value between 0.25 and 4.0."
        return _error_plan(400, message, param="speed", code="invalid_value")
    return _format_error(str(body.get("response_format", "mp3")))


def _format_error(fmt: str) -> _Plan | None:
    if fmt not in _SPEECH_FORMATS:
        message = f"Invalid value: '{fmt}'. Supported values are: {list(_SPEECH_FORMATS)}."
        return _error_plan(400, message, param="response_format", code="invalid_value")
    if fmt in _AUDIO_CONTENT_TYPES and (fmt != "mp3" or mp3_supported()):
        return None
    supported = ", ".join(f for f in _AUDIO_CONTENT_TYPES if f != "mp3" or mp3_supported())
    detail = (
        f"response_format '{fmt}' is not supported by the OpenAI test double "
        f"(it can produce: {supported})."
    )
    return _unsupported_in_double("response_format", detail)


def _speech_plan(state: DoubleState, parsed: _Parsed) -> _Plan:
    body = parsed.body or {}
    error = _speech_error(body)
    if error is not None:
        return error
    fmt = str(body.get("response_format", "mp3"))
    pcm = synthesize_pcm(
        str(body["input"]),
        ms_per_char=state.ms_per_char,
        max_seconds=state.max_speech_seconds,
        speed=float(body.get("speed", 1.0)),
    )
    audio = _encode_audio(fmt, pcm)
    pieces = [audio[i : i + _AUDIO_CHUNK_BYTES] for i in range(0, len(audio), _AUDIO_CHUNK_BYTES)]
    if body.get("stream_format") == "sse":
        return _sse_plan(_speech_events(pieces, str(body["input"])), done=False)
    return _Plan(200, pieces, _AUDIO_CONTENT_TYPES[fmt], streaming=True)


def _encode_audio(fmt: str, pcm: bytes) -> bytes:
    if fmt == "pcm":
        return pcm
    return wav_from_pcm(pcm) if fmt == "wav" else mp3_from_pcm(pcm)


def _speech_events(pieces: list[bytes], text: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "speech.audio.delta", "audio": base64.b64encode(p).decode()} for p in pieces
    ]
    tokens = len(text.split())
    usage = {
        "input_tokens": tokens,
        "output_tokens": len(pieces),
        "total_tokens": tokens + len(pieces),
    }
    events.append({"type": "speech.audio.done", "usage": usage})
    return events


def _transcription_error(parsed: _Parsed, fmt: str) -> _Plan | None:
    extension = parsed.filename.rsplit(".", 1)[-1].lower() if "." in parsed.filename else ""
    if extension not in _TRANSCRIBE_EXTENSIONS:
        message = f"Invalid file format. Supported formats: {list(_TRANSCRIBE_EXTENSIONS)}"
        return _error_plan(400, message)
    duration = wav_duration(parsed.upload)
    if not parsed.upload or (duration is not None and duration < 0.1):
        message = "Audio file is too short. Minimum audio length is 0.1 seconds."
        return _error_plan(400, message, param="file", code="audio_too_short")
    if fmt not in _TRANSCRIBE_FORMATS:
        message = f"Invalid value: '{fmt}'. Supported values are: {list(_TRANSCRIBE_FORMATS)}."
        return _error_plan(400, message, param="response_format", code="invalid_value")
    if fmt in _WHISPER_ONLY_FORMATS and parsed.model != "whisper-1":
        message = (
            f"response_format '{fmt}' is not compatible with model '{parsed.model}'. "
            "Use 'json' or 'text' instead."
        )
        return _error_plan(400, message, param="response_format", code="unsupported_value")
    return None


def _transcription_plan(state: DoubleState, parsed: _Parsed) -> _Plan:
    body = parsed.body or {}
    fmt = str(body.get("response_format", "json"))
    error = _transcription_error(parsed, fmt)
    if error is not None:
        return error
    text = state.transcription_text
    duration = wav_duration(parsed.upload) or len(parsed.upload) / 16_000
    if parsed.stream and parsed.model != "whisper-1":
        return _sse_plan(_transcript_events(text), done=False)
    if fmt == "text":
        return _Plan(200, [f"{text}\n".encode()], "text/plain; charset=utf-8")
    if fmt in ("srt", "vtt"):
        return _Plan(200, [_subtitles(fmt, text, duration).encode()], "text/plain; charset=utf-8")
    if fmt == "verbose_json":
        return _json_plan(200, _verbose_transcription(text, duration, body.get("language")))
    return _json_plan(200, {"text": text})


def _transcript_events(text: str) -> list[dict[str, Any]]:
    deltas = [
        {"type": "transcript.text.delta", "delta": p, "logprobs": None} for p in split_reply(text)
    ]
    words = len(text.split())
    usage = {
        "type": "tokens",
        "input_tokens": 50,
        "output_tokens": words,
        "total_tokens": 50 + words,
    }
    return [
        *deltas,
        {"type": "transcript.text.done", "text": text, "logprobs": None, "usage": usage},
    ]


def _verbose_transcription(text: str, duration: float, language: Any) -> dict[str, Any]:
    segment = {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": round(duration, 2),
        "text": f" {text}",
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": -0.2,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
    }
    return {
        "task": "transcribe",
        "language": "english" if language in (None, "en") else str(language),
        "duration": round(duration, 2),
        "text": text,
        "segments": [segment],
    }


def _subtitles(fmt: str, text: str, duration: float) -> str:
    def stamp(seconds: float, sep: str) -> str:
        millis = round(seconds * 1000)
        hours, rest = divmod(millis, 3_600_000)
        minutes, rest = divmod(rest, 60_000)
        return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{sep}{rest % 1000:03d}"

    if fmt == "srt":
        return f"1\n{stamp(0, ',')} --> {stamp(duration, ',')}\n{text}\n\n"
    return f"WEBVTT\n\n{stamp(0, '.')} --> {stamp(duration, '.')}\n{text}\n\n"


# --------------------------------------------------------------------------- the pipeline


def _presented_key(request: Request) -> str | None:
    """The Bearer token, or None when there is no usable Authorization header."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _auth_error(state: DoubleState, key: str | None) -> _Plan | None:
    if key is None:
        return _error_plan(401, _NO_KEY_MESSAGE)
    expected = state.api_key
    if expected is not None and key != expected:
        return _json_plan(401, _invalid_key_body(key))
    return None


def _fault_plan(fault: Fault, model: str | None, key: str) -> _Plan:
    body, headers = _status_error(fault.status, model=model, presented_key=key, fault=fault)
    return _json_plan(fault.status, body, headers)


_BUILDERS = {
    "chat": _chat_plan,
    "speech": _speech_plan,
    "transcriptions": _transcription_plan,
}


def _record(
    state: DoubleState, request: Request, route: str, parsed: _Parsed, fault: Fault | None
) -> None:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
    state.record(
        RequestRecord(
            route=route,
            method=request.method,
            path=request.url.path,
            model=parsed.model,
            timestamp=time.time(),
            headers=headers,
            body=parsed.body,
            stream=parsed.stream,
            fault=fault.kind if fault is not None else None,
        )
    )


def _plan_for(
    state: DoubleState, route: str, parsed: _Parsed, fault: Fault | None, key: str | None
) -> _Plan:
    """The real API's order of checks: auth, then (injected) status, request, model."""
    auth = _auth_error(state, key)
    if auth is not None:
        return auth
    if fault is not None and fault.kind == "status":
        return _fault_plan(fault, parsed.model, key or "")
    if parsed.error is not None:
        return parsed.error
    if parsed.model is not None and not state.has_model(parsed.model):
        return _error_plan(404, _model_not_found_message(parsed.model), code="model_not_found")
    if route == "models":
        return _models_plan(state, parsed.model)
    return _BUILDERS[route](state, parsed)


async def _handle(state: DoubleState, request: Request, route: str, parsed: _Parsed) -> Response:
    generation = state.generation
    fault = state.take_fault(route, parsed.model)
    _record(state, request, route, parsed, fault)
    if fault is not None and fault.kind == "hang":
        return _FaultyResponse(None, fault, state, generation)
    plan = _plan_for(state, route, parsed, fault, _presented_key(request))
    return _FaultyResponse(plan, fault, state, generation)


# --------------------------------------------------------------------------- the app


def build_app(state: DoubleState) -> FastAPI:
    """The FastAPI app: OpenAI routes under /v1, test controls under /_double."""
    app = FastAPI(title="OpenAI test double", docs_url=None, redoc_url=None, openapi_url=None)
    _add_openai_routes(app, state)
    _add_control_routes(app, state)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown_url(request: Request, path: str) -> Response:
        plan = _error_plan(404, f"Invalid URL ({request.method} /{path})")
        return _FaultyResponse(plan, None, state, state.generation)

    return app


def _add_openai_routes(app: FastAPI, state: DoubleState) -> None:
    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        return await _handle(state, request, "models", _Parsed())

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(request: Request, model_id: str) -> Response:
        return await _handle(state, request, "models", _Parsed(model=model_id))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _handle(state, request, "chat", await _parse_json(request))

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        return await _handle(state, request, "speech", await _parse_json(request))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await _handle(state, request, "transcriptions", await _parse_form(request))


def _control_error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse(error_body(message, "invalid_request_error"), status_code=status)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise ValueError("body must be JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def _add_control_routes(app: FastAPI, state: DoubleState) -> None:
    """Test controls for other processes; the double only ever listens on loopback."""

    @app.get("/_double/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/_double/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": [f.to_dict() for f in state.faults()]}

    @app.post("/_double/faults", status_code=201)
    async def add_fault(request: Request) -> Response:
        try:
            fault = state.inject(Fault.from_dict(await _json_object(request)))
        except ValueError as exc:
            return _control_error(str(exc))
        return JSONResponse({"fault": fault.to_dict()}, status_code=201)

    @app.delete("/_double/faults")
    async def clear_faults() -> dict[str, Any]:
        state.clear_faults()
        return {"faults": []}

    @app.delete("/_double/faults/{fault_id}")
    async def remove_fault(fault_id: str) -> Response:
        if not state.remove_fault(fault_id):
            return _control_error(f"no fault {fault_id!r}", 404)
        return JSONResponse({"removed": fault_id})

    @app.post("/_double/release")
    async def release() -> dict[str, bool]:
        state.release_hung()
        return {"released": True}

    @app.post("/_double/reset")
    async def reset() -> dict[str, bool]:
        state.reset()
        return {"reset": True}

    @app.get("/_double/requests")
    async def list_requests(route: str | None = None, model: str | None = None) -> dict[str, Any]:
        return {"requests": [r.to_dict() for r in state.requests(route, model)]}

    @app.delete("/_double/requests")
    async def clear_requests() -> dict[str, Any]:
        state.clear_requests()
        return {"requests": []}

    @app.get("/_double/config")
    async def get_config() -> dict[str, Any]:
        return state.config_snapshot()

    @app.api_route("/_double/config", methods=["PATCH", "POST"])
    async def patch_config(request: Request) -> Response:
        try:
            state.apply_config(await _json_object(request))
        except ValueError as exc:
            return _control_error(str(exc))
        return JSONResponse(state.config_snapshot())


def _asgi_entry(app: FastAPI) -> Any:
    """Outer ASGI callable: gives each HTTP request its abort mark (see _QuietIntentionalAborts)."""

    async def entry(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _ABORT_MARK.set([False])
        await app(scope, receive, send)

    return entry


# --------------------------------------------------------------------------- the server


def _stderr_logging_config() -> dict[str, Any]:
    """uvicorn's logging config with access logs on stderr too.

    stdout carries only the ready line: a parent that reads that line and then stops
    draining stdout must never block the double once a pipe buffer of access logs fills.
    """
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


class _Server(uvicorn.Server):
    """uvicorn.Server that releases hung requests as soon as shutdown is asked for.

    Without this, a SIGTERM to the CLI would wait for hung requests until uvicorn's
    graceful-shutdown timeout cancels them.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


class OpenAIDouble(DoubleState):
    """The double as a server: a context manager for tests, or ``serve_forever`` for the CLI.

    ``port=0`` picks a free port; after ``close()``, ``start()`` reopens on the same port,
    so a test can simulate a provider outage (connection refused) and its recovery.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "sk-test-double",
        host: str = "127.0.0.1",
        port: int = 0,
        models: Iterable[str] | None = None,
        chat_reply: str | None = None,
        transcription_text: str | None = None,
        ms_per_char: float = 60.0,
        max_speech_seconds: float = 15.0,
    ) -> None:
        super().__init__(
            api_key=api_key,
            models=models,
            chat_reply=chat_reply,
            transcription_text=transcription_text,
            ms_per_char=ms_per_char,
            max_speech_seconds=max_speech_seconds,
        )
        self.host = host
        self.port = port
        self._app = build_app(self)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # -- addresses ----------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What a client uses as OPENAI_BASE_URL."""
        return f"{self.root_url}/v1"

    @property
    def control_url(self) -> str:
        return f"{self.root_url}/_double"

    # -- lifecycle ----------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        """Bind and listen before serving, so the URL is valid the moment it is known."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return sock

    def _config(self, *, verbose: bool) -> uvicorn.Config:
        config = uvicorn.Config(
            _asgi_entry(self._app),
            lifespan="off",
            ws="none",
            loop="asyncio",
            access_log=verbose,
            log_config=_stderr_logging_config() if verbose else None,
            log_level="info" if verbose else None,
            timeout_graceful_shutdown=3,
        )
        _install_log_filter()
        return config

    def start(self, timeout: float = 10.0) -> OpenAIDouble:
        """Serve in a daemon thread; returns once uvicorn accepts connections."""
        if self._thread is not None:
            raise RuntimeError("OpenAIDouble is already running")
        self._set_closing(False)
        self._socket = self._bind()
        self._server = _Server(self._config(verbose=False), self.release_hung)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"openai-double:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("OpenAIDouble failed to start")
            time.sleep(0.01)
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Release hung requests, stop uvicorn and join its thread; safe to call twice."""
        self._set_closing(True)
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout)
            if thread.is_alive():
                _log.error("openai double thread did not stop within %.1fs", 2 * timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> OpenAIDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def serve_forever(self, *, ready_line: bool = True) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM; used by the CLI."""
        self._set_closing(False)
        sock = self._bind()
        server = _Server(self._config(verbose=True), lambda: self._set_closing(True))
        _exit_quietly_on_signals()
        if ready_line:
            print(
                f"openai-double ready base_url={self.base_url} control_url={self.control_url}",
                flush=True,
            )
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()


# --------------------------------------------------------------------------- CLI


def _exit_quietly_on_signals() -> None:
    """Make SIGINT/SIGTERM end the CLI with status 0 after uvicorn's graceful shutdown.

    uvicorn re-raises the signal it caught once it has shut down; with the default
    handlers that kills the process (-15) or prints a KeyboardInterrupt traceback. A
    no-op handler turns that re-raise into a clean return from ``serve_forever``.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _sig, _frame: None)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m support.openai_double",
        description="Run the OpenAI test double as its own process (loopback only).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--api-key", default="sk-test-double", help="the key clients must send")
    parser.add_argument("--any-key", action="store_true", help="accept any Bearer key")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated ids")
    parser.add_argument("--chat-reply", default=None, help="fixed chat reply (default: echo)")
    parser.add_argument("--transcription", default=None, help="fixed transcription text")
    parser.add_argument("--ms-per-char", type=float, default=60.0, help="speech length per char")
    parser.add_argument("--max-speech-seconds", type=float, default=15.0, help="speech cap")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    double = OpenAIDouble(
        api_key=None if args.any_key else args.api_key,
        host=args.host,
        port=args.port,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        chat_reply=args.chat_reply,
        transcription_text=args.transcription,
        ms_per_char=args.ms_per_char,
        max_speech_seconds=args.max_speech_seconds,
    )
    double.serve_forever()


if __name__ == "__main__":
    main()
