"""RtpEngineClient against the real rtpengine daemon, plus tiny fake servers.

The real daemon (started on loopback by support.rtpengine_proc) proves the
protocol: ping, offer/answer/delete, and error replies as rtpengine really
words them. Fake UDP servers prove the client's robustness where a real
daemon cannot be made to misbehave: stray and garbage datagrams, replies out
of order, undecodable replies, lost datagrams, silence.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import pytest

from support.rtpengine_proc import RtpEngineProcess, free_udp_port
from vagent.services.bencode import decode, encode
from vagent.services.rtpengine import (
    RtpEngineClient,
    RtpEngineConnectionError,
    RtpEngineError,
    RtpEngineProtocolError,
    RtpEngineReplyError,
    RtpEngineTimeoutError,
    build_message,
    parse_ng_address,
)

CALLER_SDP = (
    "v=0\r\n"
    "o=- 1545997027 1 IN IP4 127.0.0.1\r\n"
    "s=vagent-test\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=sendrecv\r\n"
)
CALLEE_SDP = CALLER_SDP.replace("m=audio 40000", "m=audio 40010")

# Tests that start the real daemon carry the project's marker for real processes.
real_daemon = pytest.mark.slow


# ------------------------------------------------------------------ fixtures


def audio_port(sdp: object) -> int:
    """The port of the first m=audio line."""
    assert isinstance(sdp, str)
    match = re.search(r"^m=audio (\d+) ", sdp, re.MULTILINE)
    assert match, sdp
    return int(match.group(1))


# ------------------------------------------------------------------ real daemon


@real_daemon
async def test_ping_returns_positive_milliseconds(client: RtpEngineClient) -> None:
    ms = await client.ping()
    assert 0 < ms < 1000


@real_daemon
async def test_offer_answer_delete_against_real_daemon(
    client: RtpEngineClient, rtpengine: RtpEngineProcess
) -> None:
    call_id = "vagent-test-call-1"
    offer = await client.offer(call_id, "caller-tag", CALLER_SDP)
    assert offer["result"] == "ok"
    offer_sdp = offer["sdp"]
    assert isinstance(offer_sdp, str)
    # rtpengine anchors the media: same codec, its own loopback address and port.
    assert "c=IN IP4 127.0.0.1" in offer_sdp
    assert "a=rtpmap:0 PCMU/8000" in offer_sdp
    offer_port = audio_port(offer_sdp)
    assert rtpengine.port_min <= offer_port <= rtpengine.port_max
    assert offer_port != 40000

    answer = await client.answer(call_id, "caller-tag", "callee-tag", CALLEE_SDP)
    answer_port = audio_port(answer["sdp"])
    assert rtpengine.port_min <= answer_port <= rtpengine.port_max
    assert answer_port not in (offer_port, 40010)

    query = await client.request("query", call_id=call_id)
    tags = query["tags"]
    assert isinstance(tags, dict) and set(tags) == {"caller-tag", "callee-tag"}

    deleted = await client.delete(call_id, "caller-tag")
    assert deleted["result"] == "ok" and "warning" not in deleted
    with pytest.raises(RtpEngineReplyError, match="Unknown call-id"):
        await client.request("query", call_id=call_id)


@real_daemon
async def test_offer_passes_flags_through(client: RtpEngineClient) -> None:
    reply = await client.offer(
        "vagent-test-flags", "a", CALLER_SDP, trust_address=True, replace=["origin"]
    )
    assert audio_port(reply["sdp"]) != 40000
    await client.delete("vagent-test-flags", "a")


@real_daemon
@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda ng: ng.answer("no-such-call", "f", "t", CALLER_SDP), "Unknown call-id"),
        (lambda ng: ng.offer("bad-sdp", "f", "not an sdp"), "Failed to parse SDP"),
        (lambda ng: ng.request("no-such-command"), "Unrecognized command"),
    ],
)
async def test_error_reply_raises_with_reason(
    client: RtpEngineClient,
    call: Callable[[RtpEngineClient], Awaitable[object]],
    reason: str,
) -> None:
    with pytest.raises(RtpEngineReplyError, match=reason) as info:
        await call(client)
    assert info.value.reason == reason
    assert not info.value.transient


@real_daemon
async def test_delete_of_unknown_call(
    client: RtpEngineClient, caplog: pytest.LogCaptureFixture
) -> None:
    # rtpengine says "ok" with a warning here, not "error".
    with caplog.at_level(logging.DEBUG, logger="vagent.services.rtpengine"):
        reply = await client.delete("no-such-call", "f")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # routine cleanup
    assert reply["result"] == "ok"
    assert "Call-ID not found" in str(reply["warning"])
    with pytest.raises(RtpEngineReplyError, match="Call-ID not found"):
        await client.delete("no-such-call", "f", missing_ok=False)


@real_daemon
async def test_concurrent_pings_all_succeed(client: RtpEngineClient) -> None:
    results = await asyncio.gather(*(client.ping() for _ in range(20)))
    assert len(results) == 20 and all(ms > 0 for ms in results)


@real_daemon
async def test_concurrent_offers_get_their_own_replies(client: RtpEngineClient) -> None:
    calls = [f"vagent-test-concurrent-{i}" for i in range(8)]
    replies = await asyncio.gather(*(client.offer(c, "f", CALLER_SDP) for c in calls))
    ports = {audio_port(reply["sdp"]) for reply in replies}
    assert len(ports) == len(calls)  # every call got its own media port
    await asyncio.gather(*(client.delete(c, "f") for c in calls))


@real_daemon
def test_client_survives_a_new_event_loop(rtpengine: RtpEngineProcess) -> None:
    ng = RtpEngineClient.from_address(rtpengine.ng_address)
    assert asyncio.run(ng.ping()) > 0
    assert asyncio.run(ng.ping()) > 0  # the first loop's socket is gone; reopened
    ng.close()


@real_daemon
async def test_stopped_daemon_fails_fast_then_recovers_elsewhere() -> None:
    with RtpEngineProcess() as proc:
        ng = RtpEngineClient.from_address(proc.ng_address, timeout_s=1.0)
        assert await ng.ping() > 0
    started = time.monotonic()
    with pytest.raises(RtpEngineError, match=r"unreachable|did not answer"):
        await ng.ping()
    assert time.monotonic() - started < 1.5
    ng.close()


# ------------------------------------------------------------------ fake servers


Handler = Callable[[bytes, tuple[str, int], asyncio.DatagramTransport], None]


class _FakeServer(asyncio.DatagramProtocol):
    """A UDP server on loopback whose behaviour is one handler function."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # 3.11's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        assert self.transport is not None
        self.handler(data, addr, self.transport)


async def start_fake(handler: Handler) -> tuple[_FakeServer, int]:
    """Start a fake ng server; returns it and its port."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: _FakeServer(handler), local_addr=("127.0.0.1", 0)
    )
    return server, transport.get_extra_info("sockname")[1]


def reply_to(data: bytes, body: Mapping[str, object]) -> bytes:
    """A reply datagram for request ``data`` with ``body``."""
    cookie = data.split(b" ", 1)[0]
    return cookie + b" " + encode(body)


def pong(data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
    transport.sendto(reply_to(data, {"result": "pong"}), addr)


async def test_stray_and_garbage_datagrams_are_ignored() -> None:
    peers: list[tuple[str, int]] = []

    def noisy(data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        peers.append(addr)
        cookie = data.split(b" ", 1)[0]
        for junk in (
            b"",
            b"garbage",
            b"\xff\x00\xfe",
            b"deadbeefdeadbeef d6:result4:ponge",  # someone else's cookie
            cookie,  # our cookie, no space
            cookie + b"x d6:result4:ponge",  # almost our cookie
        ):
            transport.sendto(junk, addr)
        pong(data, addr, transport)
        pong(data, addr, transport)  # a duplicate reply, as after a resend

    server, port = await start_fake(noisy)
    async with RtpEngineClient("127.0.0.1", port, timeout_s=1.0) as ng:
        assert await ng.ping() > 0
        # Unsolicited datagrams between requests, from the server and from elsewhere.
        assert server.transport is not None
        server.transport.sendto(b"late d6:result4:ponge", peers[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(b"x d6:result4:ponge", peers[0])
        await asyncio.sleep(0.01)
        assert await ng.ping() > 0
    server.transport.close()


async def test_replies_out_of_order_reach_the_right_request() -> None:
    held: list[tuple[bytes, tuple[str, int]]] = []

    def reverse(data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        held.append((data, addr))
        if len(held) == 10:  # answer all, last request first
            for request, peer in reversed(held):
                message = decode(request.split(b" ", 1)[1])
                assert isinstance(message, dict)
                body = {"result": "ok", "echo": message[b"call-id"]}
                transport.sendto(reply_to(request, body), peer)

    server, port = await start_fake(reverse)
    async with RtpEngineClient("127.0.0.1", port, timeout_s=2.0, resends=0) as ng:
        replies = await asyncio.gather(*(ng.request("query", call_id=f"c{i}") for i in range(10)))
    assert [reply["echo"] for reply in replies] == [f"c{i}" for i in range(10)]
    assert server.transport is not None
    server.transport.close()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"d6:result", "undecodable reply"),
        (b"li1ee", "expected a dictionary"),
        (b"d3:fooi1ee", "without a 'result'"),
        (b"d6:result4:ponge trailing", "undecodable reply .*trailing bytes"),
    ],
)
async def test_bad_reply_raises_protocol_error(payload: bytes, message: str) -> None:
    def bad(data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        transport.sendto(data.split(b" ", 1)[0] + b" " + payload, addr)

    server, port = await start_fake(bad)
    async with RtpEngineClient("127.0.0.1", port, timeout_s=1.0) as ng:
        with pytest.raises(RtpEngineProtocolError, match=message):
            await ng.ping()
    assert server.transport is not None
    server.transport.close()


async def test_ping_requires_pong() -> None:
    def ok(data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport) -> None:
        transport.sendto(reply_to(data, {"result": "ok"}), addr)

    server, port = await start_fake(ok)
    async with RtpEngineClient("127.0.0.1", port) as ng:
        with pytest.raises(RtpEngineProtocolError, match="expected 'pong'"):
            await ng.ping()
    assert server.transport is not None
    server.transport.close()


async def test_lost_datagram_is_resent_with_the_same_cookie() -> None:
    def drop_first(
        data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport
    ) -> None:
        if len(server.received) > 1:
            pong(data, addr, transport)

    server, port = await start_fake(drop_first)
    async with RtpEngineClient("127.0.0.1", port, timeout_s=0.6, resends=2) as ng:
        assert await ng.ping() > 0
    assert len(server.received) == 2
    assert server.received[0] == server.received[1]  # same cookie, same body
    assert server.transport is not None
    server.transport.close()


async def test_timeout_when_nobody_answers() -> None:
    server, port = await start_fake(lambda data, addr, transport: None)
    async with RtpEngineClient("127.0.0.1", port, timeout_s=0.3, resends=2) as ng:
        started = time.monotonic()
        with pytest.raises(RtpEngineTimeoutError, match=r"did not answer 'ping' within 0.3 s"):
            await ng.ping()
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.8
    assert len(server.received) == 3 and len(set(server.received)) == 1
    assert server.transport is not None
    server.transport.close()


async def test_nothing_listening_raises_within_timeout() -> None:
    port = free_udp_port()
    async with RtpEngineClient("127.0.0.1", port, timeout_s=0.5) as ng:
        started = time.monotonic()
        with pytest.raises(RtpEngineError) as info:
            await ng.ping()
        elapsed = time.monotonic() - started
    # Loopback answers with ICMP port unreachable, so this fails fast.
    assert isinstance(info.value, RtpEngineConnectionError)
    assert "nothing listening" in str(info.value)
    assert info.value.transient
    assert elapsed < 0.5 + 0.3


async def test_cancelled_request_leaves_nothing_pending() -> None:
    server, port = await start_fake(lambda data, addr, transport: None)
    ng = RtpEngineClient("127.0.0.1", port, timeout_s=5.0)
    task = asyncio.create_task(ng.ping())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ng._protocol is not None and not ng._protocol.pending
    ng.close()
    assert server.transport is not None
    server.transport.close()


async def test_unresolvable_host_is_a_connection_error() -> None:
    async with RtpEngineClient("no-such-host.invalid", 2223, timeout_s=0.5) as ng:
        with pytest.raises(RtpEngineConnectionError, match=re.escape("no-such-host.invalid:2223")):
            await ng.ping()


# ------------------------------------------------------------------ pure helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2223", ("127.0.0.1", 2223)),
        (" localhost:2223 ", ("localhost", 2223)),
        ("rtpengine.example.org:22222", ("rtpengine.example.org", 22222)),
        ("[::1]:2223", ("::1", 2223)),
        ("[2001:db8::5]:65535", ("2001:db8::5", 65535)),
    ],
)
def test_parse_ng_address_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_ng_address(text) == expected


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", ""),
        ("127.0.0.1", ""),
        ("2223", ""),
        (":2223", ""),
        ("127.0.0.1:", ""),
        ("127.0.0.1:port", "not a number"),
        ("127.0.0.1:0", "out of range"),
        ("127.0.0.1:70000", "out of range"),
        ("127.0.0.1:-1", "not a number"),
        ("::1:2223", "brackets"),
        ("[nonsense]:2223", "not an IPv6"),
        ("udp:127.0.0.1:2223", "no scheme"),
        ("http://127.0.0.1:2223", "no scheme"),
        ("bad host:2223", "not a host name"),
    ],
)
def test_parse_ng_address_explains_the_expected_form(text: str, detail: str) -> None:
    with pytest.raises(
        ValueError, match=re.escape("must be host:port, e.g. 127.0.0.1:2223")
    ) as info:
        parse_ng_address(text)
    assert "VAGENT_RTPENGINE_NG" in str(info.value)
    assert detail in str(info.value)


def test_build_message_maps_names_and_flags() -> None:
    message = build_message(
        "offer",
        {
            "call_id": "c",
            "from_tag": "f",
            "trust_address": True,
            "symmetric": False,
            "label": None,
            "flags": ["port-latching"],
            "replace": ["origin"],
        },
    )
    assert message == {
        "command": "offer",
        "call-id": "c",
        "from-tag": "f",
        "replace": ["origin"],
        "flags": ["trust-address", "port-latching"],
    }


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        RtpEngineClient("127.0.0.1", 2223, timeout_s=0)
    with pytest.raises(ValueError, match="resends"):
        RtpEngineClient("127.0.0.1", 2223, resends=-1)
    assert RtpEngineClient("::1", 2223).address == "[::1]:2223"
