"""Each dependency check's outputs against real servers: the OpenAI double and rtpengine.

An admin must be able to tell a bad key from an outage from a bad model id.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.ari_double import AriDouble
from support.openai_double import OpenAIDouble
from support.rtpengine_proc import RtpEngineProcess
from vagent.services.call_controller.service import ari_check, rtpengine_check
from vagent.services.config import Settings
from vagent.services.health import HealthMonitor
from vagent.services.openai_client import openai_check

KEY = "sk-test-dependency-checks-0123456789"
ARI_PASSWORD = "ari-check-password"


@pytest.fixture(scope="module")
def double() -> Iterator[OpenAIDouble]:
    with OpenAIDouble(api_key=KEY) as d:
        yield d


@pytest.fixture(autouse=True)
def reset_double(double: OpenAIDouble) -> None:
    double.reset()


def settings_for(base_url: str, key: str = KEY) -> Settings:
    return Settings(home=Path("/nonexistent"), openai_api_key=key, openai_base_url=base_url)


async def run_check(settings: Settings, models: list[str], timeout_s: float = 1.0) -> dict:
    body = await HealthMonitor("t", "1", [openai_check(settings, models, timeout_s)]).report()
    return body["checks"]["openai:models"][0]  # type: ignore[index,no-any-return]


async def test_valid_key_and_models_pass(double: OpenAIDouble) -> None:
    entry = await run_check(settings_for(double.base_url), ["gpt-4o", "gpt-4o-mini"])
    assert entry["status"] == "pass"
    assert entry["output"] == "models available: gpt-4o, gpt-4o-mini"
    assert entry["observedUnit"] == "ms"
    assert {r.model for r in double.requests(route="models")} == {"gpt-4o", "gpt-4o-mini"}


async def test_rejected_key_is_not_an_outage(double: OpenAIDouble) -> None:
    entry = await run_check(settings_for(double.base_url, "sk-wrong-key-abcdefghijkl"), ["gpt-4o"])
    assert entry["status"] == "warn"
    assert entry["output"].startswith("API key rejected (401)")
    assert "sk-wrong" not in entry["output"]


async def test_unknown_model_is_named(double: OpenAIDouble) -> None:
    entry = await run_check(settings_for(double.base_url), ["gpt-4o", "gpt-9-turbo"])
    assert entry["status"] == "warn"
    assert entry["output"].startswith("model gpt-9-turbo not found for this key (404)")


async def test_unreachable_api() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = await run_check(settings_for(f"http://127.0.0.1:{port}/v1"), ["gpt-4o"])
    assert entry["status"] == "warn"
    assert entry["output"].startswith("OpenAI API unreachable")


async def test_hanging_api_is_bounded_by_the_check_timeout(double: OpenAIDouble) -> None:
    double.hang("models")
    entry = await run_check(settings_for(double.base_url), ["gpt-4o"], timeout_s=0.3)
    assert entry["status"] == "warn"
    assert "0.3s" in entry["output"]


async def test_provider_outage_is_a_5xx(double: OpenAIDouble) -> None:
    double.fail("models", 503)
    entry = await run_check(settings_for(double.base_url), ["gpt-4o"])
    assert entry["output"].startswith("OpenAI API answered HTTP 503")


@pytest.mark.slow
async def test_rtpengine_check_against_the_real_daemon() -> None:
    with RtpEngineProcess() as rtpengine:
        monitor = HealthMonitor("t", "1", [rtpengine_check(rtpengine.ng_address, 1.0)])
        body = await monitor.report()
    entry = body["checks"]["rtpengine:ping"][0]  # type: ignore[index]
    assert entry["status"] == "pass" and entry["output"] == "pong"
    assert entry["observedValue"] > 0


async def test_rtpengine_down_degrades_because_calls_fall_back_to_direct_rtp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        body = await HealthMonitor("t", "1", [rtpengine_check(address, 0.3)]).report()
    entry = body["checks"]["rtpengine:ping"][0]  # type: ignore[index]
    assert body["status"] == "degraded"
    assert entry["status"] == "warn"
    assert address in entry["output"] or "0.3s" in entry["output"]


@pytest.fixture(scope="module")
def ari() -> Iterator[AriDouble]:
    with AriDouble(user="vagent", password=ARI_PASSWORD) as double:
        yield double


async def ari_entry(url: str, password: str = ARI_PASSWORD, timeout_s: float = 1.0) -> dict:
    settings = Settings(
        home=Path("/nonexistent"), ari_url=url, ari_user="vagent", ari_password=password
    )
    check, client = ari_check(settings, timeout_s)
    try:
        body = await HealthMonitor("t", "1", [check]).report()
    finally:
        if client is not None:
            await client.aclose()
    return body["checks"]["ari:info"][0]  # type: ignore[index,no-any-return]


async def test_ari_reachable_with_good_credentials(ari: AriDouble) -> None:
    entry = await ari_entry(ari.base_url)
    assert entry["status"] == "pass"
    assert entry["output"].startswith("Asterisk 22.")
    entry_with_suffix = await ari_entry(ari.base_url + "/ari")
    assert entry_with_suffix["status"] == "pass"


async def test_ari_refused_credentials_are_distinct(ari: AriDouble) -> None:
    entry = await ari_entry(ari.base_url, password="wrong")
    assert entry["status"] == "fail"
    assert entry["output"].startswith("ARI refused the credentials (401)")
    assert "wrong" not in entry["output"]


async def test_ari_wrong_url_is_distinct(ari: AriDouble) -> None:
    entry = await ari_entry(ari.base_url + "/asterisk")
    assert entry["status"] == "fail"
    assert entry["output"].startswith("no ARI at")
    assert "(404)" in entry["output"]


async def test_ari_unreachable_is_distinct() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = await ari_entry(f"http://127.0.0.1:{port}")
    assert entry["status"] == "fail"
    assert entry["output"].startswith(f"ARI unreachable at http://127.0.0.1:{port}/ari")


async def test_ari_hang_is_bounded(ari: AriDouble) -> None:
    ari.hang(True)
    try:
        entry = await ari_entry(ari.base_url, timeout_s=0.3)
    finally:
        ari.hang(False)
    assert entry["status"] == "fail"
    assert "0.3s" in entry["output"] or "did not answer in time" in entry["output"]


async def test_unconfigured_ari_is_a_warning_that_says_what_to_set() -> None:
    check, client = ari_check(Settings(home=Path("/nonexistent")), 1.0)
    assert client is None
    body = await HealthMonitor("t", "1", [check]).report()
    assert body["status"] == "degraded"
    entry = body["checks"]["ari:info"][0]  # type: ignore[index]
    assert entry["status"] == "warn"
    assert "VAGENT_ARI_URL" in entry["output"] and "VAGENT_ARI_PASSWORD" in entry["output"]
