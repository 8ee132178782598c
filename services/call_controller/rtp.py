"""RTP for an ARI ExternalMedia channel: packets, G.711/L16 payloads, one UDP endpoint per call.

What shapes this module (measured on Asterisk 22.10.1, see ari-samples/rtp-notes.md):

* Asterisk sends 20 ms packets: ulaw PT 0, alaw PT 8, slin PT 10 (8 kHz
  big-endian L16) and slin16 as the dynamic PT **118** (16 kHz big-endian).
* Asterisk accepts back any *static* payload type (0, 8, 10, 11) on any
  channel, but silently drops PT 118. So agent audio always goes out as 8 kHz
  ulaw PT 0 by default, whatever format the channel was created with.
* Asterisk never follows the source address of our packets (no comedia): it
  sends to `external_host` and accepts from whatever passes strict-RTP
  learning. So the app must send *from the socket it gave as external_host*
  *to* UNICASTRTP_LOCAL_ADDRESS:PORT, and start within 5 s.
* Datagrams on that port are untrusted input: anything can arrive, and
  nothing that arrives may crash the call.

Inside vagent, audio is `Audio` (16-bit LE PCM). `RtpEndpoint` turns the
caller's packets into 20 ms 8 kHz frames for the endpointer and paces agent
audio out at 20 ms, stoppable at once for barge-in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Generator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from vagent.services import metrics
from vagent.services.audio import (
    FRAME_MS,
    TELEPHONY_RATE,
    WIDEBAND_RATE,
    Audio,
    ulaw_decode,
    ulaw_encode,
)

log = logging.getLogger("vagent.rtp")

RTP_VERSION = 2
HEADER_SIZE = 12
PT_PCMU = 0
PT_PCMA = 8
PT_L16 = 10
PT_L16_MONO = 11
PT_SLIN16 = 118
#: What Asterisk plays into the bridge when we send it (PT 118 is dropped).
SENDABLE_PAYLOAD_TYPES = frozenset({PT_PCMU, PT_PCMA, PT_L16, PT_L16_MONO})
#: A playout that falls this far behind its 20 ms schedule (source underrun,
#: loop stall) starts a new talk spurt instead of bursting to catch up.
MAX_LATENESS_S = 0.1
_HEADER = struct.Struct("!BBHII")


class RtpError(ValueError):
    """A datagram that is not a usable RTP packet; the message says why."""


# --------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """An RFC 3550 header extension: a 16-bit profile value and whole 32-bit words."""

    profile: int
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1).

    padding is the number of padding octets (0 = P bit clear); encode() writes
    zeros followed by the count, so a parsed packet re-encodes byte for byte
    unless its padding octets were not zero.
    """

    version: int = RTP_VERSION
    padding: int = 0
    extension: RtpExtension | None = None
    csrc: tuple[int, ...] = ()
    marker: bool = False
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        _check(self.version == RTP_VERSION, f"RTP version {self.version}, expected 2")
        _check(0 <= self.padding <= 255, f"padding of {self.padding} octets")
        _check(len(self.csrc) <= 15, f"{len(self.csrc)} CSRCs, at most 15 fit")
        _check(all(0 <= c < 2**32 for c in self.csrc), "CSRC out of 32-bit range")
        _check(0 <= self.payload_type < 128, f"payload type {self.payload_type}")
        _check(0 <= self.sequence < 2**16, f"sequence {self.sequence}")
        _check(0 <= self.timestamp < 2**32, f"timestamp {self.timestamp}")
        _check(0 <= self.ssrc < 2**32, f"SSRC {self.ssrc}")
        if self.extension is not None:
            _check(0 <= self.extension.profile < 2**16, "extension profile")
            size = len(self.extension.data)
            _check(size % 4 == 0 and size < 4 * 2**16, f"extension of {size} octets")

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; raises RtpError, and only RtpError, if it is malformed."""
        buf = bytes(data)
        if len(buf) < HEADER_SIZE:
            raise RtpError(f"short header: {len(buf)} bytes, an RTP header needs {HEADER_SIZE}")
        first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(buf)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}, expected 2")
        count = first & 0x0F
        offset = HEADER_SIZE + 4 * count
        if offset > len(buf):
            raise RtpError(f"CSRC list of {count} entries overruns the {len(buf)}-byte datagram")
        csrc = struct.unpack_from(f"!{count}I", buf, HEADER_SIZE)
        extension, offset = _parse_extension(buf, offset) if first & 0x10 else (None, offset)
        padding = _parse_padding(buf, offset) if first & 0x20 else 0
        return cls(
            padding=padding,
            extension=extension,
            csrc=csrc,
            marker=bool(second & 0x80),
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=buf[offset : len(buf) - padding],
        )

    def encode(self) -> bytes:
        """The packet on the wire."""
        first = RTP_VERSION << 6 | len(self.csrc)
        first |= (0x20 if self.padding else 0) | (0x10 if self.extension is not None else 0)
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [
            _HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc),
            struct.pack(f"!{len(self.csrc)}I", *self.csrc),
        ]
        if self.extension is not None:
            words = len(self.extension.data) // 4
            parts += [struct.pack("!HH", self.extension.profile, words), self.extension.data]
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)

    def audio(self) -> Audio:
        """The payload as PCM at its codec's rate; RtpError for unknown payload types."""
        return decode_payload(self.payload_type, self.payload)


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise RtpError(reason)


def _parse_extension(buf: bytes, offset: int) -> tuple[RtpExtension, int]:
    if offset + 4 > len(buf):
        raise RtpError(f"extension header at {offset} overruns the {len(buf)}-byte datagram")
    profile, words = struct.unpack_from("!HH", buf, offset)
    end = offset + 4 + 4 * words
    if end > len(buf):
        raise RtpError(f"extension of {words} words overruns the {len(buf)}-byte datagram")
    return RtpExtension(profile, buf[offset + 4 : end]), end


def _parse_padding(buf: bytes, payload_start: int) -> int:
    available = len(buf) - payload_start
    count = buf[-1] if available else 0
    if not 1 <= count <= available:
        raise RtpError(
            f"bad padding length {count}: {available} octets follow the header"
            " (the count includes itself, so it is 1 or more)"
        )
    return count


# --------------------------------------------------------------------------- payloads

# G.711 A-law, after the reference implementation (Sun Microsystems g711.c,
# ITU-T G.711): the segment ends of the 13-bit magnitude.
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def alaw_encode(audio: Audio) -> bytes:
    """G.711 A-law of the audio resampled to 8 kHz."""
    pcm = audio.resample(TELEPHONY_RATE).array().astype(np.int32) >> 3
    positive = pcm >= 0
    mask = np.where(positive, 0xD5, 0x55)
    magnitude = np.where(positive, pcm, -pcm - 1)  # 0..4095 for 16-bit input
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude)  # first end >= magnitude: 0..7
    quantized = np.where(segment < 2, magnitude >> 1, magnitude >> segment) & 0x0F
    return bytes((((segment << 4) | quantized) ^ mask).astype(np.uint8).tobytes())


def alaw_decode(data: bytes) -> Audio:
    """8 kHz A-law bytes to PCM."""
    codes = np.frombuffer(data, dtype=np.uint8).astype(np.int32) ^ 0x55
    segment = (codes & 0x70) >> 4
    level = (codes & 0x0F) << 4
    level = np.where(segment == 0, level + 8, (level + 0x108) << np.maximum(segment - 1, 0))
    return Audio.from_array(np.where(codes & 0x80, level, -level), TELEPHONY_RATE)


def _l16_decoder(rate: int) -> Callable[[bytes], Audio]:
    def decode(data: bytes) -> Audio:
        if len(data) % 2:
            raise RtpError(f"L16 payload of {len(data)} bytes is not whole 16-bit samples")
        return Audio(np.frombuffer(data, dtype=">i2").astype("<i2").tobytes(), rate)

    return decode


def _l16_encoder(rate: int) -> Callable[[Audio], bytes]:
    def encode(audio: Audio) -> bytes:
        return audio.resample(rate).array().astype(">i2").tobytes()

    return encode


@dataclass(frozen=True)
class Codec:
    """How one payload type maps to PCM (per Asterisk, which is what we talk to)."""

    payload_type: int
    name: str
    rate: int
    decode: Callable[[bytes], Audio]
    encode: Callable[[Audio], bytes]

    @property
    def frame_samples(self) -> int:
        return self.rate * FRAME_MS // 1000


# PT 10/11 are L16 at 44.1 kHz in RFC 3551; Asterisk uses them for 8 kHz slin
# (sends 10, accepts 10 and 11), and 118 is its own static choice for slin16.
CODECS: dict[int, Codec] = {
    codec.payload_type: codec
    for codec in (
        Codec(PT_PCMU, "ulaw", TELEPHONY_RATE, ulaw_decode, ulaw_encode),
        Codec(PT_PCMA, "alaw", TELEPHONY_RATE, alaw_decode, alaw_encode),
        Codec(PT_L16, "slin", TELEPHONY_RATE, _l16_decoder(8000), _l16_encoder(8000)),
        Codec(PT_L16_MONO, "slin", TELEPHONY_RATE, _l16_decoder(8000), _l16_encoder(8000)),
        Codec(PT_SLIN16, "slin16", WIDEBAND_RATE, _l16_decoder(16000), _l16_encoder(16000)),
    )
}


def codec_for(payload_type: int) -> Codec:
    codec = CODECS.get(payload_type)
    if codec is None:
        known = ", ".join(f"{pt} ({c.name})" for pt, c in CODECS.items())
        raise RtpError(f"unsupported payload type {payload_type}; known: {known}")
    return codec


def decode_payload(payload_type: int, payload: bytes) -> Audio:
    """PCM at the codec's own rate (8 kHz, or 16 kHz for PT 118)."""
    return codec_for(payload_type).decode(payload)


def encode_payload(payload_type: int, audio: Audio) -> bytes:
    """The audio (any rate) as the payload of this type."""
    return codec_for(payload_type).encode(audio)


def _kaiser_lowpass(taps: int, cutoff: float, beta: float) -> np.ndarray:
    """Windowed-sinc low-pass; cutoff in cycles per input sample, unity DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    return np.asarray(kernel / kernel.sum(), dtype=np.float64)


# 3.7 kHz at 16 kHz, ~70 dB stop band from ~4.1 kHz; 95 taps = 3 ms of delay.
_DECIMATE_TAPS = _kaiser_lowpass(95, 3700 / WIDEBAND_RATE, 7.0)


class HalfRateDecimator:
    """Streaming 16 kHz -> 8 kHz with an anti-alias FIR and state across packets.

    soxr's streaming resampler buffers ~100 ms before it emits anything,
    which would delay barge-in; per-packet batch resampling would click at
    every packet edge. This filter has 3 ms of delay and no edges.
    """

    def __init__(self) -> None:
        self._history = np.zeros(len(_DECIMATE_TAPS) - 1)
        self._phase = 0

    def process(self, audio: Audio) -> Audio:
        if not audio.samples:
            # np.convolve swaps its operands when the signal is shorter than the
            # kernel: an empty packet would come out as a sample of filter history.
            return Audio(b"", audio.rate // 2)
        samples = np.concatenate([self._history, audio.array().astype(np.float64)])
        filtered = np.convolve(samples, _DECIMATE_TAPS, mode="valid")
        self._history = samples[len(samples) - len(self._history) :]
        kept = filtered[self._phase :: 2]
        self._phase = (self._phase + audio.samples) % 2
        return Audio.from_array(kept, audio.rate // 2)


# --------------------------------------------------------------------------- sending state


class RtpSequencer:
    """Numbering of one outgoing stream: SSRC, sequence, timestamp, marker.

    Random SSRC, sequence and timestamp start (RFC 3550). Inside a talk spurt
    the timestamp advances by the samples sent; a new spurt sets the marker
    bit and advances the timestamp by the wall-clock gap as well, as
    Asterisk itself does.
    """

    def __init__(
        self,
        payload_type: int,
        rate: int,
        *,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.payload_type = payload_type
        self.rate = rate
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        self._sequence = secrets.randbits(16) if sequence is None else sequence
        self._timestamp = secrets.randbits(32) if timestamp is None else timestamp
        self._last: tuple[float, int] | None = None  # (send time, samples) of the last packet

    def next_packet(
        self, payload: bytes, samples: int, *, now: float, new_spurt: bool
    ) -> RtpPacket:
        if self._last is not None:
            sent_at, last_samples = self._last
            step = last_samples
            if new_spurt:
                step = max(step, round((now - sent_at) * self.rate))
            self._sequence = (self._sequence + 1) & 0xFFFF
            self._timestamp = (self._timestamp + step) & 0xFFFFFFFF
        self._last = (now, samples)
        return RtpPacket(
            marker=new_spurt,
            payload_type=self.payload_type,
            sequence=self._sequence,
            timestamp=self._timestamp,
            ssrc=self.ssrc,
            payload=payload,
        )


# --------------------------------------------------------------------------- receiving state


class SequenceTracker:
    """Drops duplicates and late (reordered) packets, counts gaps (after RFC 3550 A.1).

    Frames go to the endpointer as they arrive; a packet that arrives after
    a newer one is too late to be useful. A new SSRC, or a jump too big to be
    loss (the sender restarted its numbering), starts tracking afresh.
    """

    MAX_DROPOUT = 3000  # a minute of 20 ms packets
    MAX_MISORDER = 100

    def __init__(self) -> None:
        self._ssrc: int | None = None
        self._highest = 0

    def accept(self, packet: RtpPacket) -> tuple[bool, int]:
        """(deliver this packet?, packets missing just before it)."""
        ahead = (packet.sequence - self._highest) & 0xFFFF
        if packet.ssrc == self._ssrc and (ahead == 0 or ahead > 0x10000 - self.MAX_MISORDER):
            return False, 0
        in_order = packet.ssrc == self._ssrc and ahead < self.MAX_DROPOUT
        self._ssrc, self._highest = packet.ssrc, packet.sequence
        return True, ahead - 1 if in_order else 0


@dataclass
class RtpStats:
    """Counters for /metrics; all only ever increase."""

    datagrams_in: int = 0  # everything that arrived on the socket
    packets_in: int = 0  # RTP packets decoded into audio
    bytes_in: int = 0  # payload octets of packets_in
    malformed: int = 0  # datagrams that are not RTP, or payloads that do not decode
    unsupported: int = 0  # valid RTP with a payload type we do not decode (e.g. 101)
    foreign: int = 0  # packets from a source other than the remote (dropped when strict)
    late: int = 0  # duplicates and reordered packets, dropped
    lost: int = 0  # sequence gaps
    dropped: int = 0  # frames thrown away because the consumer fell behind
    packets_out: int = 0
    bytes_out: int = 0  # payload octets, like bytes_in
    send_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# --------------------------------------------------------------------------- playout

PlayoutReason = Literal["completed", "stopped", "replaced", "closed", "error"]
AudioSource = Audio | AsyncIterable[Audio]


@dataclass(frozen=True)
class PlayoutResult:
    """How a playout ended and how much of it went out.

    audio_s counts real audio (not the silence that pads out the last
    packet), so after a barge-in it says how much of the reply the caller heard.
    """

    reason: PlayoutReason
    packets: int
    audio_s: float
    error: BaseException | None = None


class Playout:
    """One piece of agent audio going out, paced at 20 ms; made by RtpEndpoint.play.

    `stop()` takes effect at once: no packet of this playout is sent after it
    returns. `await playout` gives the PlayoutResult once the last packet's
    20 ms have elapsed, or at once when stopped; it never raises -- a failing
    source ends with reason "error". Cancelling a task that awaits the
    playout stops it too: whoever waits for the audio owns it, so a cancelled
    turn cannot leave its reply playing. `result` is the PlayoutResult once
    it has ended (None before), for code that only peeks.
    """

    def __init__(self, endpoint: RtpEndpoint, source: AudioSource) -> None:
        loop = asyncio.get_running_loop()
        self._endpoint = endpoint
        self._codec = endpoint.codec
        self.packets = 0
        self._audio_samples = 0
        self._next_slot: float | None = None
        self._done: asyncio.Future[PlayoutResult] = loop.create_future()
        self._task = loop.create_task(self._run(source))

    @property
    def audio_s(self) -> float:
        """Real audio sent so far."""
        return self._audio_samples / self._codec.rate

    @property
    def active(self) -> bool:
        return not self._done.done()

    @property
    def result(self) -> PlayoutResult | None:
        return self._done.result() if self._done.done() else None

    def stop(self) -> None:
        """Barge-in: send nothing more. Idempotent."""
        self._halt("stopped")

    def __await__(self) -> Generator[Any, None, PlayoutResult]:
        return self._wait().__await__()

    async def _wait(self) -> PlayoutResult:
        try:
            # Shielded: one cancelled waiter must not cancel the result for the others.
            return await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.stop()
            raise

    def _halt(self, reason: PlayoutReason) -> None:
        if self._finish(reason):
            self._task.cancel()

    def _finish(self, reason: PlayoutReason, error: BaseException | None = None) -> bool:
        if self._done.done():
            return False
        self._done.set_result(PlayoutResult(reason, self.packets, self.audio_s, error))
        self._endpoint._playout_finished(self)
        return True

    async def _run(self, source: AudioSource) -> None:
        frames = _payload_frames(source, self._codec)
        try:
            async for payload, samples in frames:
                await self._send_on_schedule(payload, samples)
            if self._next_slot is not None:
                await _sleep_until(self._next_slot)
            self._finish("completed")
        except asyncio.CancelledError:
            self._finish("stopped")
            raise
        except Exception as exc:
            log.warning("agent audio source failed after %d packets: %r", self.packets, exc)
            self._finish("error", exc)
        finally:
            await frames.aclose()
            if isinstance(source, AsyncGenerator):
                await source.aclose()

    async def _send_on_schedule(self, payload: bytes, samples: int) -> None:
        """Send at start + n * 20 ms: sleeping to a fixed schedule never drifts."""
        loop = asyncio.get_running_loop()
        slot = self._next_slot
        new_spurt = slot is None or loop.time() - slot > MAX_LATENESS_S
        if slot is None or new_spurt:
            slot = loop.time()
        else:
            await _sleep_until(slot)
        if self._done.done():  # stopped while asleep: not one more packet
            return
        self._next_slot = slot + FRAME_MS / 1000
        if self._endpoint._send(
            payload, samples_in_packet=self._codec.frame_samples, spurt=new_spurt
        ):
            self.packets += 1
            self._audio_samples += samples


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _aiter_source(source: AudioSource) -> AsyncIterator[Audio]:
    if isinstance(source, Audio):
        yield source
    else:
        async for chunk in source:
            yield chunk


async def _payload_frames(
    source: AudioSource, codec: Codec
) -> AsyncGenerator[tuple[bytes, int], None]:
    """(payload, real samples) per 20 ms; chunks join seamlessly, the end is padded.

    Each chunk is resampled on its own (soxr, high quality), so a streaming
    source should yield sentence-sized chunks, not tiny slices.
    """
    size = codec.frame_samples * 2
    pending = b""
    async for chunk in _aiter_source(source):
        pending += chunk.resample(codec.rate).pcm
        whole = len(pending) - len(pending) % size
        for offset in range(0, whole, size):  # indexing, not re-slicing: long audio stays O(n)
            frame = Audio(pending[offset : offset + size], codec.rate)
            yield codec.encode(frame), codec.frame_samples
        pending = pending[whole:]
    if pending:
        padded = pending + bytes(size - len(pending))
        yield codec.encode(Audio(padded, codec.rate)), len(pending) // 2


# --------------------------------------------------------------------------- the endpoint


def _rejected(reason: str) -> None:
    """Count a datagram the endpoint dropped, for /metrics (per call, RtpStats has it too)."""
    metrics.REJECTED_INPUT.labels("rtp", reason).inc()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: RtpEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._endpoint._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) for what we sent: count, carry on.
        self._endpoint.stats.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._endpoint._on_connection_lost()


class RtpEndpoint:
    """The UDP socket one call's ExternalMedia channel talks to.

    Usage::

        endpoint = await RtpEndpoint.open("127.0.0.1")   # port 0: ephemeral
        # POST /channels/externalMedia?external_host={host}:{port}&format=ulaw
        endpoint.set_remote(vars["UNICASTRTP_LOCAL_ADDRESS"], int(vars["UNICASTRTP_LOCAL_PORT"]))
        async for frame in endpoint.frames():          # 20 ms, 8 kHz Audio
            ...
        playout = endpoint.play(reply_audio)           # paced 20 ms RTP, PT 0
        playout.stop()                                 # barge-in
        result = await playout                         # PlayoutResult
        endpoint.close(); await endpoint.wait_closed()

    One playout at a time: play() while another plays stops it (reason
    "replaced"), because two streams interleaved on one SSRC are never right.
    Create endpoints with `open()`, which binds the socket.
    """

    def __init__(
        self,
        *,
        payload_type: int = PT_PCMU,
        queue_frames: int = 50,
        strict_source: bool = False,
    ) -> None:
        if payload_type not in SENDABLE_PAYLOAD_TYPES:
            raise ValueError(
                f"payload type {payload_type} is not played by Asterisk; use one of"
                f" {sorted(SENDABLE_PAYLOAD_TYPES)} (PT 118 is silently dropped)"
            )
        if queue_frames < 1:
            raise ValueError("queue_frames must be at least 1")
        self.codec = CODECS[payload_type]
        self.stats = RtpStats()
        self.strict_source = strict_source
        self.remote_address: tuple[str, int] | None = None
        self.source_address: tuple[str, int] | None = None
        self._sequencer = RtpSequencer(payload_type, self.codec.rate)
        self._tracker = SequenceTracker()
        self._decimator = HalfRateDecimator()
        self._pending_pcm = b""
        self._queue: asyncio.Queue[Audio | None] = asyncio.Queue(queue_frames)
        self._transport: asyncio.DatagramTransport | None = None
        self._family = socket.AF_INET
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = False
        self._playout: Playout | None = None

    @classmethod
    async def open(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        payload_type: int = PT_PCMU,
        queue_frames: int = 50,
        strict_source: bool = False,
    ) -> RtpEndpoint:
        """Bind a UDP socket (port 0 = ephemeral); its address is the external_host.

        Bind the address Asterisk reaches us on: a wildcard (0.0.0.0) cannot
        be given to Asterisk as external_host.

        payload_type: what play() sends (0, 8, 10 or 11). queue_frames: frames
        kept for a slow consumer before the oldest are dropped (50 = 1 s).
        strict_source: drop packets that do not come from the remote address.
        """
        endpoint = cls(
            payload_type=payload_type, queue_frames=queue_frames, strict_source=strict_source
        )
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(endpoint), local_addr=(host, port)
        )
        endpoint._transport = transport
        endpoint._family = transport.get_extra_info("socket").family
        return endpoint

    @property
    def local_address(self) -> tuple[str, int]:
        """(host, port) this endpoint receives on: give it to Asterisk as external_host."""
        if self._transport is None:
            raise RuntimeError("endpoint is not open")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def playing(self) -> bool:
        return self._playout is not None

    def set_remote(self, host: str, port: int) -> None:
        """Where agent audio goes: Asterisk's UNICASTRTP_LOCAL_ADDRESS and _PORT.

        An IP literal is required: a hostname here would mean a blocking DNS
        lookup on every packet.
        """
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"remote host must be an IP address, got {host!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"remote port {port} out of range")
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        if family != self._family:
            raise ValueError(f"remote {host} is IPv{address.version}, the socket is not")
        self.remote_address = (str(address), port)

    # ---- receiving

    async def receive(self) -> Audio | None:
        """The next 20 ms 8 kHz frame, or None once closed (after queued frames)."""
        frame = await self._queue.get()
        if frame is None:
            self._queue.put_nowait(None)  # every later receive() also sees the end
        return frame

    async def frames(self) -> AsyncIterator[Audio]:
        """Every frame from the caller, until close()."""
        while (frame := await self.receive()) is not None:
            yield frame

    def _on_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        """Parse, decode and queue one datagram; nothing that arrives can raise here."""
        self.stats.datagrams_in += 1
        if self._closed:
            return
        try:
            self._accept(RtpPacket.parse(data), source)
        except RtpError:
            self.stats.malformed += 1
            _rejected("malformed")
        except Exception:  # a bug must cost one packet, never the call
            self.stats.malformed += 1
            _rejected("internal_error")
            log.exception("undecodable RTP datagram from %s:%d", *source)

    def _accept(self, packet: RtpPacket, source: tuple[str, int]) -> None:
        if self.remote_address is not None and source != self.remote_address:
            self.stats.foreign += 1
            if self.strict_source:
                _rejected("foreign_source")
                return
        if packet.payload_type not in CODECS:
            self.stats.unsupported += 1
            _rejected("unsupported_payload_type")
            return
        audio = packet.audio()
        deliver, missing = self._tracker.accept(packet)
        self.stats.lost += missing
        if not deliver:
            self.stats.late += 1
            return
        self.source_address = source
        self.stats.packets_in += 1
        self.stats.bytes_in += len(packet.payload)
        if audio.rate == WIDEBAND_RATE:
            audio = self._decimator.process(audio)
        self._reframe(audio.pcm)

    def _reframe(self, pcm: bytes) -> None:
        """Cut 8 kHz PCM into 20 ms frames whatever the packet sizes were."""
        size = TELEPHONY_RATE * FRAME_MS // 1000 * 2
        pending = self._pending_pcm + pcm
        whole = len(pending) - len(pending) % size
        for offset in range(0, whole, size):
            self._enqueue(Audio(pending[offset : offset + size], TELEPHONY_RATE))
        self._pending_pcm = pending[whole:]

    def _enqueue(self, frame: Audio) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.stats.dropped += 1
        self._queue.put_nowait(frame)

    # ---- sending

    def play(self, source: AudioSource) -> Playout:
        """Start sending audio (any rate; or an async iterable of chunks), paced at 20 ms.

        After close() this returns a playout that already ended with reason
        "closed" and sent nothing: audio that arrives after a hangup is no error.
        """
        if self.remote_address is None and not self._closed:
            raise RuntimeError("set_remote() first: there is nowhere to send agent audio")
        if self._playout is not None:
            self._playout._halt("replaced")
        playout = Playout(self, source)
        self._playout = playout
        if self._closed:
            playout._halt("closed")
        return playout

    async def send_audio(self, audio: AudioSource) -> PlayoutResult:
        """play() and wait for the end."""
        return await self.play(audio)

    def stop_playing(self) -> None:
        """Barge-in: stop whatever plays now (nothing more is sent)."""
        if self._playout is not None:
            self._playout.stop()

    def _playout_finished(self, playout: Playout) -> None:
        if self._playout is playout:
            self._playout = None

    def _send(self, payload: bytes, *, samples_in_packet: int, spurt: bool) -> bool:
        if self._closed or self._transport is None or self.remote_address is None:
            return False
        now = asyncio.get_running_loop().time()
        packet = self._sequencer.next_packet(payload, samples_in_packet, now=now, new_spurt=spurt)
        data = packet.encode()
        try:
            self._transport.sendto(data, self.remote_address)
        except OSError:
            self.stats.send_errors += 1
            return False
        self.stats.packets_out += 1
        self.stats.bytes_out += len(payload)
        return True

    # ---- lifetime

    def close(self) -> None:
        """Stop sending at once, end frames(), release the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._playout is not None:
            self._playout._halt("closed")
        if self._queue.full():
            self._queue.get_nowait()  # make room for the end marker; the call is over
        self._queue.put_nowait(None)
        if self._transport is not None:
            self._transport.close()
        else:
            self._on_connection_lost()

    async def wait_closed(self) -> None:
        """Returns once the socket is released (its port can be bound again)."""
        await asyncio.shield(self._lost)

    def _on_connection_lost(self) -> None:
        if not self._lost.done():
            self._lost.set_result(None)

    async def __aenter__(self) -> RtpEndpoint:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


__all__ = [
    "CODECS",
    "SENDABLE_PAYLOAD_TYPES",
    "Codec",
    "HalfRateDecimator",
    "Playout",
    "PlayoutResult",
    "RtpEndpoint",
    "RtpError",
    "RtpExtension",
    "RtpPacket",
    "RtpSequencer",
    "RtpStats",
    "SequenceTracker",
    "alaw_decode",
    "alaw_encode",
    "codec_for",
    "decode_payload",
    "encode_payload",
]
