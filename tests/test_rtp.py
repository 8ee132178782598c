"""RTP for ExternalMedia: packets Asterisk really sent, hostile datagrams, G.711 A-law
against the reference, and two real endpoints on loopback (pacing, barge-in, close).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import statistics
import struct
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vagent.services.audio import Audio, ulaw_decode, ulaw_encode
from vagent.services.call_controller.rtp import (
    CODECS,
    HalfRateDecimator,
    RtpEndpoint,
    RtpError,
    RtpExtension,
    RtpPacket,
    RtpSequencer,
    SequenceTracker,
    alaw_decode,
    alaw_encode,
    decode_payload,
    encode_payload,
)

SAMPLES = Path("/work/shared/ari-samples/media-samples.json")


def tone(freq: float, seconds: float, rate: int = 8000, amplitude: float = 8000) -> Audio:
    t = np.arange(round(seconds * rate)) / rate
    return Audio.from_array(amplitude * np.sin(2 * np.pi * freq * t), rate)


def packet(**overrides: Any) -> RtpPacket:
    fields: dict[str, Any] = {
        "payload_type": 0,
        "sequence": 1000,
        "timestamp": 160,
        "ssrc": 0x12345678,
        "payload": bytes(160),
    }
    return RtpPacket(**(fields | overrides))


# --------------------------------------------------------------------------- real packets


def asterisk_packets() -> list[tuple[str, dict[str, Any]]]:
    if not SAMPLES.exists():
        return []
    samples = json.loads(SAMPLES.read_text())
    return [
        (name, p)
        for name in ("rtp_ulaw", "rtp_alaw", "rtp_slin", "rtp_slin16")
        for p in samples[name]["packets"]
    ]


@pytest.mark.skipif(not SAMPLES.exists(), reason="ari-samples not present")
@pytest.mark.parametrize(("name", "sample"), asterisk_packets())
def test_packets_asterisk_sent_parse_and_reencode_byte_for_byte(
    name: str, sample: dict[str, Any]
) -> None:
    data = bytes.fromhex(sample["hex"])
    header = sample["header"]
    parsed = RtpPacket.parse(data)
    assert (parsed.version, bool(parsed.padding), parsed.extension, len(parsed.csrc)) == (
        header["v"],
        header["p"],
        None,
        header["cc"],
    )
    assert (parsed.marker, parsed.payload_type, parsed.sequence) == (
        header["m"],
        header["pt"],
        header["seq"],
    )
    assert (parsed.timestamp, parsed.ssrc) == (header["ts"], header["ssrc"])
    assert parsed.encode() == data
    audio = parsed.audio()
    expected_rate = 16000 if header["pt"] == 118 else 8000
    assert audio.rate == expected_rate
    assert audio.duration_s == pytest.approx(0.020)


@pytest.mark.skipif(not SAMPLES.exists(), reason="ari-samples not present")
def test_slin16_from_asterisk_is_big_endian() -> None:
    """Read in network order the voice is smooth; byte-swapped it is noise."""
    samples = json.loads(SAMPLES.read_text())["rtp_slin16"]["packets"]
    payload = b"".join(RtpPacket.parse(bytes.fromhex(p["hex"])).payload for p in samples)
    big = decode_payload(118, payload).array().astype(float)
    little = np.frombuffer(payload, dtype="<i2").astype(float)

    def roughness(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x)).mean() / (np.abs(x).mean() + 1))

    assert roughness(big) < 0.5 < roughness(little)


# --------------------------------------------------------------------------- parsing

MALFORMED = [
    (b"", "short header: 0 bytes"),
    (bytes.fromhex("8000000100000002000000"), "short header: 11 bytes"),
    (bytes.fromhex("400000010000000200000003") + bytes(10), "RTP version 1"),
    (bytes.fromhex("000000010000000200000003"), "RTP version 0"),
    (bytes.fromhex("c00000010000000200000003"), "RTP version 3"),
    (bytes.fromhex("820000010000000200000003") + bytes(4), "CSRC list of 2 entries overruns"),
    (bytes.fromhex("900000010000000200000003") + bytes(2), "extension header at 12 overruns"),
    (
        bytes.fromhex("900000010000000200000003") + bytes.fromhex("bede0002") + bytes(4),
        "extension of 2 words overruns",
    ),
    (bytes.fromhex("a00000010000000200000003"), "bad padding length 0: 0 octets"),
    (bytes.fromhex("a00000010000000200000003") + b"\x01\x02\x00", "bad padding length 0"),
    (bytes.fromhex("a00000010000000200000003") + b"\x01\x02\x04", "bad padding length 4: 3"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_datagrams_raise_rtp_error_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        RtpPacket.parse(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


def test_csrc_extension_padding_and_marker_round_trip() -> None:
    original = packet(
        csrc=(1, 2**32 - 1),
        extension=RtpExtension(0xBEDE, bytes(range(8))),
        padding=3,
        marker=True,
        payload_type=8,
        payload=b"\xd5" * 7,
    )
    data = original.encode()
    assert data[0] == 0x80 | 0x20 | 0x10 | 2
    assert data[1] == 0x80 | 8
    assert data[-3:] == b"\x00\x00\x03"
    assert RtpPacket.parse(data) == original


def test_padding_octets_are_stripped_from_the_payload() -> None:
    data = packet(payload=b"abc").encode()
    padded = bytes([data[0] | 0x20]) + data[1:] + b"\xaa\xbb\x03"
    parsed = RtpPacket.parse(padded)
    assert (parsed.payload, parsed.padding) == (b"abc", 3)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"payload_type": 128}, "payload type 128"),
        ({"sequence": 65536}, "sequence"),
        ({"timestamp": -1}, "timestamp"),
        ({"ssrc": 2**32}, "SSRC"),
        ({"csrc": tuple(range(16))}, "16 CSRCs"),
        ({"padding": 256}, "padding"),
        ({"version": 1}, "version 1"),
        ({"extension": RtpExtension(1, b"abc")}, "extension of 3 octets"),
    ],
)
def test_packets_that_cannot_be_encoded_are_refused(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        packet(**overrides)


def rtp_shaped() -> st.SearchStrategy[bytes]:
    """Bytes whose first octet says version 2, so fuzzing gets past the first check."""
    return st.binary(min_size=1, max_size=200).map(lambda b: bytes([0x80 | b[0] & 0x3F]) + b[1:])


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.binary(max_size=200), rtp_shaped()))
def test_parse_raises_nothing_but_rtp_error_on_any_input(data: bytes) -> None:
    try:
        parsed = RtpPacket.parse(data)
    except RtpError:
        return
    if not parsed.padding:
        assert parsed.encode() == data
    assert RtpPacket.parse(parsed.encode()) == parsed


packets = st.builds(
    RtpPacket,
    padding=st.integers(0, 255),
    extension=st.none()
    | st.builds(
        RtpExtension,
        st.integers(0, 0xFFFF),
        st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4]),
    ),
    csrc=st.lists(st.integers(0, 2**32 - 1), max_size=15).map(tuple),
    marker=st.booleans(),
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 2**16 - 1),
    timestamp=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=64),
)


@settings(max_examples=500, deadline=None)
@given(packets)
def test_any_valid_packet_round_trips(original: RtpPacket) -> None:
    assert RtpPacket.parse(original.encode()) == original


@settings(max_examples=500, deadline=None)
@given(packets, st.data())
def test_truncated_or_corrupted_packets_never_raise_anything_else(
    original: RtpPacket, data: st.DataObject
) -> None:
    wire = bytearray(original.encode())
    cut = data.draw(st.integers(0, len(wire)))
    for _ in range(data.draw(st.integers(0, 4))):
        if wire:
            wire[data.draw(st.integers(0, len(wire) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        RtpPacket.parse(bytes(wire[:cut]))
    except RtpError:
        return
    assert cut >= 12


# --------------------------------------------------------------------------- payloads


def alaw_reference_encode(sample: int) -> int:
    """Sun Microsystems g711.c linear2alaw, one sample at a time."""
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask, value = 0x55, -value - 1
    ends = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
    segment = next((i for i, end in enumerate(ends) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    code = segment << 4
    code |= (value >> 1 if segment < 2 else value >> segment) & 0x0F
    return code ^ mask


def alaw_reference_decode(code: int) -> int:
    """Sun Microsystems g711.c alaw2linear."""
    code ^= 0x55
    level = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        level += 8
    elif segment == 1:
        level += 0x108
    else:
        level = (level + 0x108) << (segment - 1)
    return level if code & 0x80 else -level


EVERY_SAMPLE = Audio.from_array(np.arange(-32768, 32768), 8000)


def test_alaw_encoder_matches_the_reference_for_all_65536_samples() -> None:
    expected = bytes(alaw_reference_encode(s) for s in range(-32768, 32768))
    assert alaw_encode(EVERY_SAMPLE) == expected


def test_alaw_decoder_matches_the_reference_for_all_256_codes() -> None:
    decoded = alaw_decode(bytes(range(256))).array().tolist()
    assert decoded == [alaw_reference_decode(code) for code in range(256)]


def test_alaw_agrees_with_pythons_audioop_where_it_still_exists() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    assert alaw_encode(EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE.pcm, 2)
    assert alaw_decode(bytes(range(256))).pcm == audioop.alaw2lin(bytes(range(256)), 2)


def test_alaw_round_trip_error_is_within_half_a_step() -> None:
    original = EVERY_SAMPLE.array().astype(int)
    again = alaw_decode(alaw_encode(EVERY_SAMPLE)).array().astype(int)
    # Steps double per segment: 16 up to 511, then 32, 64, ... 1024 at the top.
    step = np.maximum(16, 2 ** (np.floor(np.log2(np.maximum(np.abs(original), 1))) - 4))
    assert np.all(np.abs(again - original) <= step)


def test_payload_types_decode_as_asterisk_uses_them() -> None:
    voice = tone(440, 0.02)
    assert decode_payload(0, ulaw_encode(voice)) == ulaw_decode(ulaw_encode(voice))
    assert decode_payload(8, alaw_encode(voice)) == alaw_decode(alaw_encode(voice))
    big_endian = voice.array().astype(">i2").tobytes()
    assert decode_payload(10, big_endian) == voice
    assert decode_payload(11, big_endian) == voice
    wide = tone(440, 0.02, 16000)
    assert decode_payload(118, wide.array().astype(">i2").tobytes()) == wide
    for pt in CODECS:
        assert decode_payload(pt, encode_payload(pt, voice)).duration_s == pytest.approx(0.02)


def test_unknown_payload_types_and_broken_l16_raise_rtp_error() -> None:
    with pytest.raises(RtpError, match="unsupported payload type 101"):
        decode_payload(101, b"\x05\x0a\x00\xa0")
    with pytest.raises(RtpError, match="L16 payload of 3 bytes"):
        decode_payload(10, b"abc")


def test_wideband_decimation_keeps_the_voice_band_and_rejects_aliases() -> None:
    voice = HalfRateDecimator().process(tone(1000, 0.5, 16000))
    assert voice.rate == 8000 and voice.samples == 4000
    assert voice.rms() == pytest.approx(tone(1000, 0.5).rms(), rel=0.02)
    assert HalfRateDecimator().process(tone(3400, 0.5, 16000)).rms() > 0.98 * voice.rms()
    for alias in (4200, 5000, 7000):  # would fold onto 3.8, 3 and 1 kHz
        folded = HalfRateDecimator().process(tone(alias, 0.5, 16000)).array()[100:]
        steady = float(np.sqrt(np.mean(folded.astype(float) ** 2)))  # after the 3 ms onset
        assert steady < voice.rms() * 10 ** (-60 / 20)


def test_wideband_decimation_in_packets_equals_one_pass() -> None:
    """State carries across packets: no click at any 20 ms edge, whatever the sizes."""
    wide = tone(700, 0.3, 16000)
    whole = HalfRateDecimator().process(wide)
    streamed = HalfRateDecimator()
    pieces = []
    for start, end in ((0, 320), (320, 333), (333, 960), (960, 4800)):
        pieces.append(streamed.process(Audio(wide.pcm[2 * start : 2 * end], 16000)).pcm)
    assert b"".join(pieces) == whole.pcm


# --------------------------------------------------------------------------- sequencing


def test_sequencer_counts_wraps_and_marks_talk_spurts() -> None:
    sequencer = RtpSequencer(0, 8000, ssrc=7, sequence=65534, timestamp=2**32 - 160)
    first = sequencer.next_packet(b"x", 160, now=0.0, new_spurt=True)
    second = sequencer.next_packet(b"x", 160, now=0.02, new_spurt=False)
    third = sequencer.next_packet(b"x", 160, now=0.04, new_spurt=False)
    assert [p.sequence for p in (first, second, third)] == [65534, 65535, 0]
    assert [p.timestamp for p in (first, second, third)] == [2**32 - 160, 0, 160]
    assert [p.marker for p in (first, second, third)] == [True, False, False]
    resumed = sequencer.next_packet(b"x", 160, now=1.04, new_spurt=True)
    assert resumed.marker and resumed.sequence == 1
    assert resumed.timestamp == 160 + 8000  # advanced by the 1 s of wall clock
    assert {p.ssrc for p in (first, resumed)} == {7}


def test_sequencer_picks_random_ssrc_and_start() -> None:
    ssrcs = {RtpSequencer(0, 8000).ssrc for _ in range(20)}
    assert len(ssrcs) == 20


def test_sequence_tracker_drops_late_and_duplicate_packets_and_counts_gaps() -> None:
    tracker = SequenceTracker()
    seen = [tracker.accept(packet(sequence=s)) for s in (65533, 65534, 65534, 1, 65535, 0, 2, 5)]
    assert seen == [
        (True, 0),
        (True, 0),
        (False, 0),
        (True, 2),
        (False, 0),
        (False, 0),
        (True, 0),
        (True, 2),
    ]
    assert tracker.accept(packet(sequence=4, ssrc=99)) == (True, 0)  # new stream


def test_sequence_tracker_resyncs_when_the_sender_restarts_its_numbering() -> None:
    tracker = SequenceTracker()
    assert tracker.accept(packet(sequence=40000)) == (True, 0)
    restarted = [tracker.accept(packet(sequence=s)) for s in range(100, 105)]
    assert restarted == [(True, 0)] * 5  # a restart is not 25,635 lost packets


# --------------------------------------------------------------------------- endpoints


@dataclass
class Recorder(asyncio.DatagramProtocol):
    """Asterisk's side of the wire, reduced to what the tests look at."""

    packets: list[tuple[float, tuple[str, int], bytes]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.packets.append((time.monotonic(), (addr[0], addr[1]), data))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    def parsed(self) -> list[RtpPacket]:
        return [RtpPacket.parse(data) for _, _, data in self.packets]


@pytest.fixture
async def asterisk() -> AsyncIterator[Recorder]:
    loop = asyncio.get_running_loop()
    transport, recorder = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
    yield recorder
    transport.close()


@pytest.fixture
async def endpoint(asterisk: Recorder) -> AsyncIterator[RtpEndpoint]:
    ep = await RtpEndpoint.open("127.0.0.1", 0)
    ep.set_remote(*asterisk.address)
    yield ep
    ep.close()
    await ep.wait_closed()


async def wait_for(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_two_endpoints_exchange_audio_both_ways() -> None:
    async with await RtpEndpoint.open() as app, await RtpEndpoint.open() as pbx:
        app.set_remote(*pbx.local_address)
        pbx.set_remote(*app.local_address)
        caller, agent = tone(300, 0.2), tone(1000, 0.2)
        await asyncio.gather(pbx.send_audio(caller), app.send_audio(agent))
        heard_by_app = [await app.receive() for _ in range(10)]
        heard_by_pbx = [await pbx.receive() for _ in range(10)]
    assert all(f is not None and f.samples == 160 and f.rate == 8000 for f in heard_by_app)
    assert b"".join(f.pcm for f in heard_by_app if f) == ulaw_decode(ulaw_encode(caller)).pcm
    assert b"".join(f.pcm for f in heard_by_pbx if f) == ulaw_decode(ulaw_encode(agent)).pcm
    assert app.source_address == pbx.local_address
    assert app.stats.packets_in == app.stats.packets_out == 10


@pytest.mark.serial
async def test_agent_audio_is_paced_at_20_ms_without_drift(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    started = time.monotonic()
    result = await endpoint.play(tone(1000, 2.0))
    took = time.monotonic() - started
    assert result.reason == "completed" and result.packets == 100
    assert result.audio_s == pytest.approx(2.0)
    assert took == pytest.approx(2.0, abs=0.04)
    arrivals = [t for t, _, _ in asterisk.packets]
    gaps_ms = np.diff(arrivals) * 1000
    assert 19 <= statistics.median(gaps_ms) <= 21
    assert arrivals[-1] - arrivals[0] == pytest.approx(1.98, abs=0.04)  # 99 gaps
    # The schedule is anchored at the start: the last packet is not later than the first + 99 slots.
    worst = max(abs(t - (arrivals[0] + 0.02 * i)) for i, t in enumerate(arrivals))
    assert worst < 0.03


async def test_packets_go_from_the_external_host_socket_as_ulaw(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    await endpoint.play(tone(1000, 0.1))
    sources = {source for _, source, _ in asterisk.packets}
    assert sources == {endpoint.local_address}  # Asterisk never follows another source
    sent = asterisk.parsed()
    assert [len(data) for _, _, data in asterisk.packets] == [172] * 5
    assert {p.payload_type for p in sent} == {0}
    assert [p.marker for p in sent] == [True, False, False, False, False]
    assert len({p.ssrc for p in sent}) == 1
    assert all((b.sequence - a.sequence) % 65536 == 1 for a, b in itertools.pairwise(sent))
    assert all((b.timestamp - a.timestamp) % 2**32 == 160 for a, b in itertools.pairwise(sent))
    assert b"".join(p.payload for p in sent) == ulaw_encode(tone(1000, 0.1))


async def test_a_second_talk_spurt_is_marked_and_continues_the_stream(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    await endpoint.play(tone(500, 0.06))
    await asyncio.sleep(0.3)
    await endpoint.play(tone(500, 0.05))  # 2.5 frames: the last is padded with silence
    sent = asterisk.parsed()
    assert [p.marker for p in sent] == [True, False, False, True, False, False]
    assert [(b.sequence - a.sequence) % 65536 for a, b in itertools.pairwise(sent)] == [1] * 5
    jump = (sent[3].timestamp - sent[2].timestamp) % 2**32
    assert 0.3 * 8000 < jump < 0.45 * 8000
    assert sent[-1].payload[80:] == b"\xff" * 80  # ulaw silence padding


async def test_stop_sends_nothing_further_and_reports_what_went_out(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    playout = endpoint.play(tone(1000, 2.0))
    await asyncio.sleep(0.5)
    playout.stop()
    at_stop = endpoint.stats.packets_out
    result = await playout
    await asyncio.sleep(0.2)
    assert len(asterisk.packets) == at_stop == result.packets == endpoint.stats.packets_out
    assert result.reason == "stopped"
    assert 20 <= result.packets <= 30
    assert result.audio_s == pytest.approx(result.packets * 0.02)
    assert not endpoint.playing
    playout.stop()  # idempotent
    assert (await playout).reason == "stopped"


async def test_cancelling_the_task_that_awaits_a_playout_stops_it(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    playout = endpoint.play(tone(1000, 2.0))
    waiter = asyncio.create_task(endpoint.send_audio(tone(1000, 2.0)))  # replaces it
    await asyncio.sleep(0.2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    sent = endpoint.stats.packets_out
    await asyncio.sleep(0.2)
    assert len(asterisk.packets) == endpoint.stats.packets_out == sent
    assert (await playout).reason == "replaced"
    assert playout.result is not None and not playout.active
    assert not endpoint.playing


async def test_playing_again_replaces_the_current_playout(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    first = endpoint.play(tone(400, 1.0))
    await asyncio.sleep(0.1)
    second = endpoint.play(tone(800, 0.1))
    assert (await first).reason == "replaced"
    assert (await second).reason == "completed"
    assert len({p.ssrc for p in asterisk.parsed()}) == 1


async def test_a_streaming_source_joins_chunks_and_survives_an_underrun(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    async def sentences() -> AsyncIterator[Audio]:
        yield tone(440, 0.105, 24000)  # TTS rates and odd lengths join without gaps
        yield tone(440, 0.095, 24000)
        await asyncio.sleep(0.3)  # the next sentence is late
        yield tone(440, 0.04, 24000)

    result = await endpoint.play(sentences())
    sent = asterisk.parsed()
    assert result.reason == "completed" and result.packets == 12 == len(sent)
    assert result.audio_s == pytest.approx(0.24)
    assert [p.marker for p in sent] == [True] + [False] * 9 + [True, False]


async def test_a_failing_source_ends_the_playout_with_the_error(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    async def broken() -> AsyncIterator[Audio]:
        yield tone(440, 0.1)
        raise ConnectionError("tts went away")

    result = await endpoint.play(broken())
    assert result.reason == "error" and isinstance(result.error, ConnectionError)
    assert result.packets == 5
    await wait_for(lambda: len(asterisk.packets) == 5)


async def test_malformed_datagrams_are_counted_and_reception_goes_on(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    voice = tone(600, 0.02)
    good = [
        packet(sequence=s, timestamp=160 * s, payload=ulaw_encode(voice)).encode() for s in range(5)
    ]
    junk = [b"", b"\x80", b"GET / HTTP/1.1\r\n\r\n", bytes(200), MALFORMED[5][0], MALFORMED[9][0]]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:  # sends even b""
        for data in [good[0], *junk[:3], good[1], *junk[3:], good[2]]:
            raw.sendto(data, endpoint.local_address)
    asterisk.send(
        packet(payload_type=101, payload=b"\x05\x0a\x00\xa0").encode(), endpoint.local_address
    )
    asterisk.send(
        packet(payload_type=10, sequence=3, payload=b"odd").encode(), endpoint.local_address
    )
    asterisk.send(good[3], endpoint.local_address)
    asterisk.send(good[4], endpoint.local_address)
    frames = [await asyncio.wait_for(endpoint.receive(), 2) for _ in range(5)]
    assert all(f == ulaw_decode(ulaw_encode(voice)) for f in frames)
    stats = endpoint.stats
    assert stats.datagrams_in == 5 + len(junk) + 2
    assert (stats.malformed, stats.unsupported, stats.packets_in) == (len(junk) + 1, 1, 5)


async def test_wideband_packets_arrive_as_8k_20ms_frames(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    wide = tone(1000, 0.2, 16000)
    for i in range(10):
        payload = wide.array()[320 * i : 320 * (i + 1)].astype(">i2").tobytes()
        asterisk.send(
            packet(payload_type=118, sequence=i, payload=payload).encode(), endpoint.local_address
        )
    frames = [await asyncio.wait_for(endpoint.receive(), 2) for _ in range(10)]
    assert all(f is not None and (f.rate, f.samples) == (8000, 160) for f in frames)
    heard = np.concatenate([f.array() for f in frames if f]).astype(float)[100:]
    spectrum = np.abs(np.fft.rfft(heard))
    assert np.argmax(spectrum) * 8000 / len(heard) == pytest.approx(1000, abs=10)
    assert float(np.sqrt(np.mean(heard**2))) == pytest.approx(wide.rms(), rel=0.03)


async def test_a_slow_consumer_loses_the_oldest_frames_first(asterisk: Recorder) -> None:
    async with await RtpEndpoint.open(queue_frames=5) as endpoint:
        for i in range(12):  # payload i: every sample encodes the packet number
            payload = np.full(160, i * 100, dtype=">i2").tobytes()
            asterisk.send(
                packet(payload_type=10, sequence=i, payload=payload).encode(),
                endpoint.local_address,
            )
        await wait_for(lambda: endpoint.stats.packets_in == 12)
        kept = [await endpoint.receive() for _ in range(5)]
        assert [int(f.array()[0]) for f in kept if f] == [700, 800, 900, 1000, 1100]
        assert endpoint.stats.dropped == 7


async def test_strict_source_ignores_packets_from_anyone_else(asterisk: Recorder) -> None:
    async with await RtpEndpoint.open(strict_source=True) as endpoint:
        endpoint.set_remote(*asterisk.address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
            intruder.sendto(packet(sequence=1).encode(), endpoint.local_address)
        asterisk.send(packet(sequence=2).encode(), endpoint.local_address)
        frame = await asyncio.wait_for(endpoint.receive(), 2)
        assert frame is not None
        await wait_for(lambda: endpoint.stats.datagrams_in == 2)
        assert (endpoint.stats.foreign, endpoint.stats.packets_in) == (1, 1)


async def test_close_ends_frames_frees_the_port_and_silences_playouts(
    endpoint: RtpEndpoint, asterisk: Recorder
) -> None:
    host, port = endpoint.local_address
    playout = endpoint.play(tone(1000, 2.0))
    await asyncio.sleep(0.2)

    async def drain() -> int:
        return sum([1 async for _ in endpoint.frames()])

    reader = asyncio.create_task(drain())
    await asyncio.sleep(0.01)
    endpoint.close()
    at_close = endpoint.stats.packets_out
    assert (await playout).reason == "closed"
    assert await asyncio.wait_for(reader, 1) == 0
    await endpoint.wait_closed()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rebound:
        rebound.bind((host, port))  # the port is free again
    late = endpoint.play(tone(1000, 0.2))  # TTS that arrives after the hangup
    assert (await late).reason == "closed" and (await late).packets == 0
    await asyncio.sleep(0.1)
    assert len(asterisk.packets) == at_close
    assert await endpoint.receive() is None
    endpoint.close()  # idempotent


async def test_misuse_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="PT 118 is silently dropped"):
        await RtpEndpoint.open(payload_type=118)
    async with await RtpEndpoint.open() as endpoint:
        with pytest.raises(RuntimeError, match="set_remote"):
            endpoint.play(tone(440, 0.1))
        with pytest.raises(ValueError, match="IP address"):
            endpoint.set_remote("asterisk.local", 10000)
        with pytest.raises(ValueError, match="out of range"):
            endpoint.set_remote("127.0.0.1", 70000)
        with pytest.raises(ValueError, match="IPv6"):
            endpoint.set_remote("::1", 10000)


async def test_alaw_endpoint_sends_pt_8(asterisk: Recorder) -> None:
    async with await RtpEndpoint.open(payload_type=8) as endpoint:
        endpoint.set_remote(*asterisk.address)
        await endpoint.play(tone(440, 0.04))
    sent = asterisk.parsed()
    assert [p.payload_type for p in sent] == [8, 8]
    assert b"".join(p.payload for p in sent) == alaw_encode(tone(440, 0.04))


async def test_stats_are_plain_counters_for_metrics(endpoint: RtpEndpoint) -> None:
    counters = endpoint.stats.as_dict()
    assert set(counters) >= {"packets_in", "packets_out", "malformed", "dropped"}
    assert all(isinstance(v, int) for v in counters.values())


def test_header_struct_layout_is_network_order() -> None:
    data = packet(sequence=0x0102, timestamp=0x03040506, ssrc=0x0708090A).encode()
    assert struct.unpack("!HII", data[2:12]) == (0x0102, 0x03040506, 0x0708090A)
