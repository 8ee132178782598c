"""What every service process has in common: settings, logs, the HTTP app,
its asyncio workers, and a clean exit.

A service module only declares a `ServiceSpec` (its checks, workers and
drill targets); `serve` does the rest, so the four processes behave alike
under supervisord: /health, /metrics, and the control API (control.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from vagent import __version__
from vagent.services import metrics
from vagent.services.bus import Bus, Consumer, ConsumerConfig, Handler
from vagent.services.config import ConfigError, Settings, load_settings
from vagent.services.control import ControlApi, drill_check
from vagent.services.control_token import token_path
from vagent.services.health import Check, CheckResult, CheckStatus, HealthMonitor, http_status
from vagent.services.logs import configure_logging
from vagent.services.redis_client import RedisStore
from vagent.services.resilience import Dependency

log = logging.getLogger("vagent.runtime")

EX_CONFIG = 78  # sysexits.h: configuration error; supervisord marks the program FATAL

HEARTBEAT_INTERVAL_S = 2.0


Job = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class ServiceSpec:
    """What a service declares: its dependency checks, workers and cleanup, and
    which of its dependencies each drill target faults (`redis` is added for all)."""

    checks: list[Check]
    workers: list[Job] = field(default_factory=list)
    cleanup: list[Job] = field(default_factory=list)
    drain: Job | None = None  # on shutdown, while the workers still run
    fault_targets: dict[str, list[str]] = field(default_factory=dict)


Builder = Callable[[Settings, RedisStore], ServiceSpec]


def embedded_note(settings: Settings, engine: str) -> str:
    """How a local engine serves: as the embedded default, or as the fallback."""
    if settings.uses_openai:
        return f"local fallback {engine}"
    return f"embedded default {engine} (no OPENAI_API_KEY)"


def local_engine_check(
    settings: Settings, name: str, probe: Callable[[], Awaitable[CheckResult]]
) -> Check:
    """Without a key the local engine is all there is (fail); with one it is a fallback (warn)."""
    failure: CheckStatus = "warn" if settings.uses_openai else "fail"
    return Check(name, "component", probe, settings.health_timeout_s, 10.0, failure)


class Engine(Protocol):
    name: str


def drill_name(engine: Engine) -> str:
    """The name a drill faults a provider by: its policy's dependency when it has one,
    else the engine itself (a local engine meets the drill in `walk`, by link name)."""
    dependency = getattr(engine, "dependency", None)
    return dependency.policy.name if isinstance(dependency, Dependency) else engine.name


def instance_id(service: str) -> str:
    return f"{service}@{socket.gethostname()}:{os.getpid()}"


def heartbeat_worker(service: str, store: RedisStore) -> Job:
    """Write a short-lived liveness key to Redis through the policy layer.

    It lets any host see which replicas are alive, and it keeps the Redis
    breaker honest: when Redis goes away the breaker opens and /health shows it.
    """
    key = f"vagent:heartbeat:{instance_id(service)}"

    async def run() -> None:
        while True:
            try:
                await store.call(lambda r: r.set(key, __version__, ex=10))
                metrics.WORKER_BEATS.labels("ok").inc()
            except Exception as exc:
                metrics.WORKER_BEATS.labels("failed").inc()
                log.warning("heartbeat to redis failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    return run


def consumer_worker(service: str, store: RedisStore, stream: str, handler: Handler) -> Job:
    """A bus consumer in the service's group: replicas of a service share the work."""
    config = ConsumerConfig(stream=stream, group=service, consumer=instance_id(service))
    return Consumer(Bus(store), config, handler).run


def create_app(service: str, monitor: HealthMonitor, control: ControlApi | None = None) -> FastAPI:
    app = FastAPI(title=f"vagent {service}", version=__version__, docs_url=None, redoc_url=None)
    if control is not None:
        control.mount(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = await monitor.report()
        return JSONResponse(body, status_code=http_status(body["status"]))  # type: ignore[arg-type]

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass", "service": service}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


async def _run_workers(workers: list[Job]) -> None:
    """A worker that dies takes the process with it: supervisord restarts it and counts it."""
    tasks = [asyncio.create_task(w()) for w in workers]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.critical("worker crashed: %r", task.exception())
            os._exit(70)


def bind_port(service: str, settings: Settings) -> socket.socket:
    """The service's port, bound before anything else starts.

    uvicorn binds only after the application has started, so a port in use would
    first start the workers: a controller would register the Stasis app and take
    over calls, only to exit a moment later. Bound first, the process stops at once
    and says which port and what to change.
    """
    host, port = settings.bind_host, settings.service_port(service)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        offset = port - settings.port_base
        raise ConfigError(
            f"cannot listen on {host}:{port} (VAGENT_PORT_BASE + {offset}): {exc.strerror}; "
            f"stop what holds it (`ss -ltnp 'sport = :{port}'`) or set VAGENT_PORT_BASE to "
            "the first of five free ports"
        ) from exc
    return sock


async def _serve(service: str, settings: Settings, build: Builder, sock: socket.socket) -> None:
    store = RedisStore(settings.effective_redis_url)
    spec = build(settings, store)
    checks = [*store.checks(settings.health_timeout_s), *spec.checks, drill_check()]
    monitor = HealthMonitor(service, __version__, checks)
    targets = {"redis": [store.dependency.policy.name], **spec.fault_targets}
    control = ControlApi(service, targets, token_path(settings))
    workers = [heartbeat_worker(service, store), *spec.workers]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        supervisor = asyncio.create_task(_run_workers(workers))
        log.info("%s %s ready on %s", service, __version__, settings.service_url(service))
        try:
            yield
        finally:
            if spec.drain is not None:
                await spec.drain()
            supervisor.cancel()
            for cleanup in spec.cleanup:
                await cleanup()
            await store.close()

    app = create_app(service, monitor, control)
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    await uvicorn.Server(config).serve(sockets=[sock])


def serve(service: str, build: Builder) -> None:
    """Entry point of a service process."""
    try:
        settings = load_settings()
        sock = bind_port(service, settings)
    except ConfigError as error:
        print(f"{service}: configuration error:\n{error}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    configure_logging(service, settings.log_format, settings.log_level, settings.secrets())
    asyncio.run(_serve(service, settings, build, sock))
