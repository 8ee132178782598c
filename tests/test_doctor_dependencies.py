"""`vagent doctor`'s dependency checks against real things.

Real redis-server, the real rtpengine daemon, a real supervisord, and the ARI
and OpenAI doubles (real HTTP servers). Every failure an admin can meet gets
its own output and fix; a hanging dependency is cut by the doctor's own
timeout; and no secret ever appears in a finding.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from websockets.sync.client import connect as ws_connect

from conftest import RedisServer, free_port
from support.ari_double import AriDouble, DoubleConfig
from support.openai_double import OpenAIDouble
from support.rtpengine_proc import RtpEngineProcess
from vagent.cli.doctor.dependencies import CHECKS, redact_url
from vagent.cli.doctor.model import DoctorContext, Finding
from vagent.cli.supervisor import Supervisor
from vagent.services.config import Settings

KEY = "sk-doctor-deps-0123456789abcdefXYZ"
ARI_PASSWORD = "ari-doctor-s3cret"
REDIS_PASSWORD = "redis-doctor-s3cret"
ACL_PASSWORD = "acl-doctor-s3cret"
SECRETS = (KEY, ARI_PASSWORD, REDIS_PASSWORD, ACL_PASSWORD)
BY_ID = {check.id: check for check in CHECKS}
# The runner cuts a group this long after the timeout; a check must finish first.
RUNNER_MARGIN_S = 0.5


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes to Settings counts, not the developer's shell."""
    for name in list(os.environ):
        if name.startswith(("VAGENT_", "OPENAI_")):
            monkeypatch.delenv(name)


@pytest.fixture
def home() -> Iterator[Path]:
    """A short home: unix socket paths (supervisord, embedded redis) must fit 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def settings(home: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, home=home, **values)


def assert_no_secret(findings: list[Finding], *extra: str) -> None:
    text = json.dumps([f.as_json() for f in findings])
    for secret in (*SECRETS, *extra):
        assert secret not in text


async def run(check: str, config: Settings, timeout_s: float = 1.0) -> dict[str, Finding]:
    """Run one check; every finding must follow the model's rules."""
    findings = await BY_ID[check].run(DoctorContext(config, timeout_s))
    assert findings
    assert len({f.id for f in findings}) == len(findings)
    for finding in findings:
        assert finding.id.startswith(f"{check}.")
        assert finding.runbook == BY_ID[check].runbook
        assert (finding.fix == "") == (finding.status == "pass"), finding
    assert_no_secret(findings)
    return {f.id: f for f in findings}


async def timed_run(
    check: str, config: Settings, timeout_s: float
) -> tuple[dict[str, Finding], float]:
    start = time.monotonic()
    found = await run(check, config, timeout_s)
    return found, time.monotonic() - start


def closed_port() -> int:
    """A TCP port nothing listens on (connection refused)."""
    return free_port()


@contextlib.contextmanager
def silent_tcp() -> Iterator[int]:
    """A listener whose kernel accepts connections and that never says a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


@contextlib.contextmanager
def silent_udp() -> Iterator[int]:
    """A UDP port that receives and never answers (a hung rtpengine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def statuses(found: dict[str, Finding]) -> dict[str, str]:
    return {key: f.status for key, f in found.items()}


@pytest.fixture(scope="module")
def supervisord_home() -> Iterator[Path]:
    """A real supervisord on VAGENT_HOME/run/supervisor.sock: vagent is "up"."""
    home = Path(tempfile.mkdtemp(prefix="vd-up-", dir="/tmp"))
    run_dir = home / "run"
    run_dir.mkdir(mode=0o700)
    conf = run_dir / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={run_dir}/supervisor.sock\nchmod=0700\n"
        f"[supervisord]\nlogfile={home}/supervisord.log\npidfile={run_dir}/supervisord.pid\n"
        "nodaemon=true\nsilent=true\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)])
    supervisor = Supervisor(settings(home))
    deadline = time.monotonic() + 10
    while not supervisor.is_running():
        assert time.monotonic() < deadline, "supervisord did not start"
        time.sleep(0.05)
    yield home
    process.terminate()
    process.wait(10)
    shutil.rmtree(home, ignore_errors=True)


def test_the_four_checks() -> None:
    assert [c.id for c in CHECKS] == ["ari", "redis", "rtpengine", "openai"]
    assert [c.runbook for c in CHECKS] == [
        "asterisk-ari.md",
        "redis.md",
        "rtpengine.md",
        "openai.md",
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:p%40w@h/1", "redis://user:***@h/1"),
        ("redis://h:6379/0?password=pw&db=2", "redis://h:6379/0?password=***&db=2"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- ARI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_ari() -> Iterator[AriDouble]:
    with AriDouble(user="vagent", password=ARI_PASSWORD) as double:
        yield double


@pytest.fixture
def ari(shared_ari: AriDouble) -> AriDouble:
    shared_ari.reset()
    return shared_ari


def ari_settings(home: Path, url: str, password: str = ARI_PASSWORD) -> Settings:
    return settings(home, ari_url=url, ari_user="vagent", ari_password=password)


async def test_ari_not_configured_warns(home: Path) -> None:
    found = await run("ari", settings(home))
    assert statuses(found) == {"ari.configured": "warn"}
    assert found["ari.configured"].output == "ARI not configured: calls cannot reach vagent"
    assert "VAGENT_ARI_PASSWORD" in found["ari.configured"].fix


async def test_ari_all_pass_with_the_app_registered(ari: AriDouble, home: Path) -> None:
    with ws_connect(ari.events_url("vagent")):
        ari.wait_for_app("vagent")
        found = await run("ari", ari_settings(home, ari.base_url))
    assert statuses(found) == {
        "ari.reachable": "pass",
        "ari.credentials": "pass",
        "ari.version": "pass",
        "ari.app": "pass",
    }
    assert isinstance(found["ari.reachable"].observed, float)
    assert found["ari.version"].observed == "22.10.1"
    assert found["ari.version"].output == "Asterisk 22.10.1"
    assert found["ari.app"].output.startswith("Stasis app vagent registered")


async def test_ari_app_missing_while_vagent_is_down_warns(ari: AriDouble, home: Path) -> None:
    found = await run("ari", ari_settings(home, ari.base_url))
    app = found["ari.app"]
    assert app.status == "warn"
    assert "registers when call_controller connects" in app.output
    assert app.fix == "run `vagent up`"


@pytest.mark.slow
async def test_ari_app_missing_while_vagent_is_up_fails(
    ari: AriDouble, supervisord_home: Path
) -> None:
    found = await run("ari", ari_settings(supervisord_home, ari.base_url))
    app = found["ari.app"]
    assert app.status == "fail"
    assert app.output.startswith("vagent is up but the Stasis app vagent is not registered")
    assert "vagent logs call_controller" in app.fix


async def test_ari_wrong_password_names_the_user(ari: AriDouble, home: Path) -> None:
    found = await run("ari", ari_settings(home, ari.base_url, password="wrong-" + ARI_PASSWORD))
    assert statuses(found) == {"ari.credentials": "fail"}
    assert found["ari.credentials"].output == "ARI refused the credentials of user vagent (401)"
    assert "ari.conf" in found["ari.credentials"].fix


async def test_ari_not_served_is_not_a_credentials_problem(home: Path) -> None:
    config = DoubleConfig(password=ARI_PASSWORD, ari_enabled=False)
    with AriDouble(config=config) as disabled:
        found = await run("ari", ari_settings(home, disabled.base_url))
    reachable = found["ari.reachable"]
    assert statuses(found) == {"ari.reachable": "fail"}
    assert reachable.output == (
        f"HTTP answers but ARI is not served at {disabled.base_url}/ari: "
        "ari.conf enabled = no, missing or invalid"
    )
    assert "enabled = yes" in reachable.fix


class _WebPage(http.server.BaseHTTPRequestHandler):
    """Some other web server (a PBX web UI) answering every path with a page."""

    def do_GET(self) -> None:
        body = b"<html><body>Welcome</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


async def test_ari_url_at_another_web_server_fails(home: Path) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WebPage) as web:
        threading.Thread(target=web.serve_forever, args=(0.05,), daemon=True).start()
        base = f"http://127.0.0.1:{web.server_address[1]}"
        found = await run("ari", ari_settings(home, base))
        web.shutdown()
    assert statuses(found) == {"ari.reachable": "fail"}
    assert (
        found["ari.reachable"].output
        == f"{base}/ari/asterisk/info answers, but not with ARI's JSON"
    )
    assert "VAGENT_ARI_URL" in found["ari.reachable"].fix


async def test_ari_refused_and_unknown_host_read_differently(home: Path) -> None:
    refused = await run("ari", ari_settings(home, f"http://127.0.0.1:{closed_port()}"))
    unknown = await run("ari", ari_settings(home, "http://no-such-host.invalid:8088"))
    assert refused["ari.reachable"].status == unknown["ari.reachable"].status == "fail"
    assert refused["ari.reachable"].output.endswith(": connection refused")
    assert "http.conf" in refused["ari.reachable"].fix
    assert unknown["ari.reachable"].output.endswith(": cannot resolve the host name")
    assert unknown["ari.reachable"].fix == "fix the host name in VAGENT_ARI_URL"


async def test_ari_hang_is_cut_by_the_doctor_timeout(ari: AriDouble, home: Path) -> None:
    ari.hang()
    found, elapsed = await timed_run("ari", ari_settings(home, ari.base_url), 0.5)
    assert statuses(found) == {"ari.reachable": "fail"}
    assert found["ari.reachable"].output.endswith("no answer within 0.5s")
    assert elapsed < 0.5 + RUNNER_MARGIN_S


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> Iterator[RedisServer]:
    """The shared server, put back to defaults after each test."""
    yield shared_redis
    # The default user is nopass unless a test set requirepass: any password then works.
    admin = redis.Redis(port=shared_redis.port, password=REDIS_PASSWORD)
    admin.config_set("requirepass", "")
    admin.config_set("maxmemory", 0)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.acl_deluser("doctor")
    admin.close()


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port)


def acl_user(server: RedisServer, denied: str) -> None:
    """User `doctor` with every command but `denied`."""
    admin(server).acl_setuser(
        "doctor",
        enabled=True,
        passwords=[f"+{ACL_PASSWORD}"],
        keys=["*"],
        categories=["+@all"],
        commands=[denied],
    )


@pytest.mark.slow
async def test_redis_healthy(redis_server: RedisServer, home: Path) -> None:
    found = await run("redis", settings(home, redis_url=redis_server.url))
    assert statuses(found) == {
        "redis.reachable": "pass",
        "redis.version": "pass",
        "redis.eviction": "pass",
        "redis.maxmemory": "pass",
    }
    latency = found["redis.reachable"].observed
    assert isinstance(latency, float) and 0 < latency < 20
    assert found["redis.reachable"].output.startswith(f"Redis at {redis_server.url} answers PING")
    version = admin(redis_server).info("server")["redis_version"]
    assert found["redis.version"].observed == version
    assert found["redis.eviction"].observed == "noeviction"
    assert found["redis.maxmemory"].observed == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "maxmemory", "status"),
    [
        ("allkeys-lru", "100mb", "fail"),
        ("volatile-ttl", "100mb", "fail"),
        ("allkeys-lfu", "0", "warn"),
    ],
)
async def test_redis_eviction_policies(
    redis_server: RedisServer, home: Path, policy: str, maxmemory: str, status: str
) -> None:
    admin(redis_server).config_set("maxmemory", maxmemory)
    admin(redis_server).config_set("maxmemory-policy", policy)
    eviction = (await run("redis", settings(home, redis_url=redis_server.url)))["redis.eviction"]
    assert (eviction.status, eviction.observed) == (status, policy)
    assert eviction.output.startswith(f"maxmemory-policy {policy} lets Redis evict")
    assert "redis-cli config set maxmemory-policy noeviction" in eviction.fix
    assert "redis.conf" in eviction.fix
    assert ("not yet (maxmemory 0" in eviction.output) == (maxmemory == "0")


@pytest.mark.slow
async def test_redis_nearly_full_warns(redis_server: RedisServer, home: Path) -> None:
    used = int(admin(redis_server).info("memory")["used_memory"])
    admin(redis_server).config_set("maxmemory", int(used * 1.02))
    found = await run("redis", settings(home, redis_url=redis_server.url))
    assert found["redis.maxmemory"].status == "warn"
    assert found["redis.maxmemory"].observed > 90
    assert found["redis.eviction"].status == "pass"


@pytest.mark.slow
async def test_redis_noauth_and_wrongpass_are_distinct(
    redis_server: RedisServer, home: Path
) -> None:
    admin(redis_server).config_set("requirepass", REDIS_PASSWORD)
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    missing = await run("redis", settings(home, redis_url=url))
    wrong_url = f"redis://:wrong-{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    wrong = await run("redis", settings(home, redis_url=wrong_url))
    right_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    right = await run("redis", settings(home, redis_url=right_url))
    assert statuses(missing) == statuses(wrong) == {"redis.auth": "fail"}
    assert "requires a password (NOAUTH)" in missing["redis.auth"].output
    assert "rejected the credentials" in wrong["redis.auth"].output
    assert f"redis://:***@127.0.0.1:{redis_server.port}/0" in wrong["redis.auth"].output
    assert right["redis.auth"].status == right["redis.reachable"].status == "pass"
    assert_no_secret([*wrong.values(), *right.values()], f"wrong-{REDIS_PASSWORD}")


@pytest.mark.slow
async def test_redis_without_config_rights_still_checks_eviction(
    redis_server: RedisServer, home: Path
) -> None:
    """Managed Redis often blocks CONFIG: INFO is enough."""
    acl_user(redis_server, "-config")
    admin(redis_server).config_set("maxmemory-policy", "allkeys-lru")
    url = f"redis://doctor:{ACL_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    found = await run("redis", settings(home, redis_url=url))
    assert found["redis.auth"].status == "pass"
    assert found["redis.eviction"].observed == "allkeys-lru"
    assert f"redis://doctor:***@127.0.0.1:{redis_server.port}/0" in found["redis.reachable"].output


@pytest.mark.slow
async def test_redis_user_without_info_is_unknown(redis_server: RedisServer, home: Path) -> None:
    acl_user(redis_server, "-info")
    url = f"redis://doctor:{ACL_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    found = await run("redis", settings(home, redis_url=url))
    assert statuses(found) == {
        "redis.reachable": "pass",
        "redis.auth": "pass",
        "redis.info": "unknown",
    }
    assert "+info" in found["redis.info"].fix


async def test_redis_refused_and_unknown_host_read_differently(home: Path) -> None:
    refused = await run("redis", settings(home, redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    unknown = await run("redis", settings(home, redis_url="redis://no-such-host.invalid:6379/0"))
    assert statuses(refused) == statuses(unknown) == {"redis.reachable": "fail"}
    assert refused["redis.reachable"].output.endswith(": connection refused")
    assert unknown["redis.reachable"].output.endswith(": cannot resolve the host name")
    assert refused["redis.reachable"].fix != unknown["redis.reachable"].fix


async def test_redis_hang_is_cut_by_the_doctor_timeout(home: Path) -> None:
    with silent_tcp() as port:
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
        found, elapsed = await timed_run("redis", settings(home, redis_url=url), 0.5)
    assert statuses(found) == {"redis.reachable": "fail"}
    assert found["redis.reachable"].output == (
        f"Redis unreachable at redis://:***@127.0.0.1:{port}/0: no answer within 0.5s"
    )
    assert elapsed < 0.5 + RUNNER_MARGIN_S


async def test_embedded_redis_not_started_warns(home: Path) -> None:
    found = await run("redis", settings(home))
    reachable = found["redis.reachable"]
    assert statuses(found) == {"redis.reachable": "warn"}
    assert reachable.output == "embedded redis-server not running: start vagent with `vagent up`"


@pytest.mark.slow
async def test_embedded_redis_down_while_vagent_is_up_fails(supervisord_home: Path) -> None:
    found = await run("redis", settings(supervisord_home))
    assert statuses(found) == {"redis.reachable": "fail"}
    assert found["redis.reachable"].output.startswith("vagent is up but its embedded redis-server")
    assert "vagent logs redis" in found["redis.reachable"].fix


@pytest.mark.slow
async def test_embedded_redis_running_passes(home: Path) -> None:
    config = settings(home)
    config.run_dir.mkdir(mode=0o700)
    socket_path = config.embedded_redis_socket
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket",
         str(socket_path), "--save", "", "--appendonly", "no", "--dir", str(config.run_dir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        found = await run("redis", config)
    finally:
        server.terminate()
        server.wait(10)
    assert found["redis.reachable"].status == "pass"
    assert f"unix://{socket_path}" in found["redis.reachable"].output


# --- RTPEngine -----------------------------------------------------------------------------


async def test_rtpengine_not_configured_passes(home: Path) -> None:
    found = await run("rtpengine", settings(home))
    assert statuses(found) == {"rtpengine.configured": "pass"}
    assert found["rtpengine.configured"].output == "rtpengine not configured (media mode direct)"


@pytest.mark.slow
async def test_rtpengine_answers_ping(rtpengine: RtpEngineProcess, home: Path) -> None:
    config = settings(home, rtpengine_ng=rtpengine.ng_address, media_mode="rtpengine")
    found = await run("rtpengine", config)
    ping = found["rtpengine.ping"]
    assert ping.status == "pass"
    assert isinstance(ping.observed, float) and ping.observed < 1000
    assert ping.output.startswith(f"rtpengine at {rtpengine.ng_address} answers ng ping in")


async def test_rtpengine_nothing_listening_fails(home: Path) -> None:
    with silent_udp() as port:
        pass  # closed again: the kernel answers ICMP port unreachable
    found = await run("rtpengine", settings(home, rtpengine_ng=f"127.0.0.1:{port}"))
    ping = found["rtpengine.ping"]
    assert ping.status == "fail"
    assert "nothing listens on that UDP port" in ping.output
    assert "systemctl status rtpengine-daemon" in ping.fix


async def test_rtpengine_hang_is_cut_by_the_doctor_timeout(home: Path) -> None:
    with silent_udp() as port:
        config = settings(home, rtpengine_ng=f"127.0.0.1:{port}")
        found, elapsed = await timed_run("rtpengine", config, 0.5)
    ping = found["rtpengine.ping"]
    assert ping.status == "fail"
    assert ping.output == (
        f"rtpengine at 127.0.0.1:{port}: no answer to ng ping within 0.5s (media mode direct)"
    )
    assert "/etc/rtpengine/rtpengine.conf" in ping.fix
    assert elapsed < 0.5 + RUNNER_MARGIN_S


@pytest.fixture
async def garbage_udp() -> AsyncIterator[int]:
    """Answers every datagram with its cookie and a body that is not bencode."""

    class Garbage(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            self.transport.sendto(data.partition(b" ")[0] + b" HTTP/1.1 400", addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Garbage, local_addr=("127.0.0.1", 0))
    yield int(transport.get_extra_info("sockname")[1])
    transport.close()


async def test_rtpengine_wrong_protocol_fails(garbage_udp: int, home: Path) -> None:
    found = await run("rtpengine", settings(home, rtpengine_ng=f"127.0.0.1:{garbage_udp}"))
    ping = found["rtpengine.ping"]
    assert ping.status == "fail"
    assert "undecodable reply" in ping.output
    assert ping.fix.startswith("that address answers, but not in rtpengine's ng protocol")


# --- OpenAI --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_openai() -> Iterator[OpenAIDouble]:
    with OpenAIDouble(api_key=KEY) as double:
        yield double


@pytest.fixture
def openai_double(shared_openai: OpenAIDouble) -> OpenAIDouble:
    shared_openai.reset()
    return shared_openai


def openai_settings(home: Path, base_url: str, key: str = KEY, **values: Any) -> Settings:
    return settings(home, openai_api_key=key, openai_base_url=base_url, **values)


ALL_MODELS_PASS = {
    "openai.key": "pass",
    "openai.model.stt": "pass",
    "openai.model.llm": "pass",
    "openai.model.llm_fallback.1": "pass",
    "openai.model.tts": "pass",
}


async def test_openai_without_key_runs_on_local_engines(home: Path) -> None:
    found = await run("openai", settings(home))
    assert statuses(found) == {"openai.key": "warn"}
    assert found["openai.key"].output == (
        "no OPENAI_API_KEY: running on local engines (pocketsphinx, scripted replies, espeak-ng)"
    )


async def test_openai_key_and_every_model_pass(openai_double: OpenAIDouble, home: Path) -> None:
    found = await run("openai", openai_settings(home, openai_double.base_url))
    assert statuses(found) == ALL_MODELS_PASS
    assert isinstance(found["openai.key"].observed, float)
    assert found["openai.model.llm"].output == "gpt-4o available (VAGENT_LLM_MODEL)"
    retrieved = {r.model for r in openai_double.requests(route="models") if r.model}
    assert retrieved == {"gpt-4o-mini-transcribe", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini-tts"}


async def test_openai_rejected_key(openai_double: OpenAIDouble, home: Path) -> None:
    wrong = "sk-wrong-" + KEY
    found = await run("openai", openai_settings(home, openai_double.base_url, key=wrong))
    assert statuses(found) == {"openai.key": "fail"}
    assert "API key rejected" in found["openai.key"].output
    assert "invalid, revoked or expired" in found["openai.key"].output
    assert_no_secret(list(found.values()), wrong, wrong[:8], wrong[-4:])


async def test_openai_unknown_models_name_their_variable(
    openai_double: OpenAIDouble, home: Path
) -> None:
    config = openai_settings(
        home,
        openai_double.base_url,
        llm_model="gpt-4o-mni",
        llm_fallback_models="gpt-3.5-turbo, gpt-9-turbo",
    )
    found = await run("openai", config)
    assert statuses(found) == {
        "openai.key": "pass",
        "openai.model.stt": "pass",
        "openai.model.llm": "fail",
        "openai.model.llm_fallback.1": "pass",
        "openai.model.llm_fallback.2": "fail",
        "openai.model.tts": "pass",
    }
    llm = found["openai.model.llm"]
    assert llm.output == "model gpt-4o-mni not found for this key (misspelt, or retired/deprecated)"
    assert llm.fix.startswith("set VAGENT_LLM_MODEL to a model this key lists")
    assert llm.fix.endswith("e.g. gpt-4o-mini")
    assert "VAGENT_LLM_FALLBACK_MODELS" in found["openai.model.llm_fallback.2"].fix


async def test_openai_unreachable(home: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1"
    found = await run("openai", openai_settings(home, base))
    assert statuses(found) == {"openai.key": "fail"}
    assert found["openai.key"].output == f"OpenAI unreachable at {base}: connection refused"


async def test_openai_hang_is_cut_by_the_doctor_timeout(
    openai_double: OpenAIDouble, home: Path
) -> None:
    openai_double.hang("models")
    found, elapsed = await timed_run("openai", openai_settings(home, openai_double.base_url), 0.5)
    assert statuses(found) == {"openai.key": "fail"}
    assert found["openai.key"].output == (
        f"no answer from OpenAI at {openai_double.base_url} within 0.5s"
    )
    assert elapsed < 0.5 + RUNNER_MARGIN_S


async def test_one_hanging_model_does_not_hide_the_others(
    openai_double: OpenAIDouble, home: Path
) -> None:
    openai_double.hang("models", model="gpt-4o")
    found, elapsed = await timed_run("openai", openai_settings(home, openai_double.base_url), 0.5)
    assert statuses(found) == {**ALL_MODELS_PASS, "openai.model.llm": "fail"}
    assert found["openai.model.llm"].output.startswith("gpt-4o: no answer from OpenAI")
    assert elapsed < 0.5 + RUNNER_MARGIN_S  # the lookups ran at the same time


@pytest.mark.parametrize(
    ("status", "code", "expected", "words"),
    [
        (429, None, "warn", "rate-limits this key (429)"),
        (429, "insufficient_quota", "fail", "quota exhausted"),
        (503, None, "warn", "HTTP 503: a provider-side problem"),
        (403, None, "warn", "may not list models (403"),
    ],
)
async def test_openai_provider_answers(
    openai_double: OpenAIDouble,
    home: Path,
    status: int,
    code: str | None,
    expected: str,
    words: str,
) -> None:
    openai_double.fail("models", status, error_code=code, count=1)
    found = await run("openai", openai_settings(home, openai_double.base_url))
    assert statuses(found) == {"openai.key": expected}
    assert words in found["openai.key"].output


# --- all together ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_no_secret_in_any_finding_of_any_check(
    ari: AriDouble, openai_double: OpenAIDouble, redis_server: RedisServer, home: Path
) -> None:
    """Wrong and right secrets alike, through every check at once."""
    admin(redis_server).config_set("requirepass", REDIS_PASSWORD)
    wrong = settings(
        home,
        ari_url=ari.base_url,
        ari_password="x" + ARI_PASSWORD,
        redis_url=f"redis://:{REDIS_PASSWORD}x@127.0.0.1:{redis_server.port}/0",
        openai_api_key="x" + KEY,
        openai_base_url=openai_double.base_url,
    )
    right = settings(
        home,
        ari_url=ari.base_url,
        ari_password=ARI_PASSWORD,
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0",
        openai_api_key=KEY,
        openai_base_url=openai_double.base_url,
    )
    for config in (wrong, right):
        batches = await asyncio.gather(*(c.run(DoctorContext(config, 1.0)) for c in CHECKS))
        findings = [f for batch in batches for f in batch]
        assert_no_secret(findings, *config.secrets(), f"{REDIS_PASSWORD}x")
    assert {f.id for f in findings} >= {"ari.version", "redis.auth", "openai.key"}
