"""The ARI test double against what real Asterisk 22.10.1 did (ari-samples/).

Most tests replay captured exchanges from rest.jsonl (same request -> same
status, content type and body) or compare event key structure, key order
included, with captured events from events.jsonl.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from support.ari_double import AppNotRegistered, AriDouble, DoubleConfig, DoubleViolations
from support.ari_double.handlers import HANDLERS
from support.ari_double.params import c_atoi, c_true, separate_args
from support.ari_double.paths import samples_dir, shared_dir
from support.ari_double.swagger import default_spec

SAMPLES = samples_dir()
REST = [json.loads(line) for line in (SAMPLES / "rest.jsonl").read_text().splitlines()]
EVENTS = [json.loads(line) for line in (SAMPLES / "events.jsonl").read_text().splitlines()]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
CHANNEL_ID = re.compile(r"^vagent-lab-\d+\.\d+$")
LAB_AUTH = ("vagent", "CHANGEME")


def rest_line(number: int) -> dict[str, Any]:
    """rest.jsonl is numbered from 1 in events-index.md and the README."""
    return REST[number - 1]


def event_line(number: int) -> dict[str, Any]:
    return EVENTS[number - 1]


def shape(value: Any) -> Any:
    """Key structure, order included: dict -> [(key, shape)], scalars -> type name."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return "list"
    return type(value).__name__


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_ari() -> Iterator[AriDouble]:
    """One server for the module (stopping uvicorn costs ~0.2 s); reset per test."""
    config = DoubleConfig(media_time_scale=0.02)
    with AriDouble(config=config, fail_on_violations=False) as double:
        yield double


@pytest.fixture
def ari(shared_ari: AriDouble) -> AriDouble:
    shared_ari.reset()
    return shared_ari


@pytest.fixture
def client(ari: AriDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ari.base_url, auth=LAB_AUTH, timeout=5.0) as http:
        yield http


class EventStream:
    """A connected events websocket with small reading helpers."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def next(self, timeout: float = 2.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        return event

    def until(self, event_type: str, timeout: float = 2.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            if event["type"] == event_type:
                return event

    def take(self, count: int, timeout: float = 2.0) -> list[dict[str, Any]]:
        return [self.next(timeout) for _ in range(count)]

    def quiet(self, timeout: float = 0.2) -> list[dict[str, Any]]:
        """Everything that arrives until ``timeout`` passes without an event."""
        seen = []
        try:
            while True:
                seen.append(self.next(timeout))
        except TimeoutError:
            return seen


@pytest.fixture
def events(ari: AriDouble) -> Iterator[EventStream]:
    with connect(ari.events_url(), max_queue=None) as ws:
        ari.wait_for_app()
        yield EventStream(ws)


def replay(
    http: httpx.Client, number: int, ids: dict[str, str] | None = None, **kwargs: Any
) -> tuple[dict[str, Any], httpx.Response]:
    """Send the request of rest.jsonl line ``number`` (sample ids -> our ids)."""
    sample = rest_line(number)
    text = json.dumps({"path": sample["path"], "query": sample["query"]})
    for old, new in (ids or {}).items():
        text = text.replace(old, new)
    request = json.loads(text)
    response = http.request(
        sample["method"],
        request["path"],
        params=request["query"],
        json=sample.get("request_body"),
        **kwargs,
    )
    return sample, response


def expected_body(sample: dict[str, Any], ids: dict[str, str] | None) -> Any:
    text = json.dumps(sample["response_body"])
    for old, new in (ids or {}).items():
        text = text.replace(old, new)
    return json.loads(text)


def assert_replay(
    http: httpx.Client,
    number: int,
    ids: dict[str, str] | None = None,
    *,
    exact: bool = True,
    **kwargs: Any,
) -> httpx.Response:
    """Same status, same content type, same body (or same key structure)."""
    sample, response = replay(http, number, ids, **kwargs)
    where = f"rest.jsonl:{number} {sample['method']} {sample['path']}"
    assert response.status_code == sample["status"], (where, response.text)
    assert response.headers.get("content-type") == sample["response_headers"]["content-type"], where
    if sample["status"] == 204:
        assert response.content == b"", where
    elif exact:
        assert response.json() == expected_body(sample, ids), where
    else:
        assert shape(response.json()) == shape(sample["response_body"]), where
    return response


# --- reference data and building blocks ------------------------------------------------------


def test_shared_dir_follows_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VAGENT_SHARED_DIR", raising=False)
    assert shared_dir() == Path(__file__).resolve().parents[1].parent / "shared"
    monkeypatch.setenv("VAGENT_SHARED_DIR", str(tmp_path))
    assert shared_dir() == tmp_path
    assert samples_dir() == tmp_path / "ari-samples"


def test_every_handler_is_a_swagger_operation() -> None:
    keys = {operation.key for operation in default_spec().operations}
    assert set(HANDLERS) <= keys


def test_router_prefers_literal_segments_like_asterisk() -> None:
    spec = default_spec()
    literal = spec.resolve("channels/externalMedia")
    wildcard = spec.resolve("channels/vagent-lab-1.0/answer")
    assert literal is not None and set(literal.node.operations) == {"POST"}
    assert wildcard is not None and wildcard.path_vars == {"channelId": "vagent-lab-1.0"}
    assert spec.resolve("no/such/resource") is None
    assert literal.node.allow_header() == "OPTIONS,POST"


def test_parameters_are_decoded_with_c_semantics() -> None:
    assert [c_atoi("12"), c_atoi(" 7x"), c_atoi("abc"), c_atoi("-3")] == [12, 7, 0, -3]
    assert [c_true("yes"), c_true("on"), c_true("1"), c_true("false"), c_true(None)] == [
        True, True, True, False, False,
    ]  # fmt: skip
    assert separate_args("sound:beep,digits:7,sound:beep") == [
        "sound:beep",
        "digits:7",
        "sound:beep",
    ]
    assert separate_args('a,"b,c",d(1,2)') == ["a", "b,c", "d(1,2)"]
    assert separate_args("") == [""] and separate_args("a,") == ["a", ""]


# --- REST replays ----------------------------------------------------------------------------

STATELESS_EXACT = [
    2, 6, 7, 30, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223, 225, 226, 227, 237, 244,
    245, 246, 247, 248, 249, 250, 251, 269,
]  # fmt: skip


@pytest.mark.parametrize("number", STATELESS_EXACT)
def test_replay_stateless_exchanges(client: httpx.Client, number: int) -> None:
    assert_replay(client, number)


def test_asterisk_info_has_exactly_the_sample_keys(client: httpx.Client) -> None:
    response = assert_replay(client, 1, exact=False)
    info = response.json()
    assert info["system"] == rest_line(1)["response_body"]["system"]
    assert TIMESTAMP.match(info["status"]["startup_time"])
    assert_replay(client, 212, exact=False, auth=None)  # api_key query credentials
    ping = client.get("/ari/asterisk/ping").json()
    assert shape(ping) == shape(rest_line(3)["response_body"]) and TIMESTAMP.match(
        ping["timestamp"]
    )


def test_applications_replay_with_a_connected_app(
    client: httpx.Client, events: EventStream
) -> None:
    assert_replay(client, 4)
    assert_replay(client, 5)


def test_bridge_exchanges(client: httpx.Client) -> None:
    created = assert_replay(client, 238, exact=False).json()
    ids = {"b23d7375-7c6c-412f-a24c-081a4717a562": created["id"]}
    assert created["technology"] == "simple_bridge" and created["name"] == ""
    for number in (239, 240, 241, 243):
        assert_replay(client, number, ids)
    assert_replay(client, 94, exact=False)
    assert_replay(client, 96)  # duplicate bridgeId -> 409
    assert_replay(client, 97)
    fixed = client.post("/ari/bridges/lab-bridge-fixed-id", params=rest_line(99)["query"])
    expected = dict(rest_line(99)["response_body"], creationtime=fixed.json()["creationtime"])
    assert fixed.status_code == 200 and fixed.json() == expected


def test_channel_exchanges_on_an_inbound_call(
    ari: AriDouble, client: httpx.Client, events: EventStream
) -> None:
    channel_id = ari.start_inbound_call(["inbound", "100"], answered=True)
    ids = {"vagent-lab-1795950775.0": channel_id, "vagent-lab-1795950954.75": channel_id}
    for number in (13, 14, 15, 16, 17, 18, 22, 24, 25, 26, 253, 254, 255, 260, 261):
        assert_replay(client, number, ids)
    multi = assert_replay(client, 27, ids, exact=False).json()
    assert (multi["media_uri"], multi["next_media_uri"]) == ("sound:beep", "digits:7")
    repeated = assert_replay(client, 28, ids, exact=False).json()
    assert repeated["media_uri"] == "digits:2"  # repeated media=: only the last one counts
    assert any("given 2 times" in v.message for v in ari.violations)
    assert_replay(client, 262, ids)  # hangup with reason_code
    assert_replay(client, 67, ids)  # already gone -> 404


def test_continue_then_not_in_stasis(
    ari: AriDouble, client: httpx.Client, events: EventStream
) -> None:
    channel_id = ari.start_inbound_call(["inbound"], answered=True)
    ids = {"vagent-lab-1795950835.17": channel_id, "lab-sub-67b8ff4f-2": channel_id}
    events.until("StasisStart")
    assert_replay(client, 82, ids)
    assert events.until("StasisEnd")["channel"]["id"] == channel_id
    for number in (84, 85, 94, 95, 97):
        assert_replay(client, number, ids, exact=number != 94)
    assert client.get(f"/ari/channels/{channel_id}").status_code == 200
    assert_replay(client, 86, ids)
    assert events.quiet() == []  # a dialplan channel's subscription ended with StasisEnd


def test_external_media_exchanges(
    ari: AriDouble, client: httpx.Client, events: EventStream
) -> None:
    channel = assert_replay(client, 108, exact=False).json()
    assert channel["state"] == "Down" and CHANNEL_ID.match(channel["id"])
    assert channel["name"].startswith("UnicastRTP/127.0.0.1:40010-0x")
    port = channel["channelvars"]["UNICASTRTP_LOCAL_PORT"]
    assert int(port) % 2 == 0 and channel["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"] == "127.0.0.1"
    ids = {"vagent-lab-1795950844.26": channel["id"], "10534": port}
    for number in (109, 110):
        assert_replay(client, number, ids)
    assert_replay(client, 111, ids, exact=False)
    received = events.take(5)
    assert [shape(e) for e in received] == [shape(event_line(n)) for n in range(167, 172)]
    assert received[-1]["channel"]["state"] == "Up" and received[-1]["args"] == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # the port really listens
        udp.connect(("127.0.0.1", int(port)))
        udp.send(bytes([0x80, 0x00]) + bytes(10) + b"\xff" * 160)
    deadline = time.monotonic() + 2
    while not ari.rtp_received(channel["id"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.payload_type for p in ari.rtp_received(channel["id"])] == [0]
    slin = client.post("/ari/channels/externalMedia", params=rest_line(139)["query"]).json()
    assert_replay(client, 146, {"vagent-lab-1795950870.38": slin["id"]})
    client.delete(f"/ari/channels/{slin['id']}")
    assert_replay(client, 147, {"vagent-lab-1795950859.35": slin["id"]})


def test_unimplemented_operations_answer_501(client: httpx.Client) -> None:
    response = client.get("/ari/recordings/stored/no-such-recording")
    assert response.status_code == 501
    assert "ARI double does not implement GET /ari/recordings/stored" in response.json()["message"]
    assert client.get("/ari/endpoints").status_code == 501


def test_swagger_violations_are_recorded_but_answered_like_asterisk(
    client: httpx.Client, ari: AriDouble
) -> None:
    response = client.get("/ari/asterisk/info", params={"only": "system", "bogus": "1"})
    assert response.status_code == 200  # Asterisk ignores unknown parameters
    client.post("/ari/bridges/x/addChannel", params={"channel": "y", "absorbDTMF": "maybe"})
    messages = [v.message for v in ari.violations]
    assert any("unknown query parameter 'bogus'" in m for m in messages)
    assert any("'absorbDTMF' must be true or false" in m for m in messages)
    with pytest.raises(DoubleViolations), AriDouble() as strict:
        httpx.get(f"{strict.ari_url}/asterisk/ping", params={"x": "1"}, auth=LAB_AUTH)


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "auth"),
    [(209, ("vagent", "wrong")), (210, ("nobody", "CHANGEME")), (211, None), (213, None)],
)
def test_replay_authentication_failures(
    client: httpx.Client, number: int, auth: tuple[str, str] | None
) -> None:
    response = assert_replay(client, number, auth=auth)
    assert response.headers["www-authenticate"] == 'Basic realm="Asterisk REST Interface"'


def test_rest_401_is_byte_identical_to_asterisk(ari: AriDouble) -> None:
    request = "GET /ari/asterisk/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    raw = raw_exchange(ari.port, request, wait=0.2)
    assert normalized(raw) == normalized(rest_line(270)["raw_response"])


def test_basic_header_wins_over_api_key_and_faults_refuse(ari: AriDouble) -> None:
    url = f"{ari.ari_url}/asterisk/ping"
    good = {"api_key": "vagent:CHANGEME"}
    assert httpx.get(url, params=good).status_code == 200
    assert httpx.get(url, params=good, auth=("vagent", "bad")).status_code == 401
    ari.refuse_credentials(True)
    assert httpx.get(url, params=good).json() == {"message": "Authentication required"}
    ari.refuse_credentials(False)
    assert httpx.get(url, params=good).status_code == 200


def test_read_only_user_and_disabled_ari() -> None:
    with AriDouble(config=DoubleConfig(read_only=True)) as double:
        url = double.ari_url
        assert httpx.get(f"{url}/bridges", auth=LAB_AUTH).status_code == 200
        denied = httpx.post(f"{url}/bridges", auth=LAB_AUTH)
        assert (denied.status_code, denied.json()) == (403, {"message": "Write access denied"})
        with connect(double.events_url()):  # read-only users may still open the websocket
            double.wait_for_app()
    with AriDouble(config=DoubleConfig(ari_enabled=False)) as disabled:  # enabled = no
        page = httpx.get(f"{disabled.ari_url}/asterisk/info", auth=LAB_AUTH)
        assert page.status_code == 404 and "<title>404 Not Found</title>" in page.text


# --- the events websocket --------------------------------------------------------------------


def raw_exchange(port: int, request: str, wait: float = 0.5) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request.encode())
        sock.settimeout(wait)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return data


def upgrade_request(query: str, extra: str = "") -> str:
    return (
        f"GET /ari/events{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )


def normalized(raw: bytes | str) -> str:
    """Date and uvicorn's added ``Connection: close`` are not part of the comparison."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    text = re.sub(r"Date: [^\r]+\r\n", "Date: *\r\n", text)
    return text.replace("Connection: close\r\n", "")


def test_upgrade_without_app_sends_both_responses_like_asterisk(ari: AriDouble) -> None:
    for number, query in (
        (273, "?api_key=vagent:CHANGEME"),
        (274, "?app=&api_key=vagent:CHANGEME"),
    ):
        raw = raw_exchange(ari.port, upgrade_request(query))
        assert normalized(raw) == normalized(rest_line(number)["raw_response"])


def test_upgrade_errors(ari: AriDouble) -> None:
    unauthorized = raw_exchange(ari.port, upgrade_request("?app=vagent&api_key=vagent:wrongpass"))
    assert normalized(unauthorized) == normalized(rest_line(270)["raw_response"])
    bogus_protocol = upgrade_request(
        "?app=x&api_key=vagent:CHANGEME", "Sec-WebSocket-Protocol: x\r\n"
    )
    protocol = raw_exchange(ari.port, bogus_protocol)
    head = normalized(protocol).split("\r\n")
    assert head[0] == "HTTP/1.1 400 Bad Request" and "Sec-WebSocket-Version: 7, 8, 13" in head
    assert protocol.endswith(b"\r\n\r\n")  # empty body
    accepted = raw_exchange(ari.port, upgrade_request("?app=vagent-probe&api_key=vagent:CHANGEME"))
    assert accepted.decode() == rest_line(276)["raw_response"]
    plain = httpx.get(f"{ari.ari_url}/events", params={"app": "vagent"}, auth=LAB_AUTH)
    assert (plain.status_code, plain.text) == (426, rest_line(277)["response_body"])
    journaled = [(r.kind, r.status) for r in ari.requests]
    assert journaled == [("websocket", 401), ("websocket", 400), ("websocket", 101), ("rest", 426)]


def test_application_replaced(ari: AriDouble, client: httpx.Client) -> None:
    with connect(ari.events_url(), max_queue=None) as first:
        ari.wait_for_app()
        with connect(ari.events_url(), max_queue=None) as second:
            replaced = json.loads(first.recv(timeout=2))
            assert shape(replaced) == shape(event_line(702))
            assert replaced["application"] == "vagent"
            channel_id = ari.start_inbound_call(["inbound"])
            assert json.loads(second.recv(timeout=2))["type"] == "StasisStart"
            with pytest.raises(TimeoutError):
                first.recv(timeout=0.3)
            client.delete(f"/ari/channels/{channel_id}")  # as the lab did (rest.jsonl 280)
        time.sleep(0.1)
        assert_replay(client, 281)  # the app is gone although `first` is still open
        assert ari.requests[-1].status == 404
    with pytest.raises(AppNotRegistered):
        ari.start_inbound_call()


def test_non_json_frame_gets_a_rest_response_error(ari: AriDouble, events: EventStream) -> None:
    events.ws.send("this is not json")
    reply = events.next()
    assert shape(reply) == shape(event_line(701))
    assert (reply["status_code"], reply["transaction_id"]) == (400, "")


# --- call flow events ------------------------------------------------------------------------


@pytest.mark.parametrize(("answered", "reference"), [(False, 87), (True, 83)])
def test_inbound_stasis_start_matches_the_sample(
    ari: AriDouble, events: EventStream, answered: bool, reference: int
) -> None:
    channel_id = ari.start_inbound_call(["inbound", "100"], caller="1001", answered=answered)
    start = events.next()
    sample = event_line(reference)
    assert shape(start) == shape(sample)
    assert list(start) == list(sample) and list(start["channel"]) == list(sample["channel"])
    assert start["channel"]["state"] == sample["channel"]["state"]
    assert start["args"] == ["inbound", "100"] and start["channel"]["id"] == channel_id
    assert start["channel"]["dialplan"]["app_data"] == "vagent,inbound,100"
    assert CHANNEL_ID.match(channel_id) and TIMESTAMP.match(start["timestamp"])
    assert start["asterisk_id"] == "02:fc:00:00:00:01"


def test_far_end_hangup_sequence(ari: AriDouble, events: EventStream) -> None:
    channel_id = ari.start_inbound_call(["inbound"])
    events.until("StasisStart")
    ari.hangup(channel_id)
    request, end = events.take(2)
    assert shape(request) == shape(event_line(85)) and request["cause"] == 16
    assert shape(end) == shape(event_line(86))
    assert events.quiet() == []  # no ChannelDestroyed for a dialplan Stasis channel


def test_app_hangup_and_bridge_sequence(
    ari: AriDouble, client: httpx.Client, events: EventStream
) -> None:
    inbound = ari.start_inbound_call(["inbound"])
    events.until("StasisStart")
    assert client.post(f"/ari/channels/{inbound}/answer").status_code == 204
    assert shape(events.next()) == shape(event_line(88))  # ChannelStateChange to Up
    bridge = client.post("/ari/bridges", params={"type": "mixing"}).json()
    media = client.post("/ari/channels/externalMedia", params=rest_line(108)["query"]).json()
    events.until("StasisStart")
    client.post(f"/ari/bridges/{bridge['id']}/addChannel", params={"channel": inbound})
    entered = events.next()
    assert shape(entered) == shape(event_line(172))
    client.post(f"/ari/bridges/{bridge['id']}/addChannel", params={"channel": media["id"]})
    assert [e["type"] for e in events.take(3)] == [
        "ChannelEnteredBridge", "ChannelVarset", "ChannelVarset",
    ]  # fmt: skip
    assert client.delete(f"/ari/channels/{media['id']}").status_code == 204
    sequence = events.take(6)
    assert [e["type"] for e in sequence] == [e["type"] for e in map(event_line, range(248, 254))]
    assert [shape(e) for e in sequence] == [shape(event_line(n)) for n in range(248, 254)]
    assert sequence[0]["cause"] == 32 and sequence[0]["soft"] is True
    assert client.delete(f"/ari/bridges/{bridge['id']}").status_code == 204
    cleared, left, destroyed = events.take(3)
    assert (cleared["variable"], cleared["value"], left["type"]) == (
        "BRIDGEPEER",
        "",
        "ChannelLeftBridge",
    )
    assert shape(destroyed) == shape(event_line(254))


def test_playback_events(ari: AriDouble, client: httpx.Client, events: EventStream) -> None:
    channel_id = ari.start_inbound_call(answered=True)
    events.until("StasisStart")
    played = client.post(f"/ari/channels/{channel_id}/play", params={"media": "sound:beep"})
    assert played.status_code == 201 and played.headers["location"].startswith("/ari/playbacks/")
    started, finished = events.take(2)
    assert shape(started) == shape(event_line(17)) and started["playback"]["state"] == "playing"
    assert shape(finished) == shape(event_line(20)) and finished["playback"]["state"] == "done"
    client.post(f"/ari/channels/{channel_id}/play", params={"media": "sound:no-such-sound"})
    assert events.take(2)[1]["playback"]["state"] == "failed"
    multi = client.post(f"/ari/channels/{channel_id}/play", params={"media": "sound:beep,digits:7"})
    assert [e["type"] for e in events.take(4)] == [
        "PlaybackStarted", "PlaybackContinuing", "PlaybackStarted", "PlaybackFinished",
    ]  # fmt: skip
    assert client.get(f"/ari/playbacks/{multi.json()['id']}").status_code == 404
    ari.add_sound("long-prompt", 100.0)
    long = client.post(f"/ari/channels/{channel_id}/play", params={"media": "sound:long-prompt"})
    events.until("PlaybackStarted")
    assert client.delete(f"/ari/playbacks/{long.json()['id']}").status_code == 204
    assert events.until("PlaybackFinished")["playback"]["state"] == "done"


# --- faults ----------------------------------------------------------------------------------


def test_fail_next_and_reset(ari: AriDouble, client: httpx.Client) -> None:
    ari.fail_next(503, 2, match=r"^GET /ari/asterisk/ping$")
    assert client.get("/ari/asterisk/info").status_code == 200  # does not match
    statuses = [client.get("/ari/asterisk/ping").status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    ari.reset_next()
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/ari/asterisk/ping")
    outcomes = [record.outcome for record in ari.requests]
    assert outcomes == ["answered", "fault", "fault", "answered", "fault"]


def test_hang_then_recover(ari: AriDouble, client: httpx.Client) -> None:
    ari.hang(True)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/ari/asterisk/ping", timeout=0.3)
    threading.Timer(0.2, ari.hang, args=(False,)).start()
    assert client.get("/ari/asterisk/ping", timeout=3).status_code == 200
    outcomes = [record.outcome for record in ari.requests]
    assert outcomes == ["abandoned", "answered"]


def test_drop_websocket_gives_no_close_frame(ari: AriDouble, events: EventStream) -> None:
    assert ari.drop_websocket() == 1
    with pytest.raises(ConnectionClosedError) as closed:
        events.next()
    assert closed.value.rcvd is None  # no close frame, like a dead Asterisk
    time.sleep(0.05)
    with pytest.raises(AppNotRegistered):
        ari.start_inbound_call()


def test_restart_loses_everything_and_comes_back(ari: AriDouble, client: httpx.Client) -> None:
    with connect(ari.events_url(), max_queue=None) as ws:
        ari.wait_for_app()
        channel_id = ari.start_inbound_call()
        before = client.get("/ari/asterisk/info", params={"only": "status"}).json()
        ari.restart(downtime=0.2)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=2)
    assert client.get(f"/ari/channels/{channel_id}").status_code == 404
    after = client.get("/ari/asterisk/info", params={"only": "status"}).json()
    assert after != before
    with connect(ari.events_url()):
        ari.wait_for_app()
        assert ari.start_inbound_call().endswith(".0")  # the uniqueid counter restarted


# --- control API and separate process --------------------------------------------------------


def test_control_http_api(ari: AriDouble, events: EventStream) -> None:
    with httpx.Client(base_url=f"{ari.base_url}/_double", timeout=5) as control:
        call = control.post("/calls", json={"args": ["inbound"], "caller": "2002"})
        channel_id = call.json()["channel_id"]
        assert events.next()["channel"]["caller"]["number"] == "2002"
        assert control.post(f"/calls/{channel_id}/hangup", json={"cause": 16}).status_code == 204
        assert [e["type"] for e in events.take(2)] == ["ChannelHangupRequest", "StasisEnd"]
        assert control.post("/faults/fail_next", json={"status": 500}).status_code == 204
        assert httpx.get(f"{ari.ari_url}/asterisk/ping", auth=LAB_AUTH).status_code == 500
        assert control.post("/websockets/drop", json={}).json() == {"dropped": 1}
        listed = control.get("/events").json()
        assert [e["event"]["type"] for e in listed][:1] == ["StasisStart"]
        assert control.get("/requests").json()[-1]["status"] == 500


def wait_until_healthy(base: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/_double/health").json()["status"] == "ok":
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the double did not come back")


def test_runs_as_a_separate_process() -> None:
    command = [sys.executable, "-m", "support.ari_double", "--port", "0", "--user", "u",
               "--password", "p"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        base = ready["base_url"]
        assert httpx.get(f"{base}/ari/asterisk/ping", auth=("u", "p")).status_code == 200
        assert httpx.get(f"{base}/ari/asterisk/ping", auth=LAB_AUTH).status_code == 401
        refused = httpx.post(f"{base}/_double/calls", json={})
        assert refused.status_code == 409  # no app connected yet
        with connect(f"{ready['ws_url']}?app=vagent&api_key=u:p") as ws:
            while httpx.get(f"{base}/ari/applications/vagent", auth=("u", "p")).is_error:
                time.sleep(0.01)
            httpx.post(f"{base}/_double/calls", json={"args": ["x"]}).raise_for_status()
            assert json.loads(ws.recv(timeout=2))["type"] == "StasisStart"
            restarting = httpx.post(f"{base}/_double/restart", json={"downtime": 0.1})
            assert restarting.status_code == 202
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=3)
        wait_until_healthy(base)
        assert httpx.get(f"{base}/ari/channels", auth=("u", "p")).json() == []
    finally:
        process.terminate()
        process.wait(timeout=10)
