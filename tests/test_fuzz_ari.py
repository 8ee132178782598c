"""Fuzzing what Asterisk sends over ARI: websocket event frames and REST responses.

Events: whatever the frame (text that is not JSON, binary, JSON nested past
the interpreter's stack, an event without a channel, a channel id that is a
number), the events loop keeps going: the frame is dropped with a reason,
logged, and counted in ``vagent_rejected_input_total{source="ari_event"}``.
Every real event captured from Asterisk 22 (ari-samples) is still accepted.

REST: an error response of any status and body becomes an ``AriError`` that
says what Asterisk answered, in one printable line of at most 200 characters of
Asterisk's words; a success body that is not JSON is an ``AriError`` too. The
defects found in ari.py and controller.py are regression tests below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_fuzz_wire import rejected
from websockets.asyncio.server import ServerConnection, serve

from vagent.services.call_controller.ari import AriClient, AriError, _error_from
from vagent.services.call_controller.call import CallContext
from vagent.services.call_controller.controller import Controller
from vagent.services.call_controller.events import (
    CHANNEL_EVENTS,
    AriEvents,
    BadEvent,
    read_event,
)
from vagent.services.resilience import ErrorKind

PURE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WITH_IO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLES = Path("/work/shared/ari-samples")
SWAGGER = Path("/work/shared/ari-api-docs")
REASONS = {"not_json", "not_an_event", "bad_channel"}
DEEP = "[" * 100_000  # json.loads raises RecursionError, which is not a ValueError


def _sample_events() -> list[str]:
    """Every event frame captured from Asterisk 22.10.1, byte for byte."""
    files = [SAMPLES / "events.jsonl", SAMPLES / "events-subscribeall.jsonl"]
    return [line for path in files if path.exists() for line in path.read_text().splitlines()]


SAMPLE_EVENTS = _sample_events()


class _MockAri:
    """One AriClient for every example, answering `reply`: building a client costs an
    SSL context (tens of ms), too much per example. A MockTransport binds to no loop."""

    def __init__(self) -> None:
        self.reply: tuple[int, bytes] = (200, b"")
        self.client = AriClient("http://pbx:8088", "vagent", "secret")
        transport = httpx.MockTransport(self._answer)
        self.client._http = httpx.AsyncClient(base_url=self.client.root, transport=transport)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        status, body = self.reply
        return httpx.Response(status, content=body)


ARI = _MockAri()


# --------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
event_types = st.sampled_from(["StasisStart", "StasisEnd", "ChannelDestroyed", "Dial"]) | st.text(
    max_size=12
)
channels = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=12) | json_values,
        "name": st.sampled_from(["PJSIP/alice-0001", "UnicastRTP/127.0.0.1:4000-1"]) | json_values,
        "state": st.sampled_from(["Up", "Ring"]) | json_values,
    },
)
events = st.fixed_dictionaries(
    {},
    optional={"type": event_types | json_values, "channel": channels | json_values},
).flatmap(
    lambda base: st.dictionaries(st.text(max_size=6), json_values, max_size=3).map(
        lambda extra: {**extra, **base}
    )
)


@st.composite
def mutated_samples(draw: st.DrawFn) -> str:
    """A real event with one field of it (or of its channel) dropped or replaced."""
    event = json.loads(draw(st.sampled_from(SAMPLE_EVENTS)))
    target = event["channel"] if "channel" in event and draw(st.booleans()) else event
    if isinstance(target, dict) and target:
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    return json.dumps(event)


frames = st.one_of(
    events.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
    events.map(lambda e: json.dumps(e).encode("utf-16")),
    st.sampled_from([DEEP, DEEP.encode(), '{"type": "StasisStart", "a": ' + DEEP, "1" * 5000]),
    *([mutated_samples()] if SAMPLE_EVENTS else []),
)


# --------------------------------------------------------------------------- the boundary


@pytest.mark.skipif(not SAMPLE_EVENTS, reason="ari-samples not present")
def test_every_real_event_is_accepted() -> None:
    """No false rejections: the boundary check must pass all of Asterisk's own traffic."""
    for line in SAMPLE_EVENTS:
        assert read_event(line) == json.loads(line)


@pytest.mark.skipif(not (SWAGGER / "events.json").exists(), reason="ari-api-docs not present")
def test_channel_events_are_those_swagger_requires_a_channel_for() -> None:
    models = json.loads((SWAGGER / "events.json").read_text())["models"]
    required = {
        name
        for name, model in models.items()
        if model.get("properties", {}).get("channel", {}).get("required")
    }
    assert required == CHANNEL_EVENTS


@PURE
@given(frames)
@example(DEEP)  # regression: RecursionError escaped and ended the events loop for good
@example('{"type": "StasisStart"}')
@example('{"type": "StasisStart", "channel": {}}')
@example('{"type": "StasisStart", "channel": {"id": 5}}')
@example('{"type": "StasisEnd", "channel": {"id": ""}}')
@example('{"type": "StasisStart", "channel": {"id": "c", "name": null}}')
def test_a_frame_is_an_event_or_a_reasoned_rejection(frame: str | bytes) -> None:
    try:
        event = read_event(frame)
    except BadEvent as exc:
        assert exc.reason in REASONS and str(exc)
        return
    assert isinstance(event["type"], str)
    channel = event.get("channel")
    if channel is not None or event["type"] in CHANNEL_EVENTS:
        assert isinstance(channel, dict)
        assert isinstance(channel["id"], str) and channel["id"]


class _Sink:
    """A handler that records events; `controller` routes them on to a real Controller."""

    def __init__(self, controller: Controller | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures: list[BaseException] = []
        self.controller = controller

    async def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.controller is not None:
            try:
                await self.controller.on_event(event)
            except Exception as exc:
                self.failures.append(exc)
                raise


def _draining_controller() -> Controller:
    """A controller that hands every new caller back: on_event runs, no call is set up.

    Its ARI answers 503: the hand-back fails, which the controller must shrug off.
    """
    ARI.reply = (503, b'{"message": "busy"}')
    controller = Controller(cast(CallContext, SimpleNamespace(ari=ARI.client)))
    controller.draining = True
    return controller


async def _through_the_loop(batch: list[str | bytes], sink: _Sink) -> None:
    link = AriEvents("http://127.0.0.1:9", "vagent", "secret", "vagent", sink)
    for frame in batch:
        await link.on_frame(frame)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=8))
def test_any_frames_reach_the_handler_only_as_valid_events_and_the_rest_is_counted(
    batch: list[str | bytes],
) -> None:
    outcomes: list[str] = []
    for frame in batch:
        try:
            read_event(frame)
            outcomes.append("event")
        except BadEvent as exc:
            outcomes.append(exc.reason)
    before = {reason: rejected("ari_event", reason) for reason in REASONS}
    sink = _Sink(_draining_controller())
    asyncio.run(_through_the_loop(batch, sink))
    assert len(sink.events) == outcomes.count("event")
    assert sink.failures == []  # the controller never sees an event it chokes on
    for reason in REASONS:
        assert rejected("ari_event", reason) - before[reason] == outcomes.count(reason)


@settings(max_examples=50, deadline=None)
@given(events)
@example({"type": "StasisStart", "channel": {}})
@example({"type": "StasisStart", "channel": {"id": 5}})
def test_controller_on_event_never_raises_on_any_event(event: dict[str, Any]) -> None:
    """Regression: on_event read channel['id'] unchecked, so a StasisStart whose channel
    had no id raised KeyError (and a number was str()-ed into a call id). The events loop
    refuses such frames first (events.read_event); the handler must not raise either."""
    channel = event.get("channel")
    bad = isinstance(channel, dict) and not (isinstance(channel.get("id"), str) and channel["id"])
    before = rejected("ari_event", "bad_channel")

    async def scenario() -> None:
        await _draining_controller().on_event(event)

    asyncio.run(scenario())
    assert rejected("ari_event", "bad_channel") - before == int(bad)


# --------------------------------------------------------------------------- the live link


@contextlib.asynccontextmanager
async def _serve(batch: list[str | bytes]) -> AsyncIterator[str]:
    """A websocket server that sends `batch`, then one good StasisEnd, to each client."""

    async def handler(connection: ServerConnection) -> None:
        for frame in batch:
            await connection.send(frame)
        await connection.send(json.dumps({"type": "StasisEnd", "channel": {"id": "last"}}))
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}"


async def _live(batch: list[str | bytes]) -> tuple[list[dict[str, Any]], int]:
    sink = _Sink()
    async with _serve(batch) as url:
        link = AriEvents(url, "vagent", "secret", "vagent", sink)
        task = asyncio.create_task(link.run())
        try:
            async with asyncio.timeout(5):
                while not any(e.get("channel", {}).get("id") == "last" for e in sink.events):
                    await asyncio.sleep(0.005)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return sink.events, link.connects


@WITH_IO
@given(st.lists(frames, max_size=5))
@example([DEEP, b"\xff", '{"type": "StasisStart"}'])  # regression: DEEP ended the loop
def test_over_a_websocket_no_frame_ends_or_breaks_the_link(batch: list[str | bytes]) -> None:
    received, connects = asyncio.run(_live(batch))
    assert received[-1]["channel"]["id"] == "last"  # what came after the garbage arrived
    assert connects == 1  # on the same connection: no frame broke it


# --------------------------------------------------------------------------- REST


def _response(status: int, body: bytes, content_type: str) -> httpx.Response:
    request = httpx.Request("POST", "http://pbx:8088/ari/channels/c1/answer")
    return httpx.Response(
        status, content=body, headers={"content-type": content_type}, request=request
    )


content_types = st.sampled_from(["application/json", "text/plain", "text/html; charset=utf-8", ""])
json_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"message": json_values}),
    st.fixed_dictionaries({"error": json_values}),
).map(lambda v: json.dumps(v).encode())
bodies = json_bodies | st.binary(max_size=200) | st.text(max_size=200).map(str.encode)


@PURE
@given(st.integers(400, 599), bodies, content_types)
@example(401, b"", "")
@example(404, b'{"message": "Resource not found"}', "application/json")
@example(500, b"\xff\xfe\x00", "text/plain")
@example(503, b"null", "application/json")
@example(500, b'{"message": "lone \\ud800 and\\nnewline \\u001b[31m"}', "application/json")
def test_an_error_response_is_an_ari_error_that_names_the_status(
    status: int, body: bytes, content_type: str
) -> None:
    error = _error_from(_response(status, body, content_type), "http://pbx:8088/ari")
    assert isinstance(error, AriError) and error.status == status
    assert str(status) in str(error)
    # one printable line: no lone surrogate (it cannot be encoded), no newline or escape
    assert str(error).isprintable()
    assert error.kind in (ErrorKind.PERMANENT, ErrorKind.TRANSIENT, ErrorKind.REJECTED)


def test_a_deeply_nested_error_body_is_an_ari_error() -> None:
    """Regression: _message caught ValueError only, so JSON nested past the stack
    raised RecursionError out of _error_from instead of an AriError."""
    error = _error_from(_response(500, DEEP.encode(), "application/json"), "http://pbx/ari")
    assert isinstance(error, AriError)


def test_an_error_message_is_bounded() -> None:
    """Regression: the 'message' of a JSON error body went into AriError uncut (a
    plain-text body was cut at 200 characters): 100 kB in a log line and doctor's table."""
    body = json.dumps({"message": "x" * 100_000}).encode()
    assert len(str(_error_from(_response(400, body, "application/json"), "http://pbx/ari"))) < 1000


async def _call(status: int, body: bytes) -> object:
    ARI.reply = (status, body)
    return await ARI.client.request("GET", "/channels")


@PURE
@given(st.integers(200, 299), json_bodies | st.just(b""))
def test_a_json_success_body_is_returned_as_parsed(status: int, body: bytes) -> None:
    assert asyncio.run(_call(status, body)) == (json.loads(body) if body else None)


@settings(max_examples=30, deadline=None)
@given(st.integers(200, 299), st.binary(min_size=1, max_size=60))
@example(200, b"<html>proxy error</html>")
@example(200, b"\xff\xfe")
@example(200, DEEP.encode())
def test_a_success_body_that_is_not_json_is_an_ari_error(status: int, body: bytes) -> None:
    """Regression: request() returned response.json() unguarded, so a 2xx body that is
    not JSON raised JSONDecodeError / UnicodeDecodeError / RecursionError."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        with pytest.raises(AriError, match="not JSON"):
            asyncio.run(_call(status, body))


@PURE
@given(json_values)
@example({"system": {"version": "22.10.1"}})
def test_asterisk_info_returns_a_dictionary_with_system_or_an_ari_error(value: object) -> None:
    ARI.reply = (200, json.dumps(value).encode())
    try:
        result = asyncio.run(ARI.client.asterisk_info())
    except AriError as exc:
        assert "VAGENT_ARI_URL" in str(exc)
        return
    assert isinstance(result, dict) and "system" in result
