"""call_controller: Asterisk over ARI, media, RTPEngine.

This module wires the controller: the ARI client and events link, the calls,
the local prompts (played when the bus cannot deliver), and the health checks.
"""

from __future__ import annotations

import time

from vagent.services.bus import Bus
from vagent.services.call_controller.anchor import RtpEngineAnchor
from vagent.services.call_controller.ari import AriClient, AriError
from vagent.services.call_controller.call import CallContext
from vagent.services.call_controller.controller import Controller
from vagent.services.call_controller.events import AriEvents
from vagent.services.config import Settings
from vagent.services.health import Check, CheckFailed, CheckResult, breaker_check
from vagent.services.redis_client import RedisStore
from vagent.services.responses import load_responses
from vagent.services.rtpengine import RtpEngineClient, RtpEngineError, parse_ng_address
from vagent.services.runtime import ServiceSpec, serve
from vagent.services.tts_service.engines import EspeakTts
from vagent.services.tts_service.prompts import PromptCache, prompts_directory

NAME = "call_controller"
PROMPT_RENDER_BUDGET_S = 10.0


def ari_check(settings: Settings, timeout_s: float) -> tuple[Check, AriClient | None]:
    """Without ARI settings the controller cannot take calls: say so, as a warning."""
    if settings.ari_url is None or settings.ari_password is None:

        async def unconfigured() -> CheckResult:
            return CheckResult(
                "warn",
                "ARI not configured: set VAGENT_ARI_URL, VAGENT_ARI_USER and VAGENT_ARI_PASSWORD "
                "to take calls",
            )

        return Check("ari:info", "component", unconfigured, timeout_s, cache_s=60.0), None

    # One client for the probe and the call flow; the check's own timeout bounds the probe.
    client = AriClient(
        settings.ari_url, settings.ari_user, settings.ari_password.get_secret_value()
    )

    async def probe() -> CheckResult:
        start = time.perf_counter()
        try:
            info = await client.asterisk_info()
        except AriError as exc:
            return CheckResult("fail", str(exc))
        ms = (time.perf_counter() - start) * 1000
        version = info.get("system", {}).get("version", "unknown")
        return CheckResult("pass", f"Asterisk {version}", ms, "ms")

    check = Check(
        "ari:info",
        "component",
        probe,
        timeout_s,
        cache_s=1.0,
        dependency=client.dependency.policy.name,
    )
    return check, client


def events_check(events: AriEvents, controller: Controller) -> Check:
    async def probe() -> CheckResult:
        calls = len(controller.calls)
        if events.connected.is_set():
            return CheckResult("pass", f"events connected, {calls} live calls", calls, "calls")
        since = events.disconnected_at
        down = f" for {time.monotonic() - since:.0f}s" if since is not None else ""
        why = f": {events.last_error}" if events.last_error else ""
        return CheckResult("fail", f"events websocket down{down}{why}")

    return Check("ari:events", "component", probe, timeout_s=0.5, cache_s=0.0)


def rtpengine_check(address: str, timeout_s: float) -> Check:
    """rtpengine down is a warning: every call falls back to direct RTP (degraded, not down).

    A drill on rtpengine reaches this probe through `RtpEngineClient.request`,
    like every ng command, so the check names no `dependency` of its own.
    """
    host, port = parse_ng_address(address)
    client = RtpEngineClient(host, port, timeout_s)

    async def probe() -> CheckResult:
        try:
            return CheckResult("pass", "pong", await client.ping(), "ms")
        except RtpEngineError as exc:
            raise CheckFailed(f"rtpengine at {address}: {exc}") from None

    return Check("rtpengine:ping", "component", probe, timeout_s, cache_s=1.0, failure="warn")


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    timeout = settings.health_timeout_s
    check, ari = ari_check(settings, timeout)
    spec = ServiceSpec(checks=[check])
    if settings.rtpengine_ng:
        spec.checks.append(rtpengine_check(settings.rtpengine_ng, timeout))
        spec.fault_targets["rtpengine"] = [RtpEngineClient.name]
    if ari is None or settings.ari_url is None or settings.ari_password is None:
        return spec
    spec.fault_targets["ari"] = [ari.dependency.policy.name]
    password = settings.ari_password.get_secret_value()
    prompts = PromptCache(
        load_responses(settings.fallback_responses), [EspeakTts()], prompts_directory(settings.home)
    )
    anchor = None
    if settings.media_mode == "rtpengine" and settings.rtpengine_ng:
        host, port = parse_ng_address(settings.rtpengine_ng)
        anchor = RtpEngineAnchor(RtpEngineClient(host, port, timeout_s=2.0))
    context = CallContext(settings, ari, store, Bus(store), prompts, anchor)
    controller = Controller(context)
    events = AriEvents(
        settings.ari_url,
        settings.ari_user,
        password,
        settings.ari_app,
        controller.on_event,
        on_connect=controller.reconcile,
    )

    async def warm_prompts() -> None:
        await prompts.warm(PROMPT_RENDER_BUDGET_S)

    async def drain() -> None:
        await controller.drain(settings.drain_s)
        if anchor is not None:
            await anchor.wait_cleanups()

    spec.checks += [events_check(events, controller), breaker_check(ari.dependency.breaker)]
    spec.workers += [events.run, warm_prompts]
    spec.cleanup.append(ari.aclose)
    spec.drain = drain
    return spec


def main() -> None:
    serve(NAME, build)
