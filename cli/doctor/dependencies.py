"""Doctor checks of vagent's dependencies: Asterisk ARI, Redis, RTPEngine and OpenAI.

Each check establishes its facts in order (reachable, credentials, version,
configuration) and stops at the first that fails: when ARI refuses the
password there is no version to report, and one precise red line beats a
cascade of guesses. Every network operation is bounded here, by what is left
of the check's budget (the context's timeout, see `_Budget`), so a hanging
dependency reads "no answer within 1s" before the runner's backstop cuts the
whole group with nothing to show.

Doctor never writes: the probes are GETs, PING, INFO, an ng `ping` and model
lookups. Findings go through `_scrub` before they leave, so no API key, ARI
password or Redis password reaches the screen or `--json`, whatever a client
library put in an error message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import openai
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import NoPermissionError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vagent.cli.doctor.model import DoctorCheck, DoctorContext, Finding, Status
from vagent.cli.supervisor import Supervisor
from vagent.services.call_controller.ari import AriClient, AriError
from vagent.services.config import Settings, url_passwords
from vagent.services.logs import scrubber
from vagent.services.openai_client import make_client
from vagent.services.redis_client import connect
from vagent.services.rtpengine import (
    RtpEngineClient,
    RtpEngineError,
    RtpEngineProtocolError,
    RtpEngineTimeoutError,
)

T = TypeVar("T")
Run = Callable[[DoctorContext], Awaitable[list[Finding]]]


@dataclasses.dataclass(frozen=True)
class _Group:
    """One dependency's findings: ids dotted under its name, all pointing at its runbook."""

    name: str
    runbook: str

    def __call__(
        self, id_: str, status: Status, output: str, observed: Any = None, fix: str = ""
    ) -> Finding:
        return Finding(f"{self.name}.{id_}", status, output, observed, fix, self.runbook)


_ari = _Group("ari", "asterisk-ari.md")
_redis = _Group("redis", "redis.md")
_rtpengine = _Group("rtpengine", "rtpengine.md")
_openai = _Group("openai", "openai.md")


# XAUTOCLAIM (6.2) is how a crashed consumer's turns are handed to another.
MIN_REDIS_VERSION = (6, 2)
# A caller turn crosses Redis about ten times in sequence (publish, claim, ack,
# history, reply, per stage): at 20 ms a round trip that is ~200 ms, over a
# tenth of the default 1500 ms turn budget gone before any AI work. Redis on
# the same host or LAN answers in well under 1 ms.
REDIS_LATENCY_WARN_MS = 20.0
# Above this share of maxmemory a burst of calls can fill Redis.
REDIS_MEMORY_WARN_RATIO = 0.9

Cause = Literal["timeout", "refused", "dns", "missing", "other"]

_TIMEOUT_ERRORS = (
    TimeoutError,
    httpx.TimeoutException,
    RedisTimeoutError,
    RtpEngineTimeoutError,
    openai.APITimeoutError,
)


# --------------------------------------------------------------------------- shared helpers


def _cause(exc: BaseException) -> Cause:
    """What went wrong on the network, read from the whole exception chain.

    Clients wrap the operating system's error (httpx -> httpcore -> OSError,
    redis-py -> OSError), so the class on top says "connection error" while
    the root says "refused" or "no such host": the admin's fix differs.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return "dns"
        if isinstance(current, ConnectionRefusedError):
            return "refused"
        if isinstance(current, FileNotFoundError):
            return "missing"
        if isinstance(current, _TIMEOUT_ERRORS):
            return "timeout"
        current = current.__cause__ or current.__context__
    return "other"


def _reason(exc: BaseException, timeout_s: float) -> str:
    """A short, distinct phrase for each way a connection fails."""
    phrases: dict[Cause, str] = {
        "timeout": f"no answer within {timeout_s:g}s",
        "refused": "connection refused",
        "dns": "cannot resolve the host name",
        "missing": "no such socket file",
    }
    cause = _cause(exc)
    if cause != "other":
        return phrases[cause]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclasses.dataclass(frozen=True)
class _Budget:
    """One run of a check: its context, and the deadline all its operations share.

    The runner cuts a group shortly after ctx.timeout_s. A check makes several
    round trips (connect, PING, INFO, ...), so each gets what is left of that
    budget rather than a fresh timeout: the check ends in time to say which
    one did not answer, instead of being cut with nothing to show. httpx and
    redis-py time each phase (connect, each read) on their own, so a server
    that drips bytes could outlast them; this bound holds whatever they do.
    """

    ctx: DoctorContext
    deadline: float  # in the event loop's clock

    @classmethod
    def start(cls, ctx: DoctorContext) -> _Budget:
        return cls(ctx, asyncio.get_running_loop().time() + ctx.timeout_s)

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def timeout_s(self) -> float:
        return self.ctx.timeout_s

    async def bounded(self, operation: Awaitable[T]) -> T:
        async with asyncio.timeout_at(self.deadline):
            return await operation

    async def timed(self, operation: Awaitable[T]) -> tuple[T, float]:
        """The result of a bounded operation and its duration in milliseconds."""
        start = time.perf_counter()
        result = await self.bounded(operation)
        return result, round((time.perf_counter() - start) * 1000, 2)


async def _vagent_up(budget: _Budget) -> bool:
    """Whether vagent's supervisord runs: it tells "not started yet" (warn) from "broken" (fail).

    `Supervisor.is_running` is a blocking XML-RPC call, so it runs in a thread
    (the runner's executor leaves a hung one behind); no answer in time counts
    as not up.
    """
    try:
        return await budget.bounded(asyncio.to_thread(Supervisor(budget.settings).is_running))
    except TimeoutError:
        return False


def redact_url(url: str) -> str:
    """`url` with its password (user info or `?password=`) replaced by `***`, fit to print."""
    parts = urlsplit(url)
    if not url_passwords(url):
        return url  # unchanged: urlunsplit would also turn unix:///path into unix:/path
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _scrub(findings: list[Finding], settings: Settings) -> list[Finding]:
    """Every secret of the settings out of the findings' text (a last line of defence)."""
    scrub = scrubber(settings.secrets())

    def clean(value: Any) -> Any:
        return scrub(value) if isinstance(value, str) else value

    return [
        dataclasses.replace(f, output=clean(f.output), fix=clean(f.fix), observed=clean(f.observed))
        for f in findings
    ]


def _check(run: Callable[[_Budget], Awaitable[list[Finding]]]) -> Run:
    """`run` as a doctor check: within one budget, and scrubbed of the settings' secrets."""

    async def check(ctx: DoctorContext) -> list[Finding]:
        return _scrub(await run(_Budget.start(ctx)), ctx.settings)

    check.__doc__ = run.__doc__
    return check


# --------------------------------------------------------------------------- ARI

_ARI_NETWORK_FIX: dict[Cause, str] = {
    "refused": "start Asterisk, and in http.conf set enabled = yes and bindaddr/bindport to this "
    "address (`asterisk -rx 'http show status'` must say Server Enabled and Bound)",
    "dns": "fix the host name in VAGENT_ARI_URL",
    "timeout": "is Asterisk running and responsive (`asterisk -rx 'core show uptime'`), or does "
    "a firewall drop the port of VAGENT_ARI_URL?",
}
_ARI_URL_FIX = (
    "set VAGENT_ARI_URL to Asterisk's HTTP server (http.conf bindaddr:bindport), "
    "e.g. http://127.0.0.1:8088"
)


async def run_ari(budget: _Budget) -> list[Finding]:
    """ARI reachable, credentials accepted, Asterisk's version, and the Stasis app registered."""
    settings = budget.settings
    if settings.ari_url is None or settings.ari_password is None:
        return [
            _ari(
                "configured",
                "warn",
                "ARI not configured: calls cannot reach vagent",
                fix="set VAGENT_ARI_URL, VAGENT_ARI_USER and VAGENT_ARI_PASSWORD "
                "(a user of ari.conf)",
            )
        ]
    password = settings.ari_password.get_secret_value()
    client = AriClient(settings.ari_url, settings.ari_user, password, timeout_s=budget.timeout_s)
    try:
        return await _ari_findings(budget, client)
    finally:
        await client.aclose()


async def _ari_findings(budget: _Budget, client: AriClient) -> list[Finding]:
    try:
        info, ms = await budget.timed(client.asterisk_info())
    except (AriError, TimeoutError) as exc:
        return [_ari_info_failure(budget, client.root, exc)]
    user = budget.settings.ari_user
    version = str(info.get("system", {}).get("version", "unknown"))
    return [
        _ari("reachable", "pass", f"ARI answers at {client.root} in {ms:.1f} ms", ms),
        _ari("credentials", "pass", f"ARI accepted the credentials of user {user}", user),
        _ari("version", "pass", f"Asterisk {version}", version),
        await _ari_app(budget, client),
    ]


def _ari_info_failure(budget: _Budget, root: str, exc: AriError | TimeoutError) -> Finding:
    """401, 404 and a dead port need different fixes: say which one it is."""
    status = exc.status if isinstance(exc, AriError) else None
    user = budget.settings.ari_user
    if status == 401:
        return _ari(
            "credentials",
            "fail",
            f"ARI refused the credentials of user {user} (401)",
            user,
            f"set VAGENT_ARI_PASSWORD to the password of [{user}] in ari.conf; the section "
            f"needs type = user (`asterisk -rx 'ari show users'` must list {user})",
        )
    if status == 404:
        return _ari(
            "reachable",
            "fail",
            f"HTTP answers but ARI is not served at {root}: "
            "ari.conf enabled = no, missing or invalid",
            404,
            "in ari.conf set enabled = yes under [general] and fix any parse error "
            "(`asterisk -rx 'ari show status'` must say Enabled: Yes), then "
            "`asterisk -rx 'module reload res_ari.so'`; if that URL is not Asterisk's "
            "HTTP server, fix VAGENT_ARI_URL",
        )
    if status is not None and status < 400:  # a 200 that is not ARI's JSON: another server
        output = f"{root}/asterisk/info answers, but not with ARI's JSON"
        return _ari("reachable", "fail", output, status, _ARI_URL_FIX)
    if status is not None:
        fix = "see Asterisk's log (/var/log/asterisk/messages)" if status >= 500 else _ARI_URL_FIX
        return _ari("reachable", "fail", str(exc), status, fix)
    cause = _cause(exc)
    output = f"ARI unreachable at {root}: {_reason(exc, budget.timeout_s)}"
    return _ari("reachable", "fail", output, cause, _ARI_NETWORK_FIX.get(cause, _ARI_URL_FIX))


async def _ari_app(budget: _Budget, client: AriClient) -> Finding:
    """The Stasis app exists while call_controller holds its events websocket."""
    app = budget.settings.ari_app
    try:
        body = await budget.bounded(client.request("GET", f"/applications/{quote(app, safe='')}"))
    except (AriError, TimeoutError) as exc:
        if isinstance(exc, AriError) and exc.status == 404:
            return await _ari_app_missing(budget)
        reason = _reason(exc, budget.timeout_s)
        return _ari("app", "fail", f"could not read Stasis app {app}: {reason}", app, _ARI_URL_FIX)
    channels = len(body.get("channel_ids", [])) if isinstance(body, dict) else 0
    return _ari("app", "pass", f"Stasis app {app} registered ({channels} channels in it)", app)


async def _ari_app_missing(budget: _Budget) -> Finding:
    app = budget.settings.ari_app
    if await _vagent_up(budget):
        return _ari(
            "app",
            "fail",
            f"vagent is up but the Stasis app {app} is not registered: "
            "call_controller has not connected to ARI",
            app,
            "see `vagent logs call_controller` (events websocket errors); VAGENT_ARI_APP "
            f"must match Stasis({app}) in the dialplan",
        )
    return _ari(
        "app",
        "warn",
        f"Stasis app {app} not registered: it registers when call_controller connects",
        app,
        "run `vagent up`",
    )


# --------------------------------------------------------------------------- Redis

_REDIS_NETWORK_FIX: dict[Cause, str] = {
    "refused": "is redis-server running and listening there (`ss -ltnp`; bind and port in "
    "redis.conf), or does a firewall reject the port?",
    "dns": "fix the host name in VAGENT_REDIS_URL",
    "timeout": "is Redis overloaded or blocked (`redis-cli --latency`, `SLOWLOG GET`), or does a "
    "firewall drop the packets?",
    "missing": "the socket file does not exist: is redis-server running with that unixsocket?",
}
_REDIS_URL_FIX = (
    'test the URL from this host: `redis-cli -u "$VAGENT_REDIS_URL" ping` must print PONG'
)
_NOEVICTION_FIX = (
    "`redis-cli config set maxmemory-policy noeviction`, and set maxmemory-policy noeviction "
    "in redis.conf so it survives a restart"
)
# What each family of eviction policies may drop, in vagent's terms.
_EVICTABLE = {
    "allkeys": "any key, including the streams that queue callers' turns",
    "volatile": "keys with a TTL: the reply streams, de-duplication marks and conversation "
    "history of live calls",
}


def _has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password or url_passwords(url))


async def run_redis(budget: _Budget) -> list[Finding]:
    """Redis reachable and fast, credentials accepted, version >= 6.2, nothing evicted."""
    url = budget.settings.effective_redis_url
    client = connect(url, budget.timeout_s)
    try:
        return await _redis_findings(budget, client, url)
    finally:
        await client.aclose()


async def _redis_findings(budget: _Budget, client: Redis, url: str) -> list[Finding]:
    shown = redact_url(url)
    try:
        latency = await _redis_latency(budget, client)
    except RedisAuthenticationError:
        return [_redis_auth_failure(shown, url)]
    except (RedisError, OSError) as exc:  # TimeoutError is an OSError
        return [await _redis_unreachable(budget, shown, exc)]
    findings = [_redis_latency_finding(shown, latency)]
    if _has_credentials(url):
        findings.append(
            _redis("auth", "pass", "Redis accepted the credentials of VAGENT_REDIS_URL")
        )
    try:
        info = await budget.bounded(client.info())  # the default sections: server, memory, ...
    except NoPermissionError:
        return [*findings, _redis_info_refused()]
    except (RedisError, OSError) as exc:
        reason = _reason(exc, budget.timeout_s)
        return [
            *findings,
            _redis("info", "fail", f"Redis INFO failed: {reason}", fix=_REDIS_URL_FIX),
        ]
    return [
        *findings,
        _redis_version_finding(info),
        _redis_eviction_finding(info),
        _redis_maxmemory_finding(info),
    ]


async def _redis_latency(budget: _Budget, client: Redis) -> float:
    """Median of three PINGs on an open connection, in ms.

    The first PING also connects and authenticates, which is not the round trip
    a turn pays; the median ignores one scheduling hiccup.
    """
    await budget.bounded(client.ping())
    samples = [(await budget.timed(client.ping()))[1] for _ in range(3)]
    return round(statistics.median(samples), 2)


def _redis_latency_finding(shown: str, ms: float) -> Finding:
    output = f"Redis at {shown} answers PING in {ms:.2f} ms"
    if ms <= REDIS_LATENCY_WARN_MS:
        return _redis("reachable", "pass", output, ms)
    return _redis(
        "reachable",
        "warn",
        f"{output}, over {REDIS_LATENCY_WARN_MS:g} ms: a caller turn makes about ten Redis "
        "round trips in sequence",
        ms,
        "run Redis next to vagent (same host or LAN), or find what slows it: "
        "`redis-cli --latency`, `SLOWLOG GET`",
    )


def _redis_auth_failure(shown: str, url: str) -> Finding:
    """NOAUTH (no password sent) and WRONGPASS (a wrong one) have different fixes."""
    if _has_credentials(url):
        return _redis(
            "auth",
            "fail",
            f"Redis at {shown} rejected the credentials of VAGENT_REDIS_URL (WRONGPASS)",
            fix="put the right user and password in VAGENT_REDIS_URL: "
            "redis://user:password@host:6379/0 (or redis://:password@... for requirepass)",
        )
    return _redis(
        "auth",
        "fail",
        f"Redis at {shown} requires a password (NOAUTH) and VAGENT_REDIS_URL has none",
        fix="put the password in VAGENT_REDIS_URL: redis://:password@host:6379/0",
    )


async def _redis_unreachable(budget: _Budget, shown: str, exc: BaseException) -> Finding:
    """The embedded Redis exists only while vagent is up: not started is not broken."""
    cause = _cause(exc)
    reason = _reason(exc, budget.timeout_s)
    if budget.settings.embedded_redis and cause in ("missing", "refused"):
        if await _vagent_up(budget):
            return _redis(
                "reachable",
                "fail",
                f"vagent is up but its embedded redis-server does not answer at {shown}: {reason}",
                cause,
                "`vagent logs redis -n 50` says why; then `vagent restart redis`",
            )
        return _redis(
            "reachable",
            "warn",
            "embedded redis-server not running: start vagent with `vagent up`",
            cause,
            "run `vagent up` (the embedded redis-server runs while vagent is up)",
        )
    output = f"Redis unreachable at {shown}: {reason}"
    return _redis("reachable", "fail", output, cause, _REDIS_NETWORK_FIX.get(cause, _REDIS_URL_FIX))


def _redis_info_refused() -> Finding:
    return _redis(
        "info",
        "unknown",
        "this Redis user may not run INFO: version and eviction policy not checked",
        fix="allow it: `ACL SETUSER <user> +info`, or check by hand with an admin user",
    )


def _parse_version(text: str) -> tuple[int, int] | None:
    major, _, rest = text.partition(".")
    minor = rest.partition(".")[0]
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def _redis_version_finding(info: dict[str, Any]) -> Finding:
    text = str(info.get("redis_version", ""))
    version = _parse_version(text)
    if version is None:
        return _redis(
            "version",
            "unknown",
            f"INFO gives no usable redis_version ({text!r})",
            text,
            'check it by hand: `redis-cli -u "$VAGENT_REDIS_URL" info server`',
        )
    if version < MIN_REDIS_VERSION:
        return _redis(
            "version",
            "fail",
            f"Redis {text} is too old: vagent needs 6.2 or later (XAUTOCLAIM hands a crashed "
            "consumer's turns to another)",
            text,
            "upgrade Redis to 6.2 or later (Debian 12 ships 7.0: `apt-get install redis-server`)",
        )
    return _redis("version", "pass", f"Redis {text} (6.2 or later)", text)


def _redis_eviction_finding(info: dict[str, Any]) -> Finding:
    """Eviction would drop vagent's keys silently; a full Redis without it fails loudly.

    INFO memory carries maxmemory_policy in every Redis vagent supports, needs
    no admin rights and still answers where CONFIG is renamed or blocked
    (managed services), so it is read instead of CONFIG GET. volatile-*
    policies are no safer than allkeys-* for vagent: its per-call reply
    streams and de-duplication marks carry TTLs, and losing them loses the
    answers of live calls. With maxmemory 0 nothing is evicted yet.
    """
    policy = str(info.get("maxmemory_policy", "unknown"))
    limit = int(info.get("maxmemory", 0))
    if policy == "noeviction":
        return _redis("eviction", "pass", "maxmemory-policy noeviction: no key is evicted", policy)
    evictable = _EVICTABLE.get(policy.partition("-")[0])
    if evictable is None:
        output = f"unknown maxmemory-policy {policy}: it may evict vagent's keys"
        return _redis("eviction", "warn", output, policy, _NOEVICTION_FIX)
    output = f"maxmemory-policy {policy} lets Redis evict {evictable} when memory is full"
    if limit == 0:
        output += ": not yet (maxmemory 0, no limit), but as soon as a limit is set"
    return _redis("eviction", "fail" if limit else "warn", output, policy, _NOEVICTION_FIX)


def _redis_maxmemory_finding(info: dict[str, Any]) -> Finding:
    limit = int(info.get("maxmemory", 0))
    if limit == 0:
        output = (
            "no maxmemory limit: Redis may grow to the host's memory "
            "(vagent caps its streams and expires per-call keys)"
        )
        return _redis("maxmemory", "pass", output, 0)
    shown_limit = str(info.get("maxmemory_human", f"{limit} bytes"))
    percent = round(100 * int(info.get("used_memory", 0)) / limit, 1)
    output = f"Redis uses {percent:g}% of maxmemory {shown_limit}"
    if percent < 100 * REDIS_MEMORY_WARN_RATIO:
        return _redis("maxmemory", "pass", output, percent)
    return _redis(
        "maxmemory",
        "warn",
        f"{output}: once full it refuses writes (or evicts keys) and turns fail",
        percent,
        "raise maxmemory (`redis-cli config set maxmemory 1gb`, and in redis.conf), or find "
        "what fills it: `redis-cli --bigkeys`",
    )


# --------------------------------------------------------------------------- RTPEngine

_RTPENGINE_FIX = (
    "is rtpengine running (`systemctl status rtpengine-daemon`)? VAGENT_RTPENGINE_NG must be "
    "its listen-ng address (/etc/rtpengine/rtpengine.conf)"
)


async def run_rtpengine(budget: _Budget) -> list[Finding]:
    """rtpengine's ng control port answers a ping (when it is configured)."""
    settings = budget.settings
    if not settings.rtpengine_ng:
        return [_rtpengine_unconfigured(settings)]
    # Settings validated the address with the same parser: from_address cannot refuse it.
    async with RtpEngineClient.from_address(settings.rtpengine_ng, budget.timeout_s) as client:
        try:
            ms = round(await budget.bounded(client.ping()), 2)
        except (RtpEngineError, TimeoutError) as exc:
            return [_rtpengine_failure(budget, client.address, exc)]
    output = f"rtpengine at {client.address} answers ng ping in {ms:.2f} ms"
    return [_rtpengine("ping", "pass", f"{output} (media mode {settings.media_mode})", ms)]


def _rtpengine_unconfigured(settings: Settings) -> Finding:
    """Direct media needs no rtpengine. Media mode rtpengine without an address is
    refused by config validation; should it get here anyway, it is a warning."""
    mode = settings.media_mode
    output = f"rtpengine not configured (media mode {mode})"
    if mode == "direct":
        return _rtpengine("configured", "pass", output, mode)
    fix = "set VAGENT_RTPENGINE_NG to rtpengine's listen-ng host:port"
    return _rtpengine("configured", "warn", output, mode, fix)


def _rtpengine_failure(budget: _Budget, address: str, exc: BaseException) -> Finding:
    cause = _cause(exc)
    if cause == "refused":
        reason = "nothing listens on that UDP port (ICMP port unreachable)"
    elif cause == "timeout":
        reason = f"no answer to ng ping within {budget.timeout_s:g}s"
    else:
        reason = _reason(exc, budget.timeout_s)
    if isinstance(exc, RtpEngineProtocolError):
        fix = "that address answers, but not in rtpengine's ng protocol: " + _RTPENGINE_FIX
    elif cause == "dns":
        fix = "fix the host name in VAGENT_RTPENGINE_NG"
    else:
        fix = _RTPENGINE_FIX
    output = f"rtpengine at {address}: {reason} (media mode {budget.settings.media_mode})"
    return _rtpengine("ping", "fail", output, cause, fix)


# --------------------------------------------------------------------------- OpenAI


@dataclasses.dataclass(frozen=True)
class _ModelUse:
    """One configured model: where it is used, and the variable an admin edits to change it."""

    role: str
    variable: str
    model: str


def _model_uses(settings: Settings) -> list[_ModelUse]:
    fallback = "VAGENT_LLM_FALLBACK_MODELS"
    return [
        _ModelUse("stt", "VAGENT_STT_MODEL", settings.stt_model),
        _ModelUse("llm", "VAGENT_LLM_MODEL", settings.llm_model),
        *(
            _ModelUse(f"llm_fallback.{n}", fallback, model)
            for n, model in enumerate(settings.fallback_models, 1)
        ),
        _ModelUse("tts", "VAGENT_TTS_MODEL", settings.tts_model),
    ]


async def run_openai(budget: _Budget) -> list[Finding]:
    """The API key is accepted, and every configured model exists for it."""
    if not budget.settings.uses_openai:
        return [
            _openai(
                "key",
                "warn",
                "no OPENAI_API_KEY: running on local engines "
                "(pocketsphinx, scripted replies, espeak-ng)",
                fix="set OPENAI_API_KEY to use OpenAI's models (the local engines stay "
                "as fallback)",
            )
        ]
    client = make_client(budget.settings, budget.timeout_s)
    try:
        return await _openai_findings(budget, client)
    finally:
        await client.close()


async def _openai_findings(budget: _Budget, client: openai.AsyncOpenAI) -> list[Finding]:
    base = str(client.base_url).rstrip("/")
    try:
        page, ms = await budget.timed(client.models.list())
    except (openai.OpenAIError, TimeoutError) as exc:
        return [_openai_key_failure(budget, base, exc)]
    available = [model.id for model in page.data]
    key = _openai("key", "pass", f"API key accepted by {base} ({len(available)} models)", ms)
    return [key, *await _openai_model_findings(budget, client, base, available)]


def _openai_key_failure(budget: _Budget, base: str, exc: BaseException) -> Finding:
    if isinstance(exc, openai.AuthenticationError):
        return _openai(
            "key",
            "fail",
            f"API key rejected by {base} (401: invalid, revoked or expired)",
            401,
            "set OPENAI_API_KEY to a valid key (platform.openai.com/api-keys); "
            "vagent serves on local engines until then",
        )
    if isinstance(exc, openai.PermissionDeniedError):
        return _openai(
            "key",
            "warn",
            "API key may not list models (403, a restricted key): model ids not checked",
            403,
            "give the key read access to Models (platform.openai.com/api-keys)",
        )
    return _openai_failure("key", budget, base, exc)


def _openai_failure(id_: str, budget: _Budget, base: str, exc: BaseException) -> Finding:
    """Outage, rate limit, empty quota and provider errors, for the key and each model alike.

    Only the status and error code are shown, never the provider's message:
    a 401's message repeats part of the key.
    """
    cause = _cause(exc)
    if cause == "timeout":
        output = f"no answer from OpenAI at {base} within {budget.timeout_s:g}s"
        fix = "check the network and any proxy (HTTPS_PROXY) between this host and OPENAI_BASE_URL"
        return _openai(id_, "fail", output, cause, fix)
    if isinstance(exc, openai.APIConnectionError):
        output = f"OpenAI unreachable at {base}: {_reason(exc, budget.timeout_s)}"
        fix = "check network, DNS, proxy (HTTPS_PROXY) and OPENAI_BASE_URL"
        return _openai(id_, "fail", output, cause, fix)
    if isinstance(exc, openai.RateLimitError) and exc.code == "insufficient_quota":
        output = "OpenAI quota exhausted (429 insufficient_quota): every request fails"
        fix = "add credit or raise the project's budget (platform.openai.com, Billing)"
        return _openai(id_, "fail", output, 429, fix)
    if isinstance(exc, openai.RateLimitError):
        output = "OpenAI rate-limits this key (429): turns fall back while it lasts"
        fix = "raise the project's rate limits (platform.openai.com, Limits), or wait"
        return _openai(id_, "warn", output, 429, fix)
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code >= 500:
            output = f"OpenAI answered HTTP {code}: a provider-side problem; vagent falls back"
            return _openai(id_, "warn", output, code, "check status.openai.com; retry later")
        detail = f" ({exc.code})" if exc.code else ""
        output = f"OpenAI at {base} answered HTTP {code}{detail}"
        return _openai(id_, "fail", output, code, "check OPENAI_BASE_URL and the key's project")
    output = f"OpenAI check failed: {_reason(exc, budget.timeout_s)}"
    return _openai(id_, "fail", output, fix="check OPENAI_BASE_URL and the network")


async def _openai_model_findings(
    budget: _Budget, client: openai.AsyncOpenAI, base: str, available: list[str]
) -> list[Finding]:
    """Every distinct model is looked up once, all at the same time."""
    uses = _model_uses(budget.settings)
    models = list(dict.fromkeys(use.model for use in uses))
    errors = await asyncio.gather(*(_model_error(budget, client, m) for m in models))
    by_model = dict(zip(models, errors, strict=True))
    return [_model_finding(budget, base, use, by_model[use.model], available) for use in uses]


async def _model_error(
    budget: _Budget, client: openai.AsyncOpenAI, model: str
) -> BaseException | None:
    """None when the key can use `model`, else why not; never raises, so one hang hides nothing."""
    try:
        await budget.bounded(client.models.retrieve(model))
    except (openai.OpenAIError, TimeoutError) as exc:
        return exc
    return None


def _model_finding(
    budget: _Budget,
    base: str,
    use: _ModelUse,
    error: BaseException | None,
    available: list[str],
) -> Finding:
    id_ = f"model.{use.role}"
    if error is None:
        return _openai(id_, "pass", f"{use.model} available ({use.variable})", use.model)
    if isinstance(error, openai.NotFoundError):
        output = f"model {use.model} not found for this key (misspelt, or retired/deprecated)"
        return _openai(id_, "fail", output, use.model, _model_fix(use, available))
    if isinstance(error, openai.PermissionDeniedError):
        return _openai(
            id_,
            "fail",
            f"this key may not use model {use.model} (403)",
            use.model,
            f"allow {use.model} for the key's project (platform.openai.com, Limits), "
            f"or set {use.variable} to a model it may use",
        )
    failure = _openai_failure(id_, budget, base, error)
    return dataclasses.replace(failure, output=f"{use.model}: {failure.output}")


def _model_fix(use: _ModelUse, available: list[str]) -> str:
    """Name the variable to edit, and the closest model the key does list."""
    close = difflib.get_close_matches(use.model, available, n=1)
    hint = f", e.g. {close[0]}" if close else ""
    if use.variable == "VAGENT_LLM_FALLBACK_MODELS":
        return (
            f"remove {use.model} from VAGENT_LLM_FALLBACK_MODELS or replace it with a model "
            f"this key lists (GET /v1/models){hint}"
        )
    return f"set {use.variable} to a model this key lists (GET /v1/models){hint}"


# --------------------------------------------------------------------------- the checks

CHECKS: list[DoctorCheck] = [
    DoctorCheck("ari", "Asterisk ARI", _check(run_ari), _ari.runbook),
    DoctorCheck("redis", "Redis", _check(run_redis), _redis.runbook),
    DoctorCheck("rtpengine", "RTPEngine", _check(run_rtpengine), _rtpengine.runbook),
    DoctorCheck("openai", "OpenAI API and models", _check(run_openai), _openai.runbook),
]
