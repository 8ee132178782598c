"""Fuzzing the wire parsers: bencode (ng protocol), rtpengine replies, RTP datagrams.

test_bencode.py and test_rtp.py already fuzz the two packet parsers alone
(random bytes, mutated valid input, round trips). This file fuzzes what sits
on top of them, where a parser's output meets code that trusts it:

* bencode: token soup (sequences of bencode's own tokens, which reach deep
  structures random bytes never do), and canonical re-encoding;
* rtpengine: whatever arrives, a request ends in a reply dictionary or an
  ``RtpEngineError`` subclass; stray datagrams with other cookies change nothing;
  every refused reply is counted in ``vagent_rejected_input_total``;
* RTP: any sequence of datagrams from any source leaves the endpoint running,
  every datagram is accounted for in exactly one counter, and frames() yields
  only whole 20 ms frames to its end.

Example counts are moderate: the whole fuzz suite must stay under 90 s in CI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import cast

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vagent.services import metrics
from vagent.services.audio import Audio
from vagent.services.bencode import MAX_DEPTH, BencodeError, BValue, decode, encode
from vagent.services.call_controller.rtp import (
    CODECS,
    HalfRateDecimator,
    RtpEndpoint,
    RtpExtension,
    RtpPacket,
)
from vagent.services.rtpengine import (
    RtpEngineClient,
    RtpEngineError,
    RtpEngineProtocolError,
    RtpEngineReplyError,
)

PURE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WITH_IO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rejected(source: str, reason: str) -> float:
    """How many inputs `source` refused for `reason` so far (vagent_rejected_input_total)."""
    labels = {"source": source, "reason": reason}
    return metrics.REGISTRY.get_sample_value("vagent_rejected_input_total", labels) or 0.0


# --------------------------------------------------------------------------- bencode

# bencode's own vocabulary, plus lengths and integers that lie about what follows.
TOKENS = st.sampled_from(
    [
        *(b"i", b"e", b"l", b"d", b":", b"-", b"0", b"1", b"2", b"9", b"0:", b"1:", b"4:spam"),
        *(b"i0e", b"i-0e", b"i01e", b"ie", b"i-e", b"99999999999999999999:", b"1" * 70 + b":"),
        *(b"i" + b"9" * 70 + b"e", b"de", b"le", b"d1:ae", b"d1:ai1e1:ai2ee"),
    ]
)
token_soup = st.lists(TOKENS | st.binary(min_size=1, max_size=3), max_size=40).map(b"".join)


@PURE
@given(token_soup)
@example(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))
@example(b"d1:a" * (MAX_DEPTH + 1) + b"de" + b"e" * (MAX_DEPTH + 1))
@example(b"l" * 100_000)
@example(b"d1:a" * 50_000)
def test_token_soup_decodes_or_raises_bencode_error(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError as exc:
        assert str(exc)  # the reason, never an empty message
        return
    # What decodes is well formed: encoding it again is canonical and decodes the same.
    assert decode(encode(value)) == value


bvalues: st.SearchStrategy[BValue] = st.recursive(
    st.binary(max_size=20) | st.integers(min_value=-(2**100), max_value=2**100),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.binary(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)


@PURE
@given(bvalues)
def test_encoding_is_canonical(value: BValue) -> None:
    """decode(encode(v)) == v, and a canonical encoding is its own re-encoding."""
    wire = encode(value)
    assert decode(wire) == value
    assert encode(decode(wire)) == wire


# --------------------------------------------------------------------------- rtpengine replies

CLIENT = RtpEngineClient("127.0.0.1", 9, timeout_s=0.5)  # no socket: only its reply parsing

# Replies shaped like rtpengine's, with values of any type where text is expected.
ng_reply = st.dictionaries(
    st.sampled_from([b"result", b"error-reason", b"warning", b"sdp", b"created"])
    | st.binary(max_size=8),
    bvalues,
    max_size=5,
).map(encode)
reply_payloads = ng_reply | token_soup | st.binary(max_size=60)


@PURE
@given(reply_payloads, st.sampled_from(["ping", "offer", "answer", "delete", "query"]))
@example(encode({b"result": b"error"}), "offer")  # no error-reason
@example(encode({b"result": b"error", b"error-reason": [b"a", {b"b": 1}]}), "offer")
@example(encode({b"result": 7}), "ping")
@example(encode({b"result": b"ok", b"warning": {b"\xff": b"\xfe"}}), "delete")
@example(encode({b"\xff": b"1", b"\\xff": b"2", b"result": b"ok"}), "query")
@example(b"d" + (b"3000:" + b"k" * 3000 + b"i1e") * 2 + b"e", "offer")  # a long duplicate key
@example(encode({b"result": b"error", b"error-reason": b"x" * 5000}), "offer")
def test_any_reply_is_a_dictionary_or_an_rtpengine_error(payload: bytes, command: str) -> None:
    try:
        reply = CLIENT._decode_reply(command, payload)
        CLIENT._check_result(command, reply)
    except (RtpEngineReplyError, RtpEngineProtocolError) as exc:
        assert exc.command == command
        assert 0 < len(str(exc)) < 400  # readable in a log line and in /health
        return
    assert all(isinstance(key, str) for key in reply)
    assert reply.get("result") is not None


def test_a_refused_reply_is_counted_by_reason() -> None:
    cases = {"undecodable": b"d6:result", "not_a_dictionary": b"le", "no_result": b"de"}
    for reason, payload in cases.items():
        before = rejected("rtpengine", reason)
        with pytest.raises(RtpEngineProtocolError):
            CLIENT._check_result("ping", CLIENT._decode_reply("ping", payload))
        assert rejected("rtpengine", reason) == before + 1


async def _garbled_exchange(strays: list[bytes], payload: bytes) -> dict[str, object]:
    """One ping against a server that sends `strays`, then `payload` under our cookie."""

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            for stray in strays:
                self.transport.sendto(stray, addr)
            self.transport.sendto(data.split(b" ", 1)[0] + b" " + payload, addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        async with RtpEngineClient("127.0.0.1", port, timeout_s=1.0, resends=0) as ng:
            return await ng.request("ping")
    finally:
        transport.close()


# A stray never carries our cookie: ours are 16 hex digits, these are not.
strays = st.lists(
    st.binary(max_size=40) | st.builds(lambda b: b"cafe " + b, reply_payloads), max_size=4
)


@WITH_IO
@given(strays, reply_payloads)
def test_over_udp_strays_are_ignored_and_the_reply_decides(
    stray_datagrams: list[bytes], payload: bytes
) -> None:
    try:
        expected: Mapping[str, object] | RtpEngineError = CLIENT._decode_reply("ping", payload)
        CLIENT._check_result("ping", expected)
    except RtpEngineError as exc:
        expected = exc
    try:
        reply = asyncio.run(_garbled_exchange(stray_datagrams, payload))
    except RtpEngineError as exc:
        assert isinstance(expected, RtpEngineError), f"{exc!r} for a good reply"
        assert type(exc) is type(expected)
        return
    assert reply == expected


# --------------------------------------------------------------------------- RTP

packets = st.builds(
    RtpPacket,
    padding=st.integers(0, 4),
    extension=st.none() | st.builds(RtpExtension, st.integers(0, 0xFFFF), st.just(bytes(4))),
    csrc=st.lists(st.integers(0, 2**32 - 1), max_size=2).map(tuple),
    marker=st.booleans(),
    payload_type=st.sampled_from([*CODECS, 13, 101, 127]),
    sequence=st.integers(0, 2**16 - 1),
    timestamp=st.integers(0, 2**32 - 1),
    ssrc=st.sampled_from([1, 2, 0xFFFFFFFF]),
    payload=st.binary(max_size=340),  # odd lengths too: half an L16 sample
)


def _mutate(wire: bytes, data: st.DataObject) -> bytes:
    raw = bytearray(wire)
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    return bytes(raw[: data.draw(st.integers(0, len(raw)))])


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """Mostly packets that parse (so the endpoint's own logic is exercised), and garbage."""
    kind = draw(st.sampled_from(["valid", "valid", "mutated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=80))
    wire = draw(packets).encode()
    return _mutate(wire, draw(st.data())) if kind == "mutated" else wire


REMOTE = ("127.0.0.1", 40000)
sources = st.sampled_from([REMOTE, ("127.0.0.1", 40001), ("10.0.0.9", 40000)])


async def _feed(arrivals: list[tuple[bytes, tuple[str, int]]], strict: bool) -> None:
    endpoint = RtpEndpoint(strict_source=strict, queue_frames=10_000)
    endpoint.set_remote(*REMOTE)
    malformed_before = rejected("rtp", "malformed")
    for data, source in arrivals:
        endpoint._on_datagram(data, source)  # what the socket's protocol calls, no socket
    stats = endpoint.stats
    # Lose nothing uncounted: every datagram lands in exactly one bucket.
    dropped_foreign = stats.foreign if strict else 0
    buckets = stats.packets_in + stats.malformed + stats.unsupported + stats.late + dropped_foreign
    assert stats.datagrams_in == len(arrivals) == buckets
    assert rejected("rtp", "malformed") - malformed_before == stats.malformed
    endpoint.close()
    frames = [frame async for frame in endpoint.frames()]
    assert all(f.rate == 8000 and len(f.pcm) == 320 for f in frames)
    assert await endpoint.receive() is None  # and again: the end is sticky


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(datagrams(), sources), max_size=25), st.booleans())
def test_any_datagrams_leave_the_endpoint_running_and_are_all_counted(
    arrivals: list[tuple[bytes, tuple[str, int]]], strict: bool
) -> None:
    asyncio.run(_feed(arrivals, strict))


def _slin16(seconds: float) -> Audio:
    rng = np.random.default_rng(7)
    return Audio.from_array(rng.normal(0, 3000, round(16000 * seconds)), 16000)


@PURE
@given(st.lists(st.integers(0, 400), max_size=12))
@example([0, 160, 0, 0, 320])  # empty packets: each used to add a sample of filter history
def test_decimating_any_packetisation_equals_one_pass(cuts: list[int]) -> None:
    """Regression: an empty PT 118 payload came out as one sample of stale filter state."""
    audio = _slin16(0.1)
    whole = HalfRateDecimator().process(audio).pcm
    decimator, pieces, offset = HalfRateDecimator(), [], 0
    for size in [*cuts, audio.samples]:
        chunk = audio.pcm[offset * 2 : (offset + size) * 2]
        pieces.append(decimator.process(Audio(chunk, 16000)).pcm)
        offset = min(offset + size, audio.samples)
    assert b"".join(pieces) == whole


def test_an_empty_slin16_packet_adds_no_audio() -> None:
    """Regression for the decimator defect, through the endpoint."""

    async def scenario() -> bytes:
        endpoint = RtpEndpoint(queue_frames=100)
        for sequence in range(200):
            empty = RtpPacket(payload_type=118, sequence=sequence, timestamp=0, ssrc=1)
            endpoint._on_datagram(empty.encode(), REMOTE)
        endpoint.close()
        return b"".join([frame.pcm async for frame in endpoint.frames()])

    assert asyncio.run(scenario()) == b""  # 200 bogus samples would have made a frame


def test_endpoint_counts_each_kind_of_rejection() -> None:
    """Rejections reach /metrics with a reason, not only the per-call stats."""

    async def scenario() -> None:
        endpoint = RtpEndpoint(strict_source=True)
        endpoint.set_remote(*REMOTE)
        dtmf = RtpPacket(payload_type=101, sequence=1, timestamp=0, ssrc=1, payload=b"\x05")
        voice = RtpPacket(payload_type=0, sequence=2, timestamp=0, ssrc=1, payload=bytes(160))
        cases = [
            ("malformed", b"\x80", REMOTE),
            ("unsupported_payload_type", dtmf.encode(), REMOTE),
            ("foreign_source", voice.encode(), ("10.0.0.9", 1)),
        ]
        for reason, data, source in cases:
            before = rejected("rtp", reason)
            endpoint._on_datagram(data, source)
            assert rejected("rtp", reason) == before + 1, reason
        endpoint.close()

    asyncio.run(scenario())


async def _over_udp(garbage: list[bytes]) -> tuple[list[Audio], int]:
    """Real sockets: garbage before each of three good packets; the good ones all arrive."""
    endpoint = await RtpEndpoint.open("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    sender, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=endpoint.local_address
    )
    try:
        for sequence in range(3):
            for junk in garbage:
                sender.sendto(junk)
            good = RtpPacket(
                payload_type=0,
                sequence=sequence,
                timestamp=160 * sequence,
                ssrc=5,
                payload=bytes(160),
            )
            sender.sendto(good.encode())
        frames = [await asyncio.wait_for(endpoint.receive(), 2) for _ in range(3)]
        return frames, endpoint.stats.malformed
    finally:
        sender.close()
        endpoint.close()
        await asyncio.wait_for(endpoint.wait_closed(), 2)


# Not RTP whatever follows: the version bits of the first octet say 0. Not empty:
# asyncio does not send an empty datagram (test_rtp.py sends one with a raw socket).
not_rtp = st.binary(min_size=1, max_size=60).map(lambda b: bytes([b[0] & 0x3F]) + b[1:])


@WITH_IO
@given(st.lists(not_rtp, max_size=5))
def test_over_udp_garbage_between_packets_costs_nothing(garbage: list[bytes]) -> None:
    frames, malformed = asyncio.run(_over_udp(garbage))
    assert [len(f.pcm) for f in frames] == [320, 320, 320]
    assert malformed == 3 * len(garbage)
