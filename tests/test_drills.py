"""Failure drills (`vagent simulate-failure`, `vagent restore`) on one fully configured stack.

External Redis, the OpenAI double, the ARI double and the real rtpengine, with
media anchored through rtpengine: every target has something to fault. Every
target in every mode must pass its own hypothesis, and every drill must leave
the stack exactly as healthy as it found it (checked around each test).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_call_flow import heard_s, live_calls, speech, wait_quiet

from conftest import (
    Configured,
    Stack,
    configured_stack,
    free_port_block,
    make_stack,
    wait_for,
)
from support.ari_double import AriDouble
from vagent.cli import control
from vagent.cli.control import ControlError, parse_duration
from vagent.cli.drill import Drill, Plan
from vagent.cli.drill_hypotheses import expectation
from vagent.cli.drill_report import Turn, regressions
from vagent.cli.health import ServiceHealth
from vagent.services.config import SERVICES, Settings

KEY = "sk-test-drills-0123456789"
PASSWORD = "ari-drills-secret"
AI_SERVICES = {"llm": "llm_service", "llm-all": "llm_service", "stt": "stt_service"}
INJECTED_IN = {
    **AI_SERVICES,
    "tts": "tts_service",
    "ari": "call_controller",
    "rtpengine": "call_controller",
}
SLOWER_MS = 300  # a slow AI provider's turn comes at least this much later than steady state
STEADY = ("before", "after")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Configured]:
    with configured_stack(
        tmp_path_factory.mktemp("drills"),
        openai_key=KEY,
        ari_password=PASSWORD,
        strict_ari=False,
        VAGENT_MEDIA_MODE="rtpengine",  # so the rtpengine drill has something to fall from
        VAGENT_TURN_BUDGET_MS="1500",  # the double answers in ms: the default budget suits
        VAGENT_DRAIN_S="3",
    ) as configured:
        up = configured.up
        assert up.returncode in (0, 1), up.stdout + up.stderr  # 1 while prompts render
        wait_for(lambda: steady(configured.stack), 40, "every service healthy")
        configured.ari.wait_for_app(timeout=10)
        yield configured


@pytest.fixture
def stack(world: Configured) -> Iterator[Stack]:
    """The shared stack, healthy before the test; the test must leave it healthy with no
    drill running (which is itself the proof that a drill cannot leave it degraded)."""
    s = world.stack
    world.ai.reset()
    wait_for(lambda: steady(s), 30, "steady state before the test")
    yield s
    wait_for(lambda: steady(s), 10, "steady state after the test: the drill left it degraded")


def healths(stack: Stack) -> dict[str, dict[str, Any]]:
    return {
        service: httpx.get(f"{stack.url(offset)}/health", timeout=5).json()
        for offset, service in enumerate(SERVICES, start=1)
    }


def steady(stack: Stack) -> bool:
    try:
        bodies = healths(stack)
    except httpx.HTTPError:
        return False
    return all(b["status"] == "healthy" for b in bodies.values())


def drill_running(stack: Stack, service: str) -> bool:
    body = healths(stack)[service]
    return bool(body["checks"]["drill:faults"][0]["status"] != "pass")


def hold(stack: Stack, target: str, duration: str = "30s") -> None:
    held = stack.vagent("simulate-failure", target, "--hold", "--duration", duration)
    assert held.returncode == 0, held.stdout + held.stderr


def drill(stack: Stack, *args: str) -> tuple[int, dict[str, Any]]:
    result = stack.vagent("simulate-failure", *args, "--json")
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON report: {result.stdout}\n{result.stderr}") from None


def events(report: dict[str, Any], service: str, check: str) -> list[str]:
    """The states `check` of `service` went to during the drill."""
    return [
        e["to"] for e in report["health_events"] if e["service"] == service and e["check"] == check
    ]


def provider(turn: dict[str, Any], stage: str) -> tuple[str | None, str | None]:
    record = turn["stages"].get(stage, {})
    return record.get("provider"), record.get("model")


def assert_evidence(target: str, mode: str, report: dict[str, Any]) -> None:
    """What each target must show, beyond the drill's own verdict."""
    turns = report["turns"]
    injected = {f["service"] for f in report["injected"]}
    assert injected == (set(SERVICES) if target == "redis" else {INJECTED_IN[target]})
    if mode == "slow":
        usual = min(report[f"steady_state_{p}"]["turn"]["first_audio_ms"] for p in STEADY)
        if target in (*AI_SERVICES, "tts"):  # late, but heard
            assert all(t["first_audio_ms"] - usual >= SLOWER_MS for t in turns), turns
        for service in injected:
            assert "warn" in events(report, service, "drill:faults")
        return
    if target == "llm":
        assert all(provider(t, "llm") == ("fallback", "openai:gpt-4o-mini") for t in turns), turns
    elif target == "llm-all":
        assert all(provider(t, "llm") == ("scripted", "scripted") for t in turns), turns
    elif target == "stt":
        assert all(t["prompt"] == "ERROR_STT" and provider(t, "stt")[0] == "none" for t in turns)
    elif target == "tts":
        assert all(provider(t, "tts") == ("local", "espeak-ng") for t in turns), turns
    elif target == "redis":
        assert not any(t["heard"] for t in turns)
        for service in SERVICES:
            seen = events(report, service, "redis:ping") + events(report, service, "breaker:redis")
            assert {"fail", "open"} & set(seen), (service, report["health_events"])
    elif target == "ari":
        assert "fail" in events(report, "call_controller", "ari:info")
        assert all(t["heard"] for t in turns)
    elif target == "rtpengine":
        assert {"warn", "fail"} & set(events(report, "call_controller", "rtpengine:ping"))
        assert all(t["heard"] for t in turns)


@pytest.mark.slow
@pytest.mark.parametrize("mode", control.MODES)
@pytest.mark.parametrize("target", control.TARGETS)
def test_every_drill_passes_its_hypothesis(stack: Stack, target: str, mode: str) -> None:
    code, report = drill(stack, target, "--mode", mode, "--turns", "1", "--recover-timeout", "30")
    assert (code, report["deviated"]) == (0, False), report["deviations"]
    assert report["hypothesis"]
    assert report["steady_state_before"]["ok"] and report["steady_state_after"]["ok"]
    assert report["time_to_recover_s"] is not None and report["time_to_recover_s"] < 30
    assert report["restored"], "the drill did not restore its fault"
    if mode != "slow" and target in INJECTED_IN:
        assert report["time_to_detect_s"] is not None, report
    assert_evidence(target, mode, report)


@pytest.mark.slow
def test_the_rich_report_names_the_fallback_and_the_verdict(stack: Stack) -> None:
    result = stack.vagent("simulate-failure", "llm", "--turns", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    for words in ("hypothesis", "fallback (openai:gpt-4o-mini)", "detected", "recovered"):
        assert words in result.stdout
    assert "hypothesis held" in result.stdout
    assert "breaker:openai-chat:gpt-4o" in result.stdout  # two turns: 4 failures, it opened


@pytest.mark.slow
def test_a_held_drill_ends_by_itself_on_time(stack: Stack) -> None:
    held = stack.vagent("simulate-failure", "tts", "--hold", "--duration", "3s", "--json")
    assert held.returncode == 0, held.stderr
    [fault] = json.loads(held.stdout)["injected"]
    assert (fault["service"], fault["target"], fault["mode"]) == ("tts_service", "tts", "error")
    assert fault["expires_at"] - fault["started_at"] == pytest.approx(3.0, abs=0.01)
    wait_for(lambda: not drill_running(stack, "tts_service"), 10, "the drill to expire")
    ended = time.time()  # no restore ran: the service dropped the fault by itself, on time
    assert fault["expires_at"] - 0.2 <= ended <= fault["expires_at"] + 3.0


@pytest.mark.slow
def test_status_shows_a_held_drill_and_restore_all_ends_it(stack: Stack) -> None:
    held = stack.vagent("simulate-failure", "llm-all", "--hold", "--duration", "2m")
    assert held.returncode == 0, held.stderr
    assert "vagent restore llm-all" in held.stdout
    shown = stack.vagent("status", "--json")
    assert shown.returncode == 1  # degraded while the drill runs
    [listed] = json.loads(shown.stdout)["drills"]
    assert (listed["service"], listed["target"]) == ("llm_service", "llm-all")
    assert 60 < listed["remaining_s"] <= 120
    assert "llm-all (error)" in stack.vagent("status").stdout
    restored = stack.vagent("restore", "--all", "--json")
    assert restored.returncode == 0, restored.stderr
    assert [f["target"] for f in json.loads(restored.stdout)["restored"]] == ["llm-all"]
    assert not drill_running(stack, "llm_service")  # at once, not at expiry
    again = stack.vagent("restore", "--all")
    assert again.returncode == 0 and "no drill was running" in again.stdout


@pytest.mark.slow
def test_a_call_during_an_ari_drill_continues_in_the_dialplan(
    stack: Stack, world: Configured
) -> None:
    ari = world.ari
    hold(stack, "ari")
    try:
        channel = ari.start_inbound_call(["inbound", "100"], answered=False)
        continued = ("POST", f"/ari/channels/{channel}/continue")
        wait_for(lambda: continued in requests(ari), 15, "the call to continue in the dialplan")
        assert ("POST", f"/ari/channels/{channel}/answer") not in requests(ari)
    finally:
        assert stack.vagent("restore", "ari").returncode == 0
    wait_for(lambda: live_calls(stack) == 0, 10, "the controller to let the call go")


@pytest.mark.slow
def test_a_call_during_a_redis_drill_hears_the_error_prompt(
    stack: Stack, world: Configured
) -> None:
    ari = world.ari
    channel = ari.start_inbound_call(["inbound", "100"], answered=False)
    greeting = wait_quiet(ari, channel)
    assert greeting > 1.0
    hold(stack, "redis")
    try:
        ari.say(channel, speech("When are you open?"))
        wait_for(lambda: heard_s(ari, channel) > greeting + 0.5, 20, "the error prompt")
        total = wait_quiet(ari, channel)
        assert total - greeting > 2.0  # "I'm sorry, something went wrong on our side..."
        continued = ("POST", f"/ari/channels/{channel}/continue")
        wait_for(lambda: continued in requests(ari), 10, "the call back in the dialplan")
    finally:
        assert stack.vagent("restore", "redis").returncode == 0
    wait_for(lambda: live_calls(stack) == 0, 10, "the controller to let the call go")


@pytest.mark.slow
def test_a_call_during_an_rtpengine_drill_falls_back_to_direct_rtp(
    stack: Stack, world: Configured
) -> None:
    ari, rtpengine = world.ari, world.rtpengine
    hold(stack, "rtpengine")
    try:
        channel = ari.start_inbound_call(["inbound", "100"], answered=False)
        assert wait_quiet(ari, channel) > 1.0  # the greeting is heard all the same...
        sources = {p.source for p in ari.rtp_log(f"{channel}-media") if p.accepted}
        assert sources and not any(
            rtpengine.port_min <= port <= rtpengine.port_max for _, port in sources
        ), sources  # ...straight from the controller, not through rtpengine
        ari.hangup(channel)
    finally:
        assert stack.vagent("restore", "rtpengine").returncode == 0
    wait_for(lambda: live_calls(stack) == 0, 10, "the controller to let the call go")


@pytest.mark.slow
def test_a_fallback_that_cannot_serve_is_a_deviation(stack: Stack, world: Configured) -> None:
    ai = world.ai
    ai.fail("chat", 500, model="gpt-4o-mini")  # the fallback model is really down too
    code, report = drill(stack, "llm", "--turns", "1", "--recover-timeout", "10")
    assert (code, report["deviated"]) == (1, True)
    [turn] = report["turns"]
    assert provider(turn, "llm")[0] == "scripted"  # the caller still heard an answer...
    assert "instead of fallback" in turn["verdict"]  # ...but not the one the hypothesis said
    assert any("llm scripted" in d for d in report["deviations"]), report["deviations"]


@pytest.mark.slow
def test_steady_state_that_does_not_come_back_is_a_deviation(
    stack: Stack, world: Configured
) -> None:
    """The primary model breaks for real during the drill: after the restore the turns are
    still served by the fallback, so steady state never comes back."""
    ai = world.ai
    args = ["llm", "--turns", "6", "--recover-timeout", "3", "--json"]
    running = popen(stack, "simulate-failure", *args)
    try:
        wait_for(lambda: drill_running(stack, "llm_service"), 30, "the drill to inject")
        ai.fail("chat", 500, model="gpt-4o")
        out, err = running.communicate(timeout=90)
    finally:
        running.kill()
        ai.reset()
    assert running.returncode == 1, err
    report = json.loads(out)
    assert report["deviated"] and report["time_to_recover_s"] is None
    assert any("steady state not back" in d for d in report["deviations"])
    assert not report["steady_state_after"]["ok"]
    # The real failure opened the primary's breaker: the end of a drill on it resets it,
    # and a turn on the primary clears serving:llm (the fixture checks both).
    hold(stack, "llm", "5s")
    assert stack.vagent("restore", "llm").returncode == 0
    probe = stack.vagent("probe", "--text", "What are your opening hours?")
    assert probe.returncode == 0, probe.stdout + probe.stderr


@pytest.mark.slow
def test_on_the_embedded_default_what_has_no_dependency_does_not_apply(tmp_path: Path) -> None:
    """No key, no Asterisk: `llm` has nothing to fault (exit 3, nothing injected), while
    `tts` faults espeak-ng and the last link, Asterisk `characters:`, serves."""
    embedded = make_stack(tmp_path)
    idle = embedded.vagent("simulate-failure", "tts")
    assert idle.returncode == 2 and "vagent is not running" in idle.stderr
    assert embedded.vagent("up", "--timeout", "60").returncode in (0, 1)  # 1: no ARI
    try:
        llm = embedded.vagent("simulate-failure", "llm")
        assert llm.returncode == 3, llm.stdout + llm.stderr
        assert "OPENAI_API_KEY" in llm.stderr and "not applicable" in llm.stderr
        code, report = drill(embedded, "tts", "--turns", "1", "--recover-timeout", "30")
        assert (code, report["deviated"]) == (0, False), report["deviations"]
        [fault] = report["injected"]
        assert fault["dependencies"] == ["espeak-ng"]
        [turn] = report["turns"]
        assert provider(turn, "tts") == ("characters", "ari:characters")
        assert turn["characters"] == [turn["reply"]]  # Asterisk would speak the reply itself
    finally:
        embedded.vagent("down")


def popen(stack: Stack, *args: str) -> subprocess.Popen[str]:
    """`vagent ARGS` in the background, like `Stack.vagent`."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "vagent"), *args],
        env=stack.env,
        cwd=stack.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def requests(ari: AriDouble) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in ari.requests]


# -- without a stack -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60), ("2m", 120), ("90", 90), ("1m30s", 90), ("1.5", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0", "0.5s", "2h", "60x", "1m 30s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_refused_token_is_one_clear_error() -> None:
    with pytest.raises(ControlError, match="was vagent restarted"):
        control._answer("llm_service", httpx.Response(401, json={"error": "wrong token"}))
    answer = control._answer("llm_service", httpx.Response(403, json={"error": "loopback"}))
    assert "loopback" in answer.error


def test_a_control_request_without_a_running_stack_says_so(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, port_base=free_port_block())
    (settings.run_dir).mkdir(parents=True)
    (settings.run_dir / "control.token").write_text("t" * 64)
    with pytest.raises(ControlError, match="vagent is not running"):
        asyncio.run(control.list_faults(settings))


def test_without_a_token_file_nothing_is_asked(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, port_base=free_port_block())
    with pytest.raises(ControlError, match="no control token"):
        asyncio.run(control.inject(settings, "llm", "error", 60))


def health_of(status: str, **checks: str) -> ServiceHealth:
    return ServiceHealth(
        "llm_service", "", status, {n: {"status": s, "output": s} for n, s in checks.items()}
    )


def test_regressions_compare_with_the_baseline_not_with_perfection() -> None:
    baseline = {"llm_service": health_of("degraded", **{"prompts:cache": "warn"})}
    same = {"llm_service": health_of("degraded", **{"prompts:cache": "warn"})}
    assert regressions(baseline, same) == []
    worse = {"llm_service": health_of("unhealthy", **{"redis:ping": "fail"})}
    assert len(regressions(baseline, worse)) == 2  # the check and the service status
    drilling = {"llm_service": health_of("degraded", **{"drill:faults": "warn"})}
    assert regressions(baseline, drilling) == ["llm_service drill:faults warn (was pass)"]


def test_a_turn_is_judged_against_the_hypothesis(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    plan = Plan("llm", "error", 60)
    run = Drill(settings, plan)
    run.expected_kind = "fallback"
    served = {"llm": {"provider": "fallback", "model": "openai:gpt-4o-mini"}}
    assert run._judge(Turn("fault", 0.1, True, 300.0, served, "We open at nine.")) == ""
    scripted = {"llm": {"provider": "scripted", "model": "scripted"}}
    verdict = run._judge(Turn("fault", 0.1, True, 300.0, scripted, "We open at nine."))
    assert verdict == "llm scripted instead of fallback"
    assert "nothing" in run._judge(Turn("fault", 0.1, False, None, {}, ""))
    assert expectation("redis", "error").answered is False
    assert expectation("tts", "slow").stage is None
