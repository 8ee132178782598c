"""Real RTP through the ARI double, checked against what Asterisk 22.10.1 did.

A fake app (plain UDP sockets on 127.0.0.1, REST over httpx) creates an
ExternalMedia channel, bridges it with a simulated inbound call and looks at
the packets, as the call controller will; every expectation comes from
ari-samples/rtp-notes.md, measurements.json or media-samples.json. Decoding
on the app side uses the product's G.711 code, so the double's codec and the
product's are checked against each other.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from websockets.sync.client import connect

from support.ari_double import AriDouble, DoubleConfig, PacketRecord
from support.ari_double.paths import samples_dir
from support.ari_double.payloads import alaw_decode, alaw_encode
from support.ari_double.payloads import ulaw_decode as double_ulaw_decode
from support.ari_double.payloads import ulaw_encode as double_ulaw_encode
from support.ari_double.rtp_wire import RtpHeader, pack_rtp, parse_rtp
from vagent.services.audio import Audio, read_wav, ulaw_decode, ulaw_encode, write_wav

LAB_AUTH = ("vagent", "CHANGEME")
#: Strict RTP learning window for this module (Asterisk's is 5 s; see DoubleConfig).
WINDOW = 0.6
SILENCE_ULAW = b"\xff" * 160
Int16 = npt.NDArray[np.int16]


# --- the fake app's socket ------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One datagram the app received, stamped on arrival with the monotonic clock."""

    time: float
    data: bytes
    source: tuple[str, int]

    @property
    def header(self) -> RtpHeader:
        return parse_rtp(self.data)[0]

    @property
    def payload(self) -> bytes:
        return parse_rtp(self.data)[1]


class AppSocket:
    """The app's end of the RTP: a UDP socket drained by a thread, so arrival
    times are not skewed by what the test thread is doing."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        host, port = self.sock.getsockname()
        self.address: tuple[str, int] = (str(host), int(port))
        self._arrivals: list[Arrival] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="fake-app-rtp", daemon=True)
        self._thread.start()

    @property
    def external_host(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._arrivals.append(Arrival(time.monotonic(), data, (source[0], source[1])))

    def received(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def wait_for(self, count: int, timeout: float = 3.0) -> list[Arrival]:
        wait_until(lambda: len(self.received()) >= count, timeout, f"{count} packets")
        return self.received()

    def send(self, datagram: bytes, port: int) -> None:
        self.sock.sendto(datagram, ("127.0.0.1", port))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


# --- helpers ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def external_media(http: httpx.Client, app: AppSocket, fmt: str = "ulaw") -> tuple[str, int]:
    """POST /channels/externalMedia toward ``app``: (channel id, UNICASTRTP_LOCAL_PORT)."""
    params = {"app": "vagent", "external_host": app.external_host, "format": fmt}
    body = http.post("/ari/channels/externalMedia", params=params).raise_for_status().json()
    return body["id"], int(body["channelvars"]["UNICASTRTP_LOCAL_PORT"])


def add_to_bridge(http: httpx.Client, bridge_id: str, *channels: str) -> None:
    params = {"channel": ",".join(channels)}
    http.post(f"/ari/bridges/{bridge_id}/addChannel", params=params).raise_for_status()


def new_bridge(http: httpx.Client, *channels: str) -> str:
    bridge_id: str = http.post("/ari/bridges", params={"type": "mixing"}).json()["id"]
    if channels:
        add_to_bridge(http, bridge_id, *channels)
    return bridge_id


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return pack_rtp(RtpHeader(pt, seq & 0xFFFF, ts, ssrc), payload)


def tone(freq: float, seconds: float, rate: int = 8000, amplitude: float = 8000.0) -> Int16:
    t = np.arange(round(seconds * rate)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def as_audio(samples: Int16, rate: int) -> Audio:
    return Audio(samples.astype("<i2").tobytes(), rate)


def dominant_hz(samples: Int16, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def rms(samples: Int16) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


def correlation(a: Int16, b: Int16) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def utterance_offset(received: Int16, said: Int16, frame: int) -> int:
    """Where ``said`` starts in ``received``: speech starts on a packet boundary."""
    starts = range(0, len(received) - len(said) + 1, frame)
    reference = said.astype(np.float64)
    scores = [float(np.dot(received[k : k + len(said)], reference)) for k in starts]
    return starts[int(np.argmax(scores))]


def burst(sock: AppSocket, port: int, count: int, seq: int, ssrc: int) -> None:
    """``count`` consecutive 20 ms ulaw tone packets."""
    frames = ulaw_encode(as_audio(tone(1000, 0.02 * count), 8000))
    for i in range(count):
        sock.send(rtp(0, seq + i, 160 * (i + 1), ssrc, frames[160 * i : 160 * (i + 1)]), port)


def wait_log(ari: AriDouble, channel_id: str, count: int) -> list[PacketRecord]:
    wait_until(lambda: len(ari.rtp_log(channel_id)) >= count, 3.0, f"{count} logged packets")
    return ari.rtp_log(channel_id)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_ari() -> Iterator[AriDouble]:
    """Real-time RTP; fast playbacks; a short strict-RTP window so cases B/C take < 1 s."""
    config = DoubleConfig(media_time_scale=0.1, strict_rtp_window=WINDOW)
    with AriDouble(config=config) as double:
        yield double


@pytest.fixture
def ari(shared_ari: AriDouble) -> Iterator[AriDouble]:
    shared_ari.reset()
    with connect(shared_ari.events_url(), max_queue=None):
        shared_ari.wait_for_app()
        yield shared_ari
    shared_ari.assert_no_violations()


@pytest.fixture
def http(ari: AriDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ari.base_url, auth=LAB_AUTH, timeout=5.0) as client:
        yield client


@pytest.fixture
def app() -> Iterator[AppSocket]:
    sock = AppSocket()
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def hello_wav() -> bytes:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return subprocess.run(
        ["espeak-ng", "--stdout", "hello"], check=True, capture_output=True
    ).stdout


# --- caller -> app ----------------------------------------------------------------------------


def test_caller_speech_reaches_the_app_as_asterisk_sends_it(
    ari: AriDouble, http: httpx.Client, app: AppSocket, hello_wav: bytes
) -> None:
    caller = ari.start_inbound_call(["inbound"], answered=True)
    media, port = external_media(http, app)
    bridge_id = new_bridge(http, caller)
    time.sleep(0.3)
    assert app.received() == [] and ari.rtp_sent(media) == []  # not bridged with the caller yet
    added = time.monotonic()
    add_to_bridge(http, bridge_id, media)
    app.wait_for(10)
    assert ari.say(caller, hello_wav) == pytest.approx(read_wav(hello_wav).duration_s)
    ari.wait_until_said(caller, timeout=5)
    time.sleep(0.2)
    ari.hangup(caller)
    sent = len(ari.rtp_sent(media))
    time.sleep(0.25)
    assert len(ari.rtp_sent(media)) == sent, "packets kept coming after the caller hung up"
    packets = app.wait_for(sent)
    assert len(packets) == sent

    # Who, when, how big (rtp-notes: first packet 17 ms after addChannel, from the local port).
    assert 0.0 < packets[0].time - added < 0.08
    assert {p.source for p in packets} == {("127.0.0.1", port)}
    assert {len(p.data) for p in packets} == {172}
    headers = [p.header for p in packets]
    assert {(h.version, h.padding, h.extension, h.csrc_count, h.payload_type) for h in headers} == {
        (2, False, False, 0, 0)
    }
    assert not any(h.marker for h in headers)
    assert len({h.ssrc for h in headers}) == 1
    assert all((b.sequence - a.sequence) % 65536 == 1 for a, b in itertools.pairwise(headers))
    assert headers[0].timestamp == 160
    assert all(b.timestamp - a.timestamp == 160 for a, b in itertools.pairwise(headers))
    gaps = [b.time - a.time for a, b in itertools.pairwise(packets)]
    assert 0.019 <= statistics.median(gaps) <= 0.021
    assert 0.0195 <= statistics.mean(gaps) <= 0.0205

    # Silence is real packets of 0xff, before and after the speech.
    payloads = [p.payload for p in packets]
    assert payloads[:8] == [SILENCE_ULAW] * 8 and payloads[-8:] == [SILENCE_ULAW] * 8

    # Decoding what arrived gives the speech back.
    received = ulaw_decode(b"".join(payloads)).array()
    spoken = read_wav(hello_wav).resample(8000).array()
    voiced_rx = np.flatnonzero(np.abs(received) >= 8)
    voiced_tx = np.flatnonzero(np.abs(spoken) >= 8)
    span_rx = (voiced_rx[-1] - voiced_rx[0] + 1) / 8000
    span_tx = (voiced_tx[-1] - voiced_tx[0] + 1) / 8000
    assert abs(span_rx - span_tx) <= 0.040
    offset = utterance_offset(received, spoken, 160)
    aligned = received[offset : offset + len(spoken)]
    assert correlation(aligned, spoken) > 0.99
    assert rms(aligned) == pytest.approx(rms(spoken), rel=0.03)
    assert all(p == SILENCE_ULAW for p in payloads[: offset // 160])

    [said] = ari.speech_log(caller)
    assert said.started_at is not None and said.finished_at is not None
    assert said.finished_at - said.started_at == pytest.approx(said.seconds, abs=0.04)


def test_no_packets_while_alone_or_before_the_caller_answers(
    ari: AriDouble, http: httpx.Client, app: AppSocket
) -> None:
    caller = ari.start_inbound_call(["inbound"])  # Dial()ed in: state Ring
    media, _ = external_media(http, app)
    bridge_id = new_bridge(http, media)
    time.sleep(0.2)
    assert app.received() == []  # alone in a bridge
    add_to_bridge(http, bridge_id, caller)
    time.sleep(0.2)
    assert app.received() == []  # a ringing phone sends no RTP
    http.post(f"/ari/channels/{caller}/answer").raise_for_status()
    assert len(app.wait_for(5)) >= 5


def test_leaving_the_bridge_stops_packets_and_the_restart_is_marked(
    ari: AriDouble, http: httpx.Client, app: AppSocket
) -> None:
    caller = ari.start_inbound_call(["inbound"], answered=True)
    media, _ = external_media(http, app)
    bridge_id = new_bridge(http, caller, media)
    app.wait_for(5)
    http.post(f"/ari/bridges/{bridge_id}/removeChannel", params={"channel": caller})
    sent = len(ari.rtp_sent(media))
    time.sleep(0.3)
    assert len(ari.rtp_sent(media)) == sent  # stopped at once
    add_to_bridge(http, bridge_id, caller)
    packets = app.wait_for(sent + 3)
    before, after = packets[sent - 1], packets[sent]
    assert after.header.marker and not packets[sent + 1].header.marker
    assert not any(p.header.marker for p in packets[:sent])
    assert after.header.ssrc == before.header.ssrc
    assert after.header.sequence == (before.header.sequence + 1) % 65536
    jump = (after.header.timestamp - before.header.timestamp) / 8000
    assert jump == pytest.approx(after.time - before.time, abs=0.05)  # about the wall-clock gap


def test_slin16_and_slin_channels_send_big_endian_linear(
    ari: AriDouble, http: httpx.Client, app: AppSocket, hello_wav: bytes
) -> None:
    speech = read_wav(hello_wav).resample(16000)
    narrow = AppSocket()
    try:
        caller = ari.start_inbound_call(["inbound"], answered=True)
        wide_id, _ = external_media(http, app, "slin16")
        narrow_id, _ = external_media(http, narrow, "slin")
        new_bridge(http, caller, wide_id, narrow_id)  # three parties: softmix
        app.wait_for(3)
        ari.say(caller, speech)  # an Audio this time, at 16 kHz
        ari.wait_until_said(caller)
        time.sleep(0.06)
        ari.hangup(caller)
        wide, slin = app.received(), narrow.received()
    finally:
        narrow.close()
    assert {(len(p.data), p.header.payload_type) for p in wide} == {(652, 118)}
    assert {(len(p.data), p.header.payload_type) for p in slin} == {(332, 10)}
    assert [p.header.timestamp for p in wide[:3]] == [320, 640, 960]
    assert [p.header.timestamp for p in slin[:3]] == [160, 320, 480]
    assert wide[0].header.ssrc != slin[0].header.ssrc
    for packets, rate in ((wide, 16000), (slin, 8000)):
        raw = b"".join(p.payload for p in packets)
        big = np.frombuffer(raw, dtype=">i2").astype(np.int16)
        said = speech.resample(rate).array()
        offset = utterance_offset(big, said, rate // 50)
        assert correlation(big[offset : offset + len(said)], said) > 0.99
        assert rms(big[offset : offset + len(said)]) == pytest.approx(rms(said), rel=0.02)
        little = np.frombuffer(raw, dtype="<i2").astype(np.int16)  # the wrong byte order
        assert abs(correlation(little[offset : offset + len(said)], said)) < 0.2
        if rate == 16000:  # a 16 kHz caller reaches a slin16 app bit-exact
            assert np.array_equal(big[offset : offset + len(said)], said)


# --- app -> double ------------------------------------------------------------------------------


def test_app_audio_is_decoded_by_payload_type_and_reaches_the_caller(
    ari: AriDouble, http: httpx.Client, app: AppSocket
) -> None:
    caller = ari.start_inbound_call(["inbound"], answered=True)
    media, port = external_media(http, app, "slin16")
    new_bridge(http, caller, media)
    ssrc = 0x5EED0001
    ulaw = ulaw_encode(as_audio(tone(1000, 0.4), 8000))
    for i in range(20):
        app.send(rtp(0, 100 + i, 160 * i, ssrc, ulaw[160 * i : 160 * (i + 1)]), port)
    wide = tone(1000, 0.2, rate=16000).astype(">i2").tobytes()
    for i in range(10):  # slin16 as Asterisk itself sends it: PT 118 is never decoded
        app.send(rtp(118, 120 + i, 320 * i, ssrc, wide[640 * i : 640 * (i + 1)]), port)
    alaw = alaw_encode(tone(500, 0.1))
    for i in range(5):
        app.send(rtp(8, 130 + i, 160 * i, ssrc, alaw[160 * i : 160 * (i + 1)]), port)
    linear = tone(2000, 0.1).astype(">i2").tobytes()
    for i in range(5):
        app.send(rtp(10, 135 + i, 160 * i, ssrc, linear[320 * i : 320 * (i + 1)]), port)
    app.send(b"hello", port)
    log = wait_log(ari, media, 41)

    assert [r.accepted for r in log] == [True] * 20 + [False] * 10 + [True] * 10 + [False]
    assert all("118" in r.reason and r.payload_type == 118 for r in log[20:30])
    assert "shorter than an RTP header" in log[-1].reason and log[-1].payload_type is None
    assert {r.source for r in log} == {app.address}
    assert [r.sequence for r in log[:40]] == list(range(100, 140))
    assert all(a.time <= b.time for a, b in itertools.pairwise(log))

    heard = ari.heard(media)
    assert heard.rate == 8000 and heard.samples == 30 * 160
    samples = heard.array()
    assert dominant_hz(samples[:3200], 8000) == pytest.approx(1000, abs=10)
    assert rms(samples[:3200]) == pytest.approx(8000 / np.sqrt(2), rel=0.03)
    assert dominant_hz(samples[3200:4000], 8000) == pytest.approx(500, abs=10)
    assert dominant_hz(samples[4000:], 8000) == pytest.approx(2000, abs=10)
    assert np.array_equal(ari.heard(caller).array(), samples)  # the caller heard it


# --- strict RTP (rtp-notes "Symmetric RTP / strict RTP", cases A, B, C) ---------------------


def test_strict_rtp_case_a_probation_then_external_host_at_once(
    ari: AriDouble, http: httpx.Client, app: AppSocket
) -> None:
    other = AppSocket()
    try:
        caller = ari.start_inbound_call(["inbound"], answered=True)
        media, port = external_media(http, app)
        new_bridge(http, caller, media)
        burst(other, port, 10, seq=1000, ssrc=0xAAAA0001)
        wait_log(ari, media, 10)
        burst(app, port, 5, seq=2000, ssrc=0xBBBB0002)
        log = wait_log(ari, media, 15)
        app.wait_for(5)
        assert other.received() == []  # Asterisk never follows the source address
    finally:
        other.close()
    created = log[0].time  # every packet came well inside the learning window
    assert log[-1].time - created < WINDOW / 2
    assert [r.accepted for r in log[:10]] == [False] * 4 + [True] * 6
    assert all("probation" in r.reason for r in log[:4])
    assert all(r.accepted for r in log[10:])  # external_host, even after another was learned


def test_strict_rtp_case_b_source_locks_after_the_window(
    ari: AriDouble, http: httpx.Client, app: AppSocket
) -> None:
    other = AppSocket()
    try:
        media, port = external_media(http, app)
        burst(app, port, 3, seq=10, ssrc=0xCCCC0003)
        time.sleep(WINDOW + 0.1)
        burst(app, port, 3, seq=13, ssrc=0xCCCC0003)
        wait_log(ari, media, 6)
        burst(other, port, 10, seq=500, ssrc=0xDDDD0004)
        burst(other, port, 5, seq=16, ssrc=0xCCCC0003)
        log = wait_log(ari, media, 21)
    finally:
        other.close()
    assert all(r.accepted for r in log[:6])
    assert not any(r.accepted for r in log[6:])
    assert all(r.reason == f"strict RTP: source locked to {app.external_host}" for r in log[6:])
    assert ari.heard(media).samples == 6 * 160


def test_strict_rtp_case_c_late_stranger_gets_locked_in(
    ari: AriDouble, http: httpx.Client, app: AppSocket
) -> None:
    other = AppSocket()
    try:
        media, port = external_media(http, app)
        time.sleep(WINDOW + 0.1)
        burst(other, port, 10, seq=7000, ssrc=0xEEEE0005)
        wait_log(ari, media, 10)
        burst(app, port, 5, seq=100, ssrc=0xFFFF0006)
        log = wait_log(ari, media, 15)
        stranger = other.external_host
    finally:
        other.close()
    assert [r.accepted for r in log[:10]] == [False] * 4 + [True] * 6
    assert all(r.reason == f"strict RTP: source locked to {stranger}" for r in log[10:])
    assert ari.heard(media).samples == 6 * 160


# --- playbacks ------------------------------------------------------------------------------------


def test_playbacks_on_the_caller_are_logged_and_stoppable(
    ari: AriDouble, http: httpx.Client
) -> None:
    caller = ari.start_inbound_call(["inbound"], answered=True)
    spelled = http.post(f"/ari/channels/{caller}/play", params={"media": "characters:hello"})
    spelled_id = spelled.json()["id"]

    def about(playback_id: str) -> Callable[[dict[str, Any]], bool]:
        return lambda event: bool(event["playback"]["id"] == playback_id)

    ari.wait_for_event("PlaybackStarted", predicate=about(spelled_id))
    assert http.delete(f"/ari/playbacks/{spelled_id}").status_code == 204
    stopped = ari.wait_for_event("PlaybackFinished", predicate=about(spelled_id))
    assert stopped["playback"]["state"] == "done"
    beep_id = http.post(f"/ari/channels/{caller}/play", params={"media": "sound:beep"}).json()["id"]
    ari.wait_for_event("PlaybackFinished", predicate=about(beep_id))

    spelled_record, beep_record = ari.playback_log(caller)
    assert spelled_record.media == ["characters:hello"] and spelled_record.stopped
    assert spelled_record.state == "done"
    assert spelled_record.started_at is not None and spelled_record.finished_at is not None
    assert spelled_record.started_at <= spelled_record.finished_at
    assert beep_record.media == ["sound:beep"] and not beep_record.stopped
    assert beep_record.state == "done" and beep_record.started_at is not None
    assert beep_record.finished_at is not None
    assert beep_record.finished_at - beep_record.started_at >= 0.425 * 0.1 - 0.005
    assert [uri for _, uri in beep_record.started] == ["sound:beep"]


# --- wire format and codecs against the captures ------------------------------------------------


def test_headers_and_silence_match_the_captured_packets() -> None:
    samples = json.loads((samples_dir() / "media-samples.json").read_text())
    silence = np.zeros(160, dtype=np.int16)
    sizes = {"rtp_ulaw": 160, "rtp_alaw": 160, "rtp_slin": 320, "rtp_slin16": 640}
    for name, payload_size in sizes.items():
        for packet in samples[name]["packets"]:
            captured = bytes.fromhex(packet["hex"])
            fields = packet["header"]
            ours = pack_rtp(
                RtpHeader(fields["pt"], fields["seq"], fields["ts"], fields["ssrc"]), b""
            )
            assert captured[:12] == ours, name
            header, payload = parse_rtp(captured)
            assert (header.payload_type, header.sequence, len(payload)) == (
                fields["pt"],
                fields["seq"],
                payload_size,
            )
    ulaw_silence = bytes.fromhex(samples["rtp_ulaw"]["packets"][0]["hex"])[12:16]
    assert double_ulaw_encode(silence)[:4] == ulaw_silence == b"\xff" * 4
    alaw_silence = bytes.fromhex(samples["rtp_alaw"]["packets"][0]["hex"])[12:16]
    assert alaw_encode(silence)[:4] == alaw_silence


def test_g711_agrees_with_the_product_and_the_reference_points() -> None:
    every_code = bytes(range(256))
    assert np.array_equal(double_ulaw_decode(every_code), ulaw_decode(every_code).array())
    every_sample = np.arange(-32768, 32768, dtype=np.int16)
    assert double_ulaw_encode(every_sample) == ulaw_encode(as_audio(every_sample, 8000))
    reference = {0xD5: 8, 0x55: -8, 0xAA: 32256, 0x2A: -32256}  # G.711 table A.2 ends
    assert [int(v) for v in alaw_decode(bytes(reference))] == list(reference.values())
    error = np.abs(alaw_decode(alaw_encode(every_sample)).astype(np.int32) - every_sample)
    assert int(error.max()) <= 1024  # the top A-law segment step


# --- the control API carries the same media calls -----------------------------------------------


def test_media_over_the_control_http_api(
    ari: AriDouble, http: httpx.Client, app: AppSocket, hello_wav: bytes
) -> None:
    caller = ari.start_inbound_call(["inbound"], answered=True)
    media, port = external_media(http, app)
    new_bridge(http, caller, media)
    with httpx.Client(base_url=f"{ari.base_url}/_double", timeout=5) as control:
        assert control.get("/media_channels").json() == [media]
        wav = base64.b64encode(write_wav(read_wav(hello_wav))).decode()
        said = control.post(f"/calls/{caller}/say", json={"wav_base64": wav})
        assert said.json()["seconds"] == pytest.approx(read_wav(hello_wav).duration_s)
        wait_until(
            lambda: control.get(f"/channels/{caller}/speech").json()[0]["finished_at"] is not None,
            timeout=5,
            what="the caller to finish",
        )
        burst(app, port, 3, seq=1, ssrc=7)
        wait_until(lambda: len(control.get(f"/channels/{media}/rtp_log").json()) == 3)
        heard = control.get(f"/channels/{media}/heard").json()
        assert heard["rate"] == 8000 and len(base64.b64decode(heard["pcm_base64"])) == 3 * 320
        sent = control.get(f"/channels/{media}/rtp_sent").json()
        assert sent and sent[0]["timestamp"] == 160 and sent[0]["size"] == 172
        assert control.get("/channels/nope/rtp_log").status_code == 404
