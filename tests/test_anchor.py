"""Media mode "rtpengine": RtpEngineAnchor against the real rtpengine daemon.

Two real RtpEndpoints on 127.0.0.1 stand for the controller and for
Asterisk's ExternalMedia channel. Audio must cross rtpengine in both
directions, whoever speaks first, and each side must see rtpengine's port as
the source, never the other endpoint. The ng flags are proven by what they
prevent: a stray sender can neither inject audio nor hijack a leg. Errors
must come out as MediaAnchorError (so the controller falls back to direct
ExternalMedia), quickly when the daemon is down.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from support.rtpengine_proc import RtpEngineProcess
from vagent.services.audio import Audio
from vagent.services.bencode import decode
from vagent.services.call_controller.anchor import (
    ANCHOR_FLAGS,
    AnchoredMedia,
    MediaAnchorError,
    RtpEngineAnchor,
    build_sdp,
    parse_sdp_audio,
)
from vagent.services.call_controller.rtp import RtpEndpoint, RtpPacket
from vagent.services.resilience import ErrorKind, classify
from vagent.services.rtpengine import (
    RtpEngineClient,
    RtpEngineConnectionError,
    RtpEngineReplyError,
)

LOOPBACK = "127.0.0.1"
real_daemon = pytest.mark.slow


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
async def anchor(client: RtpEngineClient) -> RtpEngineAnchor:
    return RtpEngineAnchor(client)


@pytest.fixture
async def controller() -> AsyncIterator[RtpEndpoint]:
    async with await RtpEndpoint.open(LOOPBACK) as endpoint:
        yield endpoint


@pytest.fixture
async def asterisk() -> AsyncIterator[RtpEndpoint]:
    """Stands for the ExternalMedia channel: UNICASTRTP_LOCAL_ADDRESS:PORT."""
    async with await RtpEndpoint.open(LOOPBACK) as endpoint:
        yield endpoint


def tone(freq: float, seconds: float, amplitude: float) -> Audio:
    t = np.arange(round(seconds * 8000)) / 8000
    return Audio.from_array(amplitude * np.sin(2 * np.pi * freq * t), 8000)


def peak_hz(audio: Audio) -> float:
    spectrum = np.abs(np.fft.rfft(audio.array().astype(np.float64)))
    return float(np.fft.rfftfreq(audio.samples, 1 / audio.rate)[int(np.argmax(spectrum))])


async def collect(endpoint: RtpEndpoint, *, first_s: float = 3.0, quiet_s: float = 0.3) -> Audio:
    """Frames until the stream has been quiet for ``quiet_s``; nothing at all after ``first_s``."""
    frames: list[Audio] = []
    while True:
        try:
            frame = await asyncio.wait_for(endpoint.receive(), quiet_s if frames else first_s)
        except TimeoutError:
            break
        if frame is None:
            break
        frames.append(frame)
    return Audio(b"".join(f.pcm for f in frames), 8000)


async def anchor_call(
    anchor: RtpEngineAnchor, call_id: str, controller: RtpEndpoint, asterisk: RtpEndpoint
) -> AnchoredMedia:
    """What the controller does: offer, create the channel, answer, set_remote."""
    media = await anchor.open(call_id, controller.local_address)
    # Asterisk sends to external_host (and strict RTP accepts from it).
    asterisk.set_remote(*media.asterisk_facing)
    controller.set_remote(*await anchor.connect(media, asterisk.local_address))
    return media


def in_range(address: tuple[str, int] | None, proc: RtpEngineProcess) -> bool:
    return (
        address is not None
        and address[0] == LOOPBACK
        and (proc.port_min <= address[1] <= proc.port_max)
    )


def assert_same_audio(sent: Audio, received: Audio) -> None:
    assert abs(received.duration_s - sent.duration_s) <= 0.040, (
        received.duration_s,
        sent.duration_s,
    )
    assert received.rms() == pytest.approx(sent.rms(), rel=0.05)
    assert peak_hz(received) == pytest.approx(peak_hz(sent), abs=5)


# ------------------------------------------------------------------ media through rtpengine


@real_daemon
@pytest.mark.parametrize("first", ["controller", "asterisk"])
async def test_audio_crosses_rtpengine_both_ways_whoever_speaks_first(
    first: str,
    anchor: RtpEngineAnchor,
    rtpengine: RtpEngineProcess,
    controller: RtpEndpoint,
    asterisk: RtpEndpoint,
) -> None:
    media = await anchor_call(anchor, f"vagent-anchor-flow-{first}", controller, asterisk)
    assert in_range(media.asterisk_facing, rtpengine)
    assert in_range(media.app_facing, rtpengine)
    assert media.asterisk_facing != media.app_facing
    assert media.external_host == f"{LOOPBACK}:{media.asterisk_facing[1]}"

    agent = tone(440, 0.6, 6000)  # the controller's greeting
    caller = tone(1000, 0.5, 3000)  # the caller's speech
    order = [(controller, asterisk, agent), (asterisk, controller, caller)]
    if first == "asterisk":
        order.reverse()
    # The first speaker's audio must flow before the other side has sent a
    # packet: rtpengine must not wait to learn the silent peer.
    for sender, receiver, audio in order:
        receiving = asyncio.create_task(collect(receiver))
        result = await sender.play(audio)
        assert result.reason == "completed"
        assert_same_audio(audio, await receiving)

    # Each side heard rtpengine's port for its leg, never the other endpoint.
    assert controller.source_address == media.app_facing
    assert asterisk.source_address == media.asterisk_facing
    assert controller.source_address != asterisk.local_address
    assert asterisk.source_address != controller.local_address
    assert controller.stats.foreign == asterisk.stats.foreign == 0
    assert await anchor.close(media)


@real_daemon
async def test_a_stray_sender_can_neither_inject_nor_hijack(
    anchor: RtpEngineAnchor, controller: RtpEndpoint, asterisk: RtpEndpoint
) -> None:
    media = await anchor_call(anchor, "vagent-anchor-stray", controller, asterisk)
    assert media.app_facing is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
        stray.bind((LOOPBACK, 0))
        stray.setblocking(False)
        # Before Asterisk is bridged it sends nothing, so the stray speaks first
        # on both of rtpengine's ports; with endpoint learning this would take
        # over the Asterisk leg (measured), and without strict-source inject.
        for seq in range(10):
            packet = RtpPacket(
                payload_type=0, sequence=seq, timestamp=160 * seq, ssrc=7, payload=b"\x00" * 160
            )
            stray.sendto(packet.encode(), media.asterisk_facing)
            stray.sendto(packet.encode(), media.app_facing)
        await asyncio.sleep(0.1)

        agent = tone(440, 0.4, 6000)
        receiving = asyncio.create_task(collect(asterisk))
        await controller.play(agent)
        assert_same_audio(agent, await receiving)  # all of it reached Asterisk
        with pytest.raises(BlockingIOError):
            stray.recvfrom(2048)  # and none of it the stray
    assert controller.stats.datagrams_in == 0  # nothing injected towards the controller
    assert asterisk.stats.foreign == 0
    assert await anchor.close(media)


@real_daemon
async def test_every_stream_is_set_up_as_intended(
    anchor: RtpEngineAnchor, client: RtpEngineClient, controller: RtpEndpoint, asterisk: RtpEndpoint
) -> None:
    media = await anchor_call(anchor, "vagent-anchor-query", controller, asterisk)
    query = await client.request("query", call_id=media.call_id)
    tags: Any = query["tags"]
    assert set(tags) == {"vagent-app", "vagent-asterisk"}
    endpoints = set()
    for tag in tags.values():
        (audio,) = tag["medias"]
        assert audio["protocol"] == "RTP/AVP"  # no SRTP, no AVPF
        rtp = audio["streams"][0]
        assert "strict source address" in rtp["flags"]
        endpoints.add((rtp["endpoint"]["address"], rtp["endpoint"]["port"]))
    # rtpengine sends exactly where the SDPs said: the two endpoints.
    assert endpoints == {controller.local_address, asterisk.local_address}
    await anchor.close(media)


@real_daemon
async def test_open_and_connect_can_be_retried_and_keep_the_ports(
    anchor: RtpEngineAnchor, controller: RtpEndpoint, asterisk: RtpEndpoint
) -> None:
    first = await anchor.open("vagent-anchor-retry", controller.local_address)
    again = await anchor.open("vagent-anchor-retry", controller.local_address)
    assert again.asterisk_facing == first.asterisk_facing
    app_facing = await anchor.connect(first, asterisk.local_address)
    assert await anchor.connect(first, asterisk.local_address) == app_facing
    assert await anchor.close(first)


# ------------------------------------------------------------------ teardown


@real_daemon
async def test_close_deletes_the_call_and_is_idempotent(
    anchor: RtpEngineAnchor, client: RtpEngineClient, controller: RtpEndpoint, asterisk: RtpEndpoint
) -> None:
    media = await anchor_call(anchor, "vagent-anchor-close", controller, asterisk)
    assert (await client.request("query", call_id=media.call_id))["result"] == "ok"

    assert await anchor.close(media)
    assert media.closed
    assert await anchor.close(media)  # a second close is fine
    with pytest.raises(RtpEngineReplyError, match="Unknown call-id"):
        await client.request("query", call_id=media.call_id)

    # Deleted by someone else already (a second controller task, an operator):
    # still no error, and rtpengine really was asked.
    stale = AnchoredMedia(media.call_id, media.app_address, media.asterisk_facing)
    assert await anchor.close(stale) and stale.closed

    with pytest.raises(MediaAnchorError, match="already released"):
        await anchor.connect(media, asterisk.local_address)


class DefaultDeleteDelayDaemon(RtpEngineProcess):
    """The test daemon, but with rtpengine's default delete delay (30 s) as in production."""

    def command(self) -> list[str]:
        return [arg for arg in super().command() if not arg.startswith("--delete-delay")]


@real_daemon
async def test_close_frees_the_ports_at_once_whatever_the_daemon_delay(
    controller: RtpEndpoint,
) -> None:
    # A deleted call normally keeps its ports for the daemon's delete delay;
    # the anchor's delete-delay 0 frees them at once. With the delay, the
    # window of 50 port pairs (two per call) would run out after 25 calls.
    with DefaultDeleteDelayDaemon() as proc:
        async with RtpEngineClient.from_address(proc.ng_address, timeout_s=2.0) as ng:
            anchor = RtpEngineAnchor(ng)
            pairs = (proc.port_max - proc.port_min + 1) // 2
            for i in range(pairs // 2 + 5):
                media = await anchor.open(f"vagent-anchor-churn-{i}", controller.local_address)
                assert await anchor.close(media)
            with pytest.raises(RtpEngineReplyError, match="Unknown call-id"):
                await ng.request("query", call_id=media.call_id)


# ------------------------------------------------------------------ errors


@real_daemon
async def test_a_stopped_daemon_fails_open_fast_with_the_documented_error(
    controller: RtpEndpoint,
) -> None:
    with RtpEngineProcess() as proc:
        address = proc.ng_address
    async with RtpEngineClient.from_address(address, timeout_s=2.0) as ng:
        anchor = RtpEngineAnchor(ng)
        started = time.monotonic()
        with pytest.raises(MediaAnchorError, match="offer") as info:
            await anchor.open("vagent-anchor-down", controller.local_address)
        assert time.monotonic() - started < 1.0  # ICMP, not the 2 s timeout
        error = info.value
        assert isinstance(error.__cause__, RtpEngineConnectionError)
        assert error.transient and classify(error) is ErrorKind.TRANSIENT
        assert error.call_id == "vagent-anchor-down" and error.command == "offer"

        # Hangup cleanup against a dead daemon: reported, never raised, retryable.
        media = AnchoredMedia("vagent-anchor-down", controller.local_address, (LOOPBACK, 61000))
        assert await anchor.close(media) is False
        assert not media.closed


@real_daemon
async def test_answer_for_an_unknown_call_is_rejected(
    anchor: RtpEngineAnchor, controller: RtpEndpoint, asterisk: RtpEndpoint
) -> None:
    media = AnchoredMedia("vagent-anchor-never-offered", controller.local_address, (LOOPBACK, 1))
    with pytest.raises(MediaAnchorError, match="Unknown call-id") as info:
        await anchor.connect(media, asterisk.local_address)
    assert isinstance(info.value.__cause__, RtpEngineReplyError)
    assert not info.value.transient and classify(info.value) is ErrorKind.REJECTED
    assert not media.connected


@real_daemon
async def test_a_controller_leg_of_another_family_is_refused(
    anchor: RtpEngineAnchor, client: RtpEngineClient, asterisk: RtpEndpoint
) -> None:
    # The test daemon has an IPv4 interface only; rtpengine then answers an
    # IPv6 controller with an IPv4 port (and a log warning), which an IPv6
    # socket could not send to. That must fail, not yield a useless address.
    media = await anchor.open("vagent-anchor-v6", ("::1", 40000))
    with pytest.raises(MediaAnchorError, match="address family"):
        await anchor.connect(media, asterisk.local_address)
    assert await anchor.close(media)


async def test_cancelled_open_releases_the_call_in_the_background() -> None:
    """A hangup during setup cancels open(); the offer may have landed, so delete it."""
    received: list[dict[bytes, object]] = []

    class Silent(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            message = decode(data.split(b" ", 1)[1])
            assert isinstance(message, dict)
            received.append(message)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Silent, local_addr=(LOOPBACK, 0))
    port = transport.get_extra_info("sockname")[1]
    async with RtpEngineClient(LOOPBACK, port, timeout_s=0.3, resends=0) as ng:
        anchor = RtpEngineAnchor(ng)
        task = asyncio.create_task(anchor.open("vagent-anchor-cancel", (LOOPBACK, 40000)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await anchor.wait_cleanups()
    transport.close()
    commands = [(m[b"command"], m[b"call-id"]) for m in received]
    assert commands == [(b"offer", b"vagent-anchor-cancel"), (b"delete", b"vagent-anchor-cancel")]
    assert received[1][b"delete-delay"] == 0


# ------------------------------------------------------------------ SDP and flags


def test_offer_sdp_describes_one_pcmu_stream() -> None:
    sdp = build_sdp(("10.1.2.3", 40000))
    assert "c=IN IP4 10.1.2.3\r\n" in sdp and "m=audio 40000 RTP/AVP 0\r\n" in sdp
    assert "a=rtpmap:0 PCMU/8000\r\n" in sdp and "a=sendrecv\r\n" in sdp
    assert parse_sdp_audio(sdp) == (("10.1.2.3", 40000), [0])
    assert "c=IN IP6 2001:db8::7\r\n" in build_sdp(("2001:db8::7", 40000))
    assert AnchoredMedia("c", ("::1", 1), ("2001:db8::7", 62000)).external_host == (
        "[2001:db8::7]:62000"
    )


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (("asterisk.local", 40000), "not an IP address"),
        (("0.0.0.0", 40000), "wildcard"),
        (("::", 40000), "wildcard"),
        (("127.0.0.1", 0), "out of range"),
    ],
)
def test_addresses_an_sdp_cannot_carry_are_refused(address: tuple[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_sdp(address)


def test_media_level_connection_wins_over_session_level() -> None:
    sdp = (
        "v=0\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=video 62010 RTP/AVP 96\r\nc=IN IP4 192.0.2.7\r\n"
        "m=audio 62000 RTP/AVP 0 101\r\nc=IN IP4 192.0.2.9\r\n"
        "m=audio 62002 RTP/AVP 0\r\nc=IN IP4 192.0.2.5\r\n"
    )
    assert parse_sdp_audio(sdp) == (("192.0.2.9", 62000), [0, 101])
    # Without its own c=, the audio stream uses the session's, not the video's.
    no_media_c = sdp.replace("c=IN IP4 192.0.2.9\r\n", "")
    assert parse_sdp_audio(no_media_c) == (("192.0.2.1", 62000), [0, 101])


@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        ("v=0\r\nc=IN IP4 192.0.2.1\r\n", "no m=audio"),
        ("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 0 RTP/AVP 0\r\n", "rejected"),
        ("v=0\r\nm=audio 62000 RTP/AVP 0\r\n", "no c= address"),
        ("v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 62000 RTP/AVP 0\r\n", "wildcard"),
        ("v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 62000 RTP/AVP 8\r\n", "PCMU"),
        (None, "not text"),
    ],
)
def test_unusable_reply_sdps_are_explained(sdp: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sdp_audio(sdp)


def test_flags_keep_media_plain_and_unlearned() -> None:
    flags = ANCHOR_FLAGS["flags"]
    assert isinstance(flags, list)
    # The list form: rtpengine 10.5 ignores "endpoint-learning": "off" as a string.
    assert {"trust-address", "endpoint-learning-off", "strict-source"} <= set(flags)
    assert not {"NAT-wait", "asymmetric", "media-handover"} & set(flags)
    assert "endpoint-learning" not in ANCHOR_FLAGS
    assert ANCHOR_FLAGS["ICE"] == "remove" and ANCHOR_FLAGS["transport-protocol"] == "RTP/AVP"
