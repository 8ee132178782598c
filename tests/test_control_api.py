"""The control API of the running services: token, loopback, drills and recovery.

One stack, as `vagent up` starts it: embedded Redis, no OpenAI key, the ARI
double as Asterisk, and VAGENT_BIND_HOST=0.0.0.0, so the same processes show
both sides of the loopback rule (127.0.0.1 answers, the host's own address
gets 403 on /control while /health stays reachable). The tests run in file
order and each leaves the stack healthy.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Stack, make_stack, status, wait_for
from support.ari_double import AriDouble
from vagent.services.config import SERVICES

pytestmark = pytest.mark.slow

PASSWORD = "ari-control-api-secret"
FAULTS_PATH = "/control/faults"


@pytest.fixture(scope="module")
def ari() -> Iterator[AriDouble]:
    with AriDouble(user="vagent", password=PASSWORD, fail_on_violations=False) as double:
        yield double


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, ari: AriDouble) -> Iterator[Stack]:
    s = make_stack(
        tmp_path_factory.mktemp("control"),
        VAGENT_BIND_HOST="0.0.0.0",
        VAGENT_ARI_URL=ari.base_url,
        VAGENT_ARI_PASSWORD=PASSWORD,
    )
    up = s.vagent("up", "--timeout", "60")
    try:
        assert up.returncode in (0, 1), up.stdout + up.stderr  # 1 while the prompts render
        wait_for(lambda: status(s)[0] == 0, 30, "every service healthy")
        ari.wait_for_app(timeout=10)
        yield s
    finally:
        s.vagent("down")


@pytest.fixture(autouse=True)
def no_drill_left(stack: Stack) -> Iterator[None]:
    """A failed test must not leave its drill behind for the next one."""
    yield
    for service in SERVICES:
        control(stack, "DELETE", service)


def token_file(stack: Stack) -> Path:
    return Path(stack.env["VAGENT_HOME"]) / "run" / "control.token"


def url(stack: Stack, service: str, path: str = FAULTS_PATH) -> str:
    return stack.url(SERVICES.index(service) + 1) + path


def control(
    stack: Stack, method: str, service: str, path: str = FAULTS_PATH, **body: Any
) -> httpx.Response:
    token = token_file(stack).read_text()
    return httpx.request(
        method,
        url(stack, service, path),
        headers={"Authorization": f"Bearer {token}"},
        json=body or None,
        timeout=5,
    )


def health(stack: Stack, service: str) -> dict[str, Any]:
    return dict(httpx.get(url(stack, service, "/health"), timeout=5).json())


def check(stack: Stack, service: str, name: str) -> dict[str, Any]:
    return dict(health(stack, service)["checks"][name][0])


def snapshot(stack: Stack) -> dict[str, dict[str, str]]:
    """Each service's status and every check's status: what "recovered" must match."""
    result = {}
    for service in SERVICES:
        body = health(stack, service)
        checks = {name: entries[0]["status"] for name, entries in body["checks"].items()}
        result[service] = {"status": body["status"], **checks}
    return result


def test_the_token_file_is_private(stack: Stack) -> None:
    path = token_file(stack)
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic {token}", "Bearer {token}x"])
def test_no_or_a_wrong_token_is_401_and_never_echoes_it(stack: Stack, header: str | None) -> None:
    token = token_file(stack).read_text()
    headers = {"Authorization": header.format(token=token)} if header else {}
    for service in SERVICES:
        response = httpx.get(url(stack, service), headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {
            "error": f"missing or wrong control token: the CLI reads it from {token_file(stack)}"
        }
        assert token not in response.text
    refused = httpx.post(url(stack, "llm_service"), json={"target": "bogus"}, timeout=5)
    assert refused.status_code == 401  # the token before anything else, validation included


def test_the_token_opens_it_and_each_service_lists_its_targets(stack: Stack) -> None:
    bodies = {}
    for service in SERVICES:
        response = control(stack, "GET", service)
        assert response.status_code == 200, response.text
        bodies[service] = response.json()
        assert bodies[service]["service"] == service
        assert bodies[service]["faults"] == []
    assert bodies["call_controller"]["targets"] == {"redis": ["redis"], "ari": ["ari"]}
    assert bodies["stt_service"]["targets"] == {"redis": ["redis"], "stt": ["pocketsphinx"]}
    assert bodies["llm_service"]["targets"] == {"redis": ["redis"]}  # no key: nothing to fault
    assert bodies["tts_service"]["targets"] == {"redis": ["redis"], "tts": ["espeak-ng"]}


@pytest.mark.parametrize(
    "body",
    [
        {"target": "bogus", "mode": "error", "duration_s": 60},
        {"target": "redis", "mode": "explode", "duration_s": 60},
        {"target": "redis", "mode": "error", "duration_s": 0.5},
        {"target": "redis", "mode": "error", "duration_s": 3601},
    ],
)
def test_bad_requests_are_422(stack: Stack, body: dict[str, Any]) -> None:
    assert control(stack, "POST", "llm_service", **body).status_code == 422
    assert control(stack, "GET", "llm_service").json()["faults"] == []


def test_a_target_the_service_has_no_dependency_for(stack: Stack) -> None:
    response = control(stack, "POST", "llm_service", target="ari", mode="error", duration_s=60)
    assert response.status_code == 200
    assert response.json() == {
        "service": "llm_service",
        "fault": None,
        "reason": "llm_service has no dependency for target ari",
    }


def test_a_redis_drill_everywhere_shows_and_ends_with_delete(stack: Stack) -> None:
    before = snapshot(stack)
    for service in SERVICES:
        response = control(stack, "POST", service, target="redis", mode="error", duration_s=60)
        fault = response.json()["fault"]
        assert fault["target"] == "redis" and fault["dependencies"] == ["redis"]
        assert fault["expires_at"] - fault["started_at"] == pytest.approx(60, abs=0.01)

    def drilled(service: str) -> bool:
        body = health(stack, service)
        checks = {name: entries[0] for name, entries in body["checks"].items()}
        return (
            body["status"] == "unhealthy"
            and checks["redis:ping"]["status"] == "fail"
            and "simulated failure" in checks["redis:ping"]["output"]
            and checks["breaker:redis"]["status"] == "warn"  # the drill opened it, like an outage
        )

    for service in SERVICES:
        wait_for(lambda service=service: drilled(service), 15, f"{service} to feel the drill")
        drill = check(stack, service, "drill:faults")
        assert drill["status"] == "warn"
        assert drill["output"].startswith("drill redis (error) on redis, ")
        assert drill["output"].endswith("s left")
    human = stack.vagent("status")
    assert "drill:faults" in human.stdout

    for service in SERVICES:
        restored = control(stack, "DELETE", service).json()
        assert [f["target"] for f in restored["restored"]] == ["redis"]
    wait_for(lambda: snapshot(stack) == before, 10, "every service back to its health before")
    for service in SERVICES:
        assert check(stack, service, "breaker:redis")["output"] == "closed"
        assert check(stack, service, "drill:faults")["output"] == "no drill"


def test_a_drill_expires_by_itself(stack: Stack) -> None:
    before = snapshot(stack)
    response = control(stack, "POST", "stt_service", target="redis", mode="timeout", duration_s=2)
    assert response.json()["fault"]["mode"] == "timeout"
    wait_for(
        lambda: check(stack, "stt_service", "redis:ping")["status"] == "fail",
        5,
        "the drill to show",
    )
    wait_for(lambda: snapshot(stack) == before, 12, "the drill to end by itself")
    assert control(stack, "GET", "stt_service").json()["faults"] == []


def test_an_ari_drill_sends_callers_back_to_the_dialplan(stack: Stack, ari: AriDouble) -> None:
    before = snapshot(stack)
    response = control(stack, "POST", "call_controller", target="ari", duration_s=60)
    assert response.json()["fault"]["dependencies"] == ["ari"]
    wait_for(
        lambda: check(stack, "call_controller", "ari:info")["status"] == "fail",
        5,
        "ari:info to feel the drill",
    )
    refused_before = refused_calls(stack)
    # Failed requests open the breaker (five failures); from then on callers are refused
    # at once. Either way each caller gets one request back to the dialplan, and no
    # call-control request reaches Asterisk.
    for _ in range(4):
        channel = ari.start_inbound_call(["inbound", "100"], answered=False)
        ari.wait_for_request("POST", f"/channels/{channel}/continue$", timeout=10)
        assert not any(r.path.endswith(f"/channels/{channel}/answer") for r in ari.requests)
    assert check(stack, "call_controller", "breaker:ari")["status"] == "warn"
    assert refused_calls(stack) >= refused_before + 1

    restored = control(stack, "DELETE", "call_controller", "/control/faults/ari").json()
    assert [f["target"] for f in restored["restored"]] == ["ari"]
    assert check(stack, "call_controller", "breaker:ari")["output"] == "closed"
    channel = ari.start_inbound_call(["inbound", "100"], answered=False)
    ari.wait_for_request("POST", f"/channels/{channel}/answer$", timeout=10)
    ari.hangup(channel)
    wait_for(lambda: snapshot(stack) == before, 15, "the controller back to its health before")


def refused_calls(stack: Stack) -> float:
    text = httpx.get(url(stack, "call_controller", "/metrics"), timeout=5).text
    for line in text.splitlines():
        if line.startswith('vagent_call_events_total{event="refused"}'):
            return float(line.split()[-1])
    return 0.0


def host_address() -> str | None:
    """A non-loopback IPv4 address of this host, or None."""
    candidates = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, contextlib.suppress(OSError):
        probe.connect(("192.0.2.1", 9))  # UDP: picks the route's source, sends nothing
        candidates.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates.append(socket.gethostbyname(socket.gethostname()))
    return next((a for a in candidates if not a.startswith("127.") and a != "0.0.0.0"), None)


def test_control_answers_on_loopback_only(stack: Stack) -> None:
    address = host_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to ask from")
    token = token_file(stack).read_text()
    port = int(stack.env["VAGENT_PORT_BASE"]) + 1
    outside = f"http://{address}:{port}"
    assert httpx.get(f"{outside}/health/live", timeout=5).status_code == 200
    for method in ("GET", "POST", "DELETE"):
        response = httpx.request(
            method,
            f"{outside}{FAULTS_PATH}",
            headers={"Authorization": f"Bearer {token}"},
            json={"target": "redis", "duration_s": 60} if method == "POST" else None,
            timeout=5,
        )
        assert response.status_code == 403
        assert response.json() == {"error": "control endpoints answer on loopback only"}
    assert control(stack, "GET", "call_controller").json()["faults"] == []
