"""call_controller: Asterisk over ARI, media, RTPEngine.

This module declares what the controller depends on; the call flow itself
lives beside it.
"""

from __future__ import annotations

import time

from vagent.services.call_controller.ari import AriClient, AriError
from vagent.services.config import Settings
from vagent.services.health import Check, CheckResult
from vagent.services.redis_client import RedisStore
from vagent.services.rtpengine import RtpEngineClient, RtpEngineError, parse_ng_address
from vagent.services.runtime import ServiceSpec, serve

NAME = "call_controller"


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

    client = AriClient(
        settings.ari_url, settings.ari_user, settings.ari_password.get_secret_value(), timeout_s
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

    return Check("ari:info", "component", probe, timeout_s, cache_s=1.0), client


def rtpengine_check(address: str, timeout_s: float) -> Check:
    host, port = parse_ng_address(address)
    client = RtpEngineClient(host, port, timeout_s)

    async def probe() -> CheckResult:
        try:
            return CheckResult("pass", "pong", await client.ping(), "ms")
        except RtpEngineError as exc:
            return CheckResult("fail", f"rtpengine at {address}: {exc}")

    return Check("rtpengine:ping", "component", probe, timeout_s, cache_s=1.0)


def build(settings: Settings, store: RedisStore) -> ServiceSpec:
    timeout = settings.health_timeout_s
    check, client = ari_check(settings, timeout)
    checks = [check]
    if settings.rtpengine_ng:
        checks.append(rtpengine_check(settings.rtpengine_ng, timeout))
    cleanup = [client.aclose] if client is not None else []
    return ServiceSpec(checks=checks, cleanup=cleanup)


def main() -> None:
    serve(NAME, build)
