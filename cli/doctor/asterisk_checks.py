"""`vagent doctor`'s checks of Asterisk's http.conf and ari.conf.

Why model Asterisk instead of linting the files: every mistake here is
silent on the Asterisk side. Asterisk starts, `module show` says Running,
`ari show users` even lists the user, and yet nothing listens (http.conf),
every /ari URL answers 404 (ari.conf rejected or disabled) or every login
answers 401 (the user was dropped). So this module computes what Asterisk
22 does with the files and says it in those terms. The rules come from
real Asterisk 22.10.1 runs on broken variants (shared/asterisk-configs,
README "Rules a config checker can take from this"); the few rules no variant
covers are taken from the Asterisk source that decides them and marked
"(from the Asterisk source)": res/ari/config.c, res/res_sorcery_config.c,
main/http.c.

`predict()` is that model as data (listening? ARI served? these credentials
accepted? may write?): the checks use it, and the tests hold it against the
HTTP statuses real Asterisk answered.

No password, plain or hashed, ever reaches a Finding: texts are built
without them, and `_redacted` removes any that slipped through.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from vagent.cli.doctor.asterisk_conf import (
    ConfigFile,
    ConfigParseError,
    Issue,
    Item,
    Section,
    ast_true,
    load_config,
    shown,
)
from vagent.cli.doctor.model import DoctorCheck, DoctorContext, Finding, Status, worst
from vagent.services.call_controller.ari import ari_root
from vagent.services.config import Settings

RUNBOOK = "asterisk-config.md"
DEFAULT_HTTP_PORT = 8088
DEFAULT_TLS_PORT = 8089
# Files whose presence says "this is an Asterisk config directory".
ASTERISK_FILES = ("asterisk.conf", "modules.conf", "http.conf", "ari.conf", "extensions.conf")
# Fields registered for ARI's sorcery types (res/ari/config.c, Asterisk 22).
GENERAL_OPTIONS = frozenset(
    {"type", "auth_realm", "allowed_origins", "channelvars", "enabled", "pretty"}
    | {"websocket_write_timeout"}
)
USER_OPTIONS = frozenset(
    {"type", "password", "read_only", "password_format", "permit", "deny", "acl"}
)
ACL_OPTIONS = ("permit", "deny", "acl")
# Passwords from samples, tutorials and this project's own docs, likeliest first:
# an attacker tries these first.
WELL_KNOWN_PASSWORDS = (
    *("changeme", "asterisk", "password", "secret", "admin", "vagent", "ari", "hey"),
    *("1234", "12345", "123456", "12345678", "test", "default", "change_me", "changeit"),
    *("passw0rd", "qwerty", "letmein", "root", "pass"),
)
# Checking guesses against a crypt hash costs time (yescrypt on purpose): bounded.
CRYPT_GUESS_BUDGET_S = 1.5
REDACTED = "<redacted>"

Request = Literal["GET", "POST", "WS"]


# --- http.conf ----------------------------------------------------------------------


def _strtoul(text: str) -> int | None:
    """C's strtoul(text, &end, 0) with nothing left over, as ast_parse_arg uses it."""
    text = text.lstrip("".join(chr(c) for c in range(33)))
    if not text or text.startswith("-"):
        return None
    text = text.removeprefix("+")
    base = 10
    if text[:2].lower() == "0x":
        text, base = text[2:], 16
    elif len(text) > 1 and text.startswith("0"):
        text, base = text[1:], 8
    try:
        return int(text, base) if text.isascii() and text.isalnum() else None
    except ValueError:
        return None


def split_hostport(address: str) -> tuple[str, int | None]:
    """ast_sockaddr_split_hostport: `[v6]:port`, `host:port`, or a bare host
    (a bare IPv6 address has several colons, so no port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, None
    number = _strtoul(port) if port else None
    return host, number if number is not None and 0 < number < 65536 else None


@dataclass(frozen=True)
class HttpConf:
    """What Asterisk's HTTP server does with an http.conf (main/http.c).

    `config` is None when there is no http.conf; `general` is the one
    `[general]` Asterisk reads (the first); `bindaddr` None means unset.
    """

    config: ConfigFile | None
    general: Section | None = None
    enabled: bool = False
    bindaddr: str | None = None
    port: int = DEFAULT_HTTP_PORT
    prefix: str = ""
    bad_port: Item | None = None
    tls_enabled: bool = False
    tls_bindaddr: str | None = None

    @property
    def listening(self) -> bool:
        """Enabled and bindaddr set: Asterisk has no default address and
        starts nothing without one (variant 02)."""
        return self.enabled and bool(self.bindaddr)

    @property
    def host(self) -> str | None:
        return split_hostport(self.bindaddr)[0] if self.bindaddr else None

    @property
    def bound_port(self) -> int:
        """A port inside bindaddr wins over bindport; port 0 means 8088."""
        own = split_hostport(self.bindaddr)[1] if self.bindaddr else None
        return own or self.port or DEFAULT_HTTP_PORT

    def tls_address(self) -> tuple[str, int] | None:
        """Where TLS listens: tlsbindaddr (default port 8089), else the HTTP
        address on port 8089."""
        if not self.tls_enabled:
            return None
        if self.tls_bindaddr:
            host, port = split_hostport(self.tls_bindaddr)
            return host, port or DEFAULT_TLS_PORT
        return (self.host, DEFAULT_TLS_PORT) if self.listening and self.host else None

    def suggested_url(self, *, tls: bool = False) -> str | None:
        """The VAGENT_ARI_URL that reaches this server from the same host."""
        address = (
            self.tls_address()
            if tls
            else ((self.host, self.bound_port) if self.listening and self.host else None)
        )
        if address is None:
            return None
        host, port = address
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None and ip.is_unspecified:
            host = "127.0.0.1" if ip.version == 4 else "[::1]"
        elif ip is not None and ip.version == 6:
            host = f"[{host}]"
        return f"{'https' if tls else 'http'}://{shown(host)}:{port}{shown(self.prefix)}"


def http_conf(config: ConfigFile | None) -> HttpConf:
    """Read http.conf like __ast_http_load: only the first [general], last value wins."""
    if config is None or not config.valid:
        return HttpConf(config)
    general = config.category("general")
    if general is None:
        return HttpConf(config)
    values: dict[str, Any] = {}
    for item in general.items:
        key = item.key.lower()
        if key in ("tlsenable", "sslenable"):
            values["tls_enabled"] = ast_true(item.value)
        elif key in ("tlsbindaddr", "sslbindaddr"):
            values["tls_bindaddr"] = item.value or None
        elif key == "enabled":
            values["enabled"] = ast_true(item.value)
        elif key == "bindaddr":
            values["bindaddr"] = item.value
        elif key == "bindport":
            port = _strtoul(item.value)
            ok = port is not None and port <= 65535
            values["port"] = port if ok else DEFAULT_HTTP_PORT
            values["bad_port"] = None if ok else item
        elif key == "prefix":
            values["prefix"] = f"/{item.value}" if item.value else ""
    return HttpConf(config, general, **values)


# --- ari.conf -----------------------------------------------------------------------


@dataclass(frozen=True)
class AriUser:
    """A user Asterisk loaded. `password` is secret: never print it."""

    name: str
    section: Section
    password: str
    password_format: Literal["plain", "crypt"]
    read_only: bool


@dataclass(frozen=True)
class Rejection:
    """Why Asterisk refused to create a user (it then answers 401 to it)."""

    section: Section
    code: Literal["unknown_option", "password_format", "missing_password"]
    item: Item | None


@dataclass
class AriConf:
    """What res_ari loads from ari.conf: the one [general], and the users.

    With a duplicate user section (`duplicate`), Asterisk loads no user at all.
    """

    config: ConfigFile | None
    general: Section | None = None
    general_problem: str | None = None
    enabled: bool = False
    users: dict[str, AriUser] = field(default_factory=dict)
    rejected: dict[str, Rejection] = field(default_factory=dict)
    duplicate: tuple[Section, Section] | None = None

    @property
    def served(self) -> bool:
        """Is /ari registered on the HTTP server (else: 404 for everything)?"""
        return self.general is not None and self.enabled

    def authenticate(self, user: str, password: str | None) -> bool | None:
        """ast_ari_config_validate_user; None when a crypt hash cannot be checked here."""
        found = self.users.get(user)
        if found is None or not password:
            return False
        if found.password_format == "crypt":
            return _crypt_matches(password, found.password)
        return hmac.compare_digest(_bytes(password), _bytes(found.password))

    def secrets(self) -> list[str]:
        config = self.config
        if config is None:
            return []
        return [i.value for s in config.sections for i in s.values("password") if i.value]


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _crypt_function() -> Callable[[str, str], str] | None:
    """Python's crypt module (deprecated, gone in 3.13); None when unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        return None
    return crypt.crypt


def _crypt_matches(password: str, hashed: str) -> bool | None:
    """ast_crypt_validate: crypt(password, hash) == hash. None: cannot tell here."""
    function = _crypt_function()
    if function is None:
        return None
    try:
        result = function(password, hashed)
    except (OSError, ValueError):
        return None
    return result is not None and hmac.compare_digest(_bytes(result), _bytes(hashed))


def _general(config: ConfigFile) -> tuple[Section | None, str | None]:
    """The ARI [general] object: sorcery `explicit_name=general` takes a section
    named exactly `general` whose keys are all ARI general options, and
    `criteria=type=general` any section with `type = general`. Exactly one must
    qualify, else ARI has no settings and is not served (from the Asterisk source)."""
    sections = [s for s in config.sections if not s.is_template]
    found = [
        s
        for s in sections
        if (s.name == "general" and all(i.key in GENERAL_OPTIONS for i in s.items))
        or s.first("type") == "general"
    ]
    if len(found) == 1:
        unknown = [i for i in found[0].items if i.key.lower() not in GENERAL_OPTIONS]
        if unknown:
            return None, _unknown_text(found[0], unknown[0], "ARI's [general]")
        return found[0], None
    if len(found) > 1:
        lines = ", ".join(f"{s.file.name}:{s.line}" for s in found)
        return None, f"[general] is defined {len(found)} times ({lines})"
    for section in config.categories("general", templates=True):
        if section.is_template:
            return None, f"[general] at {_where(section)} is a template (!)"
        if section.name != "general":
            return None, f"[{shown(section.name)}] must be spelled [general], in lower case"
        unknown = [i for i in section.items if i.key not in GENERAL_OPTIONS]
        if unknown:
            return None, _unknown_text(section, unknown[0], "ARI's [general]")
    return None, "there is no [general] section"


def _unknown_text(section: Section, item: Item, what: str) -> str:
    return (
        f"[{shown(section.name)}] has `{shown(item.key)}` ({item.file.name}:{item.line}), "
        f"which is not an option of {what} (options are lower case)"
    )


def _user(section: Section) -> AriUser | Rejection:
    """ast_sorcery_objectset_apply for one user: every line in order, the first
    failing one rejects the user; then user_apply wants a password."""
    password, password_format, read_only = "", "plain", False
    for item in section.items:
        key = item.key.lower()
        if key not in USER_OPTIONS:
            return Rejection(section, "unknown_option", item)
        if key == "password_format":
            if item.value.lower() not in ("plain", "crypt"):
                return Rejection(section, "password_format", item)
            password_format = item.value.lower()
        elif key == "password":
            password = item.value
        elif key == "read_only":
            read_only = ast_true(item.value)
    if not password:
        return Rejection(section, "missing_password", None)
    fmt: Literal["plain", "crypt"] = "crypt" if password_format == "crypt" else "plain"
    return AriUser(section.name, section, password, fmt, read_only)


def ari_conf(config: ConfigFile | None) -> AriConf:
    """Load ari.conf like res_ari (sorcery) does at start-up."""
    if config is None or not config.valid:
        return AriConf(config)
    general, problem = _general(config)
    result = AriConf(config, general, problem)
    if general is not None:  # enabled defaults to yes; `enabled =` (empty) is no
        result.enabled = ast_true(general.get("enabled")) if general.values("enabled") else True
    loaded: dict[str, AriUser] = {}
    for section in config.sections:
        if section.is_template or section.first("type") != "user":
            continue  # without type = user a section is silently skipped (variant 06)
        if section.name in loaded:  # variant 16: every user is dropped
            result.duplicate = (loaded[section.name].section, section)
            return result
        user = _user(section)
        if isinstance(user, Rejection):
            result.rejected.setdefault(section.name, user)
        else:
            loaded[section.name] = user
    result.users = loaded
    return result


# --- prediction -----------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """What a client of this Asterisk would see, from the config files alone.

    `user_accepted` is what ARI's user table says of the credentials, whether
    or not /ari is served (like `ari show users`); None when a crypt hash
    cannot be checked on this machine. `status` combines it all.
    """

    http_listening: bool
    ari_served: bool
    user_accepted: bool | None
    can_write: bool | None

    def status(self, request: Request = "GET") -> int | None:
        """The HTTP status of a GET, a POST, or the events websocket upgrade
        (101); None: connection refused. ValueError when `user_accepted` is None."""
        if not self.http_listening:
            return None
        if not self.ari_served:
            return 404
        if self.user_accepted is None:  # a crypt hash this Python cannot check
            raise ValueError("cannot predict: the crypt hash cannot be checked here")
        if not self.user_accepted:
            return 401
        if request == "WS":
            return 101
        if request == "POST" and not self.can_write:
            return 403
        return 200


def _load(config_dir: Path, name: str) -> ConfigFile | None:
    """A config file, or None when it does not exist (Asterisk: no config)."""
    try:
        return load_config(config_dir / name, config_dir)
    except ConfigParseError as exc:
        if exc.reason == "missing":
            return None
        raise


def predict(config_dir: Path, user: str, password: str | None) -> Prediction:
    """What Asterisk, started with `config_dir`, answers to `user:password`.

    `password` None means no credentials. Raises ConfigParseError when a file
    exists but cannot be read: then there is nothing to predict from.
    """
    http = http_conf(_load(config_dir, "http.conf"))
    ari = ari_conf(_load(config_dir, "ari.conf"))
    accepted = ari.authenticate(user, password)
    found = ari.users.get(user)
    can_write = None if accepted is None else accepted and found is not None and not found.read_only
    return Prediction(http.listening, ari.served, accepted, can_write)


# --- findings ------------------------------------------------------------------------


def _finding(
    group: str, name: str, status: Status, output: str, observed: Any = None, fix: str = ""
) -> Finding:
    return Finding(f"{group}.{name}", status, output, observed, fix, RUNBOOK)


def _where(item: Item | Section | Issue) -> str:
    return f"{item.file.name}:{item.line}"


@dataclass(frozen=True)
class _Opened:
    config: ConfigFile | None
    finding: Finding

    @property
    def usable(self) -> bool:
        return self.config is not None and self.config.valid


def _asterisk_present(config_dir: Path) -> bool:
    return any((config_dir / name).exists() for name in ASTERISK_FILES)


def _open(
    config_dir: Path, name: str, group: str, absent: str, absent_fix: str, unusable: str
) -> _Opened:
    """Read one file and say how that went, as the `<group>.file` finding."""
    path = config_dir / name
    observed: dict[str, Any] = {"path": str(path)}
    try:
        if not config_dir.is_dir():
            return _Opened(
                None,
                _finding(
                    group,
                    "file",
                    "warn",
                    f"{name} not found in {config_dir}: is Asterisk installed here? "
                    "set VAGENT_ASTERISK_CONFIG_DIR",
                    observed,
                    "set VAGENT_ASTERISK_CONFIG_DIR to Asterisk's config directory, "
                    "or run doctor on the Asterisk host",
                ),
            )
        config = load_config(path, config_dir)
    except (ConfigParseError, PermissionError) as exc:
        reason = exc.reason if isinstance(exc, ConfigParseError) else "permission"
        if reason == "missing" and _asterisk_present(config_dir):
            return _Opened(None, _finding(group, "file", "fail", absent, observed, absent_fix))
        if reason == "missing":
            output = (
                f"{name} not found in {config_dir}, nor any other Asterisk config: is Asterisk "
                "installed here? set VAGENT_ASTERISK_CONFIG_DIR"
            )
            fix = "set VAGENT_ASTERISK_CONFIG_DIR to Asterisk's config directory"
        elif reason == "permission":
            output = (
                f"permission denied reading {path}: run doctor as a user that can read it "
                "(root or the asterisk group)"
            )
            fix = "run `sudo vagent doctor`, or add this user to the asterisk group"
        else:
            output = f"cannot read {path} ({reason.replace('_', ' ')})"
            fix = f"make {path} a readable file"
        return _Opened(None, _finding(group, "file", "warn", output, observed, fix))
    observed["files"] = [str(p) for p in config.files]
    invalid = config.invalid_reason
    if invalid is not None:
        output = (
            f"{_where(invalid)}: {invalid.message}: Asterisk rejects the whole {name}, "
            f"so {unusable}"
        )
        return _Opened(config, _finding(group, "file", "fail", output, observed, _fix_for(invalid)))
    read = ", ".join(p.name for p in config.files)
    return _Opened(config, _finding(group, "file", "pass", f"read {read}", observed))


def _fix_for(issue: Issue) -> str:
    if "no [section]" in issue.message:
        return f"put the [general] line above the first key of {issue.file.name}"
    if "#include" in issue.message:
        return (
            f"create the included file next to {issue.file.name}, or remove the #include "
            f"on line {issue.line} (#tryinclude for an optional file)"
        )
    return f"fix {_where(issue)}, then restart Asterisk"


def _syntax(group: str, config: ConfigFile) -> list[Finding]:
    """Lines Asterisk skips or doctor cannot see, as one finding."""
    issues = [i for i in config.issues if i.severity != "invalid"]
    if not issues:
        return []
    statuses: list[Status] = ["unknown" if i.severity == "unverifiable" else "warn" for i in issues]
    output = "; ".join(f"{_where(i)}: {i.message}" for i in issues)
    observed = [{"where": _where(i), "severity": i.severity} for i in issues]
    return [
        _finding(group, "syntax", worst(statuses), output, observed, "fix or remove those lines")
    ]


def _host_matches(bind_host: str, url_host: str) -> bool | None:
    """Does a client connecting to url_host reach a server bound to bind_host?
    None when a DNS name would have to be resolved (doctor does not)."""

    def addresses(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
        if host.lower() == "localhost":
            return {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
        try:
            return {ipaddress.ip_address(host.strip("[]"))}
        except ValueError:
            return None

    bound = addresses(bind_host)
    if bound and any(a.is_unspecified for a in bound):
        return True
    wanted = addresses(url_host)
    if bound is None or wanted is None:
        return None
    return bool(bound & wanted)


def _safe_url(url: str) -> str:
    """The URL without any user:password@ part."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _ari_url_finding(http: HttpConf, settings: Settings) -> Finding:
    """Do VAGENT_ARI_URL's scheme, host, port and path reach this HTTP server's /ari?"""
    suggested = http.suggested_url() or "http://127.0.0.1:8088"
    if not settings.ari_url:
        return _finding(
            "http_conf",
            "ari_url",
            "warn",
            f"VAGENT_ARI_URL is not set: with this http.conf it is {suggested}",
            {"suggested": suggested},
            f"set VAGENT_ARI_URL={suggested}",
        )
    parts = urlsplit(settings.ari_url)
    url = _safe_url(settings.ari_url)
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        port = -1
    observed = {"ari_url": url, "suggested": suggested}
    if tls and http.tls_address() is None:
        return _finding(
            "http_conf",
            "ari_url",
            "fail",
            f"VAGENT_ARI_URL {url} uses https, but http.conf does not enable TLS (tlsenable)",
            observed,
            f"set VAGENT_ARI_URL={suggested}, or enable TLS in http.conf",
        )
    address = http.tls_address() if tls else (http.host or "", http.bound_port)
    assert address is not None
    bind_host, bind_port = address
    expected_path = f"{http.prefix}/ari"
    path = urlsplit(ari_root(settings.ari_url)).path
    if tls:
        suggested = http.suggested_url(tls=True) or suggested
        observed["suggested"] = suggested
    fix = f"set VAGENT_ARI_URL={suggested}"
    if port != bind_port:
        output = f"VAGENT_ARI_URL {url} uses port {port}, Asterisk listens on {bind_port}"
        return _finding("http_conf", "ari_url", "fail", output, observed, fix)
    if path != expected_path:
        output = (
            f"VAGENT_ARI_URL {url} reaches ARI at {shown(path)}, but with http.conf's "
            f"prefix ARI is at {shown(expected_path)}"
        )
        return _finding("http_conf", "ari_url", "fail", output, observed, fix)
    matches = _host_matches(bind_host, parts.hostname or "")
    if matches is False:
        output = (
            f"VAGENT_ARI_URL {url} points at {parts.hostname}, Asterisk listens only on "
            f"{shown(bind_host)}"
        )
        return _finding("http_conf", "ari_url", "fail", output, observed, fix)
    output = f"VAGENT_ARI_URL {url} matches http.conf ({shown(bind_host)}:{bind_port})"
    if matches is None:
        output += f"; {parts.hostname} vs {shown(bind_host)} not compared (names are not resolved)"
    return _finding("http_conf", "ari_url", "pass", output, observed)


def http_conf_findings(settings: Settings) -> list[Finding]:
    """The http_conf check, synchronous (it only reads files)."""
    return _redacted(_http_conf_findings(settings), _env_password(settings))


def _http_conf_findings(settings: Settings) -> list[Finding]:
    opened = _open(
        settings.asterisk_config_dir,
        "http.conf",
        "http_conf",
        "http.conf does not exist: Asterisk's HTTP server stays disabled, nothing listens "
        "for ARI (connection refused)",
        "create http.conf with [general], enabled = yes, bindaddr = 127.0.0.1, bindport = 8088",
        "its HTTP server stays disabled: nothing listens (connection refused)",
    )
    findings = [opened.finding]
    if not opened.usable:
        return findings
    assert opened.config is not None
    findings += _syntax("http_conf", opened.config)
    http = http_conf(opened.config)
    if http.general is None:
        findings.append(
            _finding(
                "http_conf",
                "general",
                "fail",
                "http.conf has no [general] section: Asterisk reads its HTTP settings only "
                "from [general], so the server stays disabled (connection refused)",
                fix="put the settings under a [general] line in http.conf",
            )
        )
        return findings
    extra = opened.config.categories("general")[1:]
    if extra:
        findings.append(
            _finding(
                "http_conf",
                "general",
                "warn",
                f"[general] appears again at {', '.join(_where(s) for s in extra)}: Asterisk "
                f"reads only the first one ({_where(http.general)}) and ignores the others",
                fix="merge the [general] sections of http.conf into one",
            )
        )
    findings.append(_enabled_finding(http))
    findings.append(_bind_finding(http))
    if http.bindaddr:
        findings.append(_ari_url_finding(http, settings))
    findings.append(_tls_finding(http))
    return findings


def _enabled_finding(http: HttpConf) -> Finding:
    assert http.general is not None
    values = http.general.values("enabled")
    if http.enabled:
        return _finding("http_conf", "enabled", "pass", "enabled = yes", {"enabled": True})
    said = (
        f"enabled = {shown(values[-1].value)} ({_where(values[-1])})"
        if values
        else ("enabled is not set (the default is no)")
    )
    return _finding(
        "http_conf",
        "enabled",
        "fail",
        f"{said}: Asterisk's HTTP server is disabled, nothing listens (connection refused)",
        {"enabled": False},
        "set enabled = yes under [general] in http.conf, then restart Asterisk",
    )


def _bind_finding(http: HttpConf) -> Finding:
    if not http.bindaddr:
        return _finding(
            "http_conf",
            "bind",
            "fail",
            "bindaddr is not set: Asterisk has no default address and starts no HTTP server "
            "(connection refused)",
            {"bindaddr": None, "port": http.bound_port},
            "set bindaddr = 127.0.0.1 under [general] in http.conf "
            "(0.0.0.0 only if vagent runs on another host)",
        )
    observed = {"bindaddr": shown(http.bindaddr), "port": http.bound_port, "prefix": http.prefix}
    where = f"{shown(http.host or '')}:{http.bound_port}"
    if http.bad_port is not None:
        return _finding(
            "http_conf",
            "bind",
            "warn",
            f"bindport = {shown(http.bad_port.value)} ({_where(http.bad_port)}) is not a port: "
            f"Asterisk uses {DEFAULT_HTTP_PORT}, so HTTP is on {where}",
            observed,
            "set bindport to a number from 1 to 65535 in http.conf",
        )
    state = "on" if http.enabled else "would be on"
    return _finding("http_conf", "bind", "pass", f"HTTP server {state} {where}", observed)


def _tls_finding(http: HttpConf) -> Finding:
    """TLS is optional for vagent: observed, never failed."""
    address = http.tls_address()
    if address is None:
        output = "TLS off: ARI is plain HTTP (keep bindaddr on loopback or a trusted network)"
    else:
        output = f"TLS on {shown(address[0])}:{address[1]}"
    return _finding("http_conf", "tls", "pass", output, {"tlsenable": http.tls_enabled})


def ari_conf_findings(settings: Settings) -> list[Finding]:
    """The ari_conf check, synchronous (it only reads files)."""
    secrets = _env_password(settings)
    return _redacted(_ari_conf_findings(settings, secrets), secrets)


def _ari_conf_findings(settings: Settings, secrets: list[str]) -> list[Finding]:
    opened = _open(
        settings.asterisk_config_dir,
        "ari.conf",
        "ari_conf",
        "ari.conf does not exist: ARI is not served, every /ari URL answers 404",
        "create ari.conf with [general] enabled = yes and a user section for vagent",
        "ARI is not served: every /ari URL answers 404",
    )
    findings = [opened.finding]
    if not opened.usable:
        return findings
    assert opened.config is not None
    ari = ari_conf(opened.config)
    secrets += ari.secrets()
    findings += _syntax("ari_conf", opened.config)
    if ari.general_problem:
        findings.append(
            _finding(
                "ari_conf",
                "general",
                "fail",
                f"{ari.general_problem}: Asterisk then has no ARI settings and does not serve "
                "ARI, every /ari URL answers 404 (from the Asterisk source)",
                fix="keep exactly one [general] in ari.conf, with only ARI's options",
            )
        )
    else:
        findings.append(_ari_enabled_finding(ari))
    if ari.duplicate is not None:
        first, again = ari.duplicate
        findings.append(
            _finding(
                "ari_conf",
                "duplicate_section",
                "fail",
                f"[{shown(first.name)}] is defined twice ({_where(first)} and {_where(again)}): "
                "Asterisk then loads no ARI user at all, everyone gets 401",
                {"section": shown(first.name)},
                f"merge the two [{shown(first.name)}] sections of ari.conf into one",
            )
        )
        return findings
    return findings + _user_findings(ari, settings)


def _ari_enabled_finding(ari: AriConf) -> Finding:
    assert ari.general is not None
    values = ari.general.values("enabled")
    if ari.enabled:
        said = "enabled = yes" if values else "enabled is not set (the default is yes)"
        return _finding("ari_conf", "enabled", "pass", said, {"enabled": True})
    return _finding(
        "ari_conf",
        "enabled",
        "fail",
        f"enabled = {shown(values[-1].value)} ({_where(values[-1])}): /ari is not registered, "
        "every /ari URL answers 404, even without credentials",
        {"enabled": False},
        "set enabled = yes under [general] in ari.conf, then restart Asterisk",
    )


def _env_password(settings: Settings) -> list[str]:
    return [settings.ari_password.get_secret_value()] if settings.ari_password else []


def _user_findings(ari: AriConf, settings: Settings) -> list[Finding]:
    """Is the configured user one Asterisk loads, and can vagent use it?"""
    name = settings.ari_user
    assert ari.config is not None
    section, problem, fix = _user_section(ari.config, name)
    if section is None:
        output = f"{problem}: Asterisk answers 401 to user {shown(name)}"
        return [_finding("ari_conf", "user", "fail", output, {"user": shown(name)}, fix)]
    rejection = ari.rejected.get(name) if name not in ari.users else None
    findings = [_user_finding(section, rejection)]
    findings += _password_findings(section)
    findings += _duplicate_key_findings(section)
    findings.append(_read_only_finding(section))
    if any(section.values(key) for key in ACL_OPTIONS):
        findings.append(
            _finding(
                "ari_conf",
                "acl",
                "pass",
                f"[{shown(name)}] has an ACL (permit/deny/acl): doctor does not evaluate it; "
                "make sure it permits the address vagent connects from",
            )
        )
    user = ari.users.get(name)
    if user is not None:
        findings.append(_match_finding(ari, user, settings))
        findings.append(_default_password_finding(user))
    return findings


def _user_section(config: ConfigFile, name: str) -> tuple[Section | None, str, str]:
    """The section Asterisk makes the user from (names are case-sensitive),
    or why there is none and the fix."""
    user = shown(name)
    sections = [s for s in config.sections if s.name == name]
    typed = [s for s in sections if not s.is_template and s.first("type") == "user"]
    if typed:
        return typed[0], "", ""
    plain = [s for s in sections if not s.is_template]
    if plain:
        kind = plain[0].first("type")
        said = "has no `type = user`" if kind is None else f"says type = {shown(kind)}"
        return (
            None,
            f"[{user}] ({_where(plain[0])}) {said}, so Asterisk skips it silently",
            f"make `type = user` the first type line of [{user}] in ari.conf (exactly, lower case)",
        )
    if sections:
        return (
            None,
            f"[{user}] ({_where(sections[0])}) is a template (!), and templates are not users",
            f"define [{user}](...) inheriting from a template with another name, without (!)",
        )
    other = [s for s in config.sections if s.name.lower() == name.lower()]
    if other:
        return (
            None,
            f"there is no [{user}], only [{shown(other[0].name)}] ({_where(other[0])}), "
            "and ARI user names are case-sensitive",
            f"rename the section to [{user}], or set VAGENT_ARI_USER to its exact name",
        )
    return (
        None,
        f"ari.conf has no [{user}] section",
        f"add [{user}] with type = user, password = ... and password_format = plain to ari.conf "
        "(or set VAGENT_ARI_USER)",
    )


def _user_finding(section: Section, rejection: Rejection | None) -> Finding:
    name = shown(section.name)
    observed = {"user": name, "section": _where(section), "templates": section.templates}
    if rejection is not None and rejection.code == "unknown_option" and rejection.item:
        item = rejection.item
        return _finding(
            "ari_conf",
            "user",
            "fail",
            f"[{name}] has `{shown(item.key)}` ({_where(item)}), which is not an ARI user "
            "option: Asterisk rejects the user, 401 (from the Asterisk source)",
            observed,
            f"remove or correct `{shown(item.key)}` in [{name}] (options: "
            + ", ".join(sorted(USER_OPTIONS))
            + ")",
        )
    via = ", ".join(shown(t) for t in section.templates)
    output = f"user [{name}] at {_where(section)}" + (f", inherits {via}" if via else "")
    return _finding("ari_conf", "user", "pass", output, observed)


def _password_findings(section: Section) -> list[Finding]:
    """Present, a known format, and not cut short by a `;`. Never shows the value."""
    name = shown(section.name)
    findings: list[Finding] = []
    passwords = section.values("password")
    if not passwords or not passwords[-1].value:
        findings.append(
            _finding(
                "ari_conf",
                "password",
                "fail",
                f"[{name}] has no password: Asterisk rejects the user, everyone gets 401",
                fix=f"set password = <a long random string> in [{name}] of ari.conf",
            )
        )
    else:
        last = passwords[-1]
        findings.append(
            _finding("ari_conf", "password", "pass", f"[{name}] has a password ({_where(last)})")
        )
        if last.comment_adjacent:
            findings.append(
                _finding(
                    "ari_conf",
                    "password_semicolon",
                    "warn",
                    f"{_where(last)}: the password stops at the `;`: Asterisk reads the rest of "
                    "the line as a comment, so the password is only what comes before it",
                    fix="if the `;` belongs to the password, write it as `\\;` in ari.conf",
                )
            )
    formats = section.values("password_format")
    bad = [i for i in formats if i.value.lower() not in ("plain", "crypt")]
    if bad:
        findings.append(
            _finding(
                "ari_conf",
                "password_format",
                "fail",
                f"password_format = {shown(bad[0].value)} ({_where(bad[0])}): Asterisk accepts "
                "only plain or crypt and rejects the user, 401",
                {"password_format": shown(bad[0].value)},
                "set password_format = plain (or crypt, with a `mkpasswd -m sha-512` hash)",
            )
        )
    else:
        value = formats[-1].value.lower() if formats else "plain"
        said = f"password_format = {value}" if formats else "password_format = plain (default)"
        findings.append(
            _finding("ari_conf", "password_format", "pass", said, {"password_format": value})
        )
    return findings


def _duplicate_key_findings(section: Section) -> list[Finding]:
    """A key written twice in one section: harmless for Asterisk (the last wins),
    but the admin edited the wrong line often enough (variant 11)."""
    findings: list[Finding] = []
    for key in ("type", "password", "password_format", "read_only"):
        own = [i for i in section.values(key) if i.inherited_from is None]
        if len(own) > 1:
            lines = ", ".join(_where(i) for i in own)
            findings.append(
                _finding(
                    "ari_conf",
                    "duplicate_key",
                    "warn",
                    f"{key} is set {len(own)} times in [{shown(section.name)}] ({lines}): "
                    f"Asterisk uses the last one ({_where(own[-1])})",
                    {"key": key},
                    f"keep one {key} line in [{shown(section.name)}]",
                )
            )
    return findings


def _read_only_finding(section: Section) -> Finding:
    name = shown(section.name)
    if ast_true(section.get("read_only")):
        return _finding(
            "ari_conf",
            "read_only",
            "fail",
            f"read_only = yes in [{name}]: vagent may read, but every POST, PUT and DELETE "
            "gets 403 Write access denied, so it cannot answer or bridge calls",
            {"read_only": True},
            f"set read_only = no in [{name}] of ari.conf",
        )
    return _finding("ari_conf", "read_only", "pass", "read_only = no", {"read_only": False})


def _match_finding(ari: AriConf, user: AriUser, settings: Settings) -> Finding:
    name = shown(user.name)
    if settings.ari_password is None:
        return _finding(
            "ari_conf",
            "password_match",
            "warn",
            f"VAGENT_ARI_PASSWORD is not set: vagent cannot log in as {name}",
            fix=f"set VAGENT_ARI_PASSWORD to the password of [{name}] in ari.conf",
        )
    wanted = settings.ari_password.get_secret_value()
    matches = ari.authenticate(user.name, wanted)
    if matches is None:
        return _finding(
            "ari_conf",
            "password_match",
            "unknown",
            f"cannot verify a crypt hash here: whether VAGENT_ARI_PASSWORD matches [{name}] "
            "is not known",
            fix="run doctor where Python has the crypt module, or use password_format = plain",
        )
    if matches:
        return _finding(
            "ari_conf",
            "password_match",
            "pass",
            f"VAGENT_ARI_PASSWORD matches ari.conf's password for user {name}",
        )
    output = f"VAGENT_ARI_PASSWORD does not match ari.conf's password for user {name}"
    last = user.section.values("password")[-1]
    if user.password_format == "plain" and last.comment_adjacent:
        output += f" (Asterisk cut that password at the `;` on {_where(last)})"
    elif wanted != wanted.strip():
        output += " (VAGENT_ARI_PASSWORD starts or ends with blanks)"
    return _finding(
        "ari_conf",
        "password_match",
        "fail",
        output,
        fix=f"set VAGENT_ARI_PASSWORD to the password of [{name}], or change ari.conf to match",
    )


def _crypt_guess(user: AriUser) -> bool | None:
    """Is the crypt hash one of the well-known passwords? Tried the way an
    attacker would; None when it cannot be told here (no crypt, out of time)."""
    deadline = time.monotonic() + CRYPT_GUESS_BUDGET_S
    for guess in (*WELL_KNOWN_PASSWORDS, user.name):
        for word in (guess, guess.upper()):
            if time.monotonic() > deadline:
                return None
            matches = _crypt_matches(word, user.password)
            if matches is None or matches:
                return matches
    return False


def _default_password_finding(user: AriUser) -> Finding:
    """A well-known password lets anyone who reaches the HTTP port take over calls."""
    name = shown(user.name)
    if user.password_format == "plain":
        plain = user.password.lower()
        weak: bool | None = plain in WELL_KNOWN_PASSWORDS or user.password == user.name
    else:
        weak = _crypt_guess(user)
    if weak is None:
        return _finding(
            "ari_conf",
            "password_default",
            "unknown",
            f"could not check the crypt hash of [{name}] against well-known passwords here",
            fix="make sure it is not a well-known default password (or use plain here)",
        )
    if weak:
        return _finding(
            "ari_conf",
            "password_default",
            "fail",
            f"the password of [{name}] is a well-known default: anyone who reaches Asterisk's "
            "HTTP port can control your calls",
            fix="set a long random password (`openssl rand -hex 24`) in ari.conf and "
            "VAGENT_ARI_PASSWORD",
        )
    return _finding(
        "ari_conf", "password_default", "pass", f"the password of [{name}] is not a known default"
    )


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


def _redacted(findings: list[Finding], secrets: list[str]) -> list[Finding]:
    """Belt and braces: no text is built from a password, but should one ever
    slip in (a password that is also a section name...), it leaves as <redacted>.
    Secrets shorter than 4 characters are left alone: they would mangle words."""
    long_enough = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
    if not long_enough:
        return findings
    return [
        replace(
            f,
            output=_scrub(f.output, long_enough),
            observed=_scrub(f.observed, long_enough),
            fix=_scrub(f.fix, long_enough),
        )
        for f in findings
    ]


async def run_http_conf(ctx: DoctorContext) -> list[Finding]:
    return await asyncio.to_thread(http_conf_findings, ctx.settings)


async def run_ari_conf(ctx: DoctorContext) -> list[Finding]:
    return await asyncio.to_thread(ari_conf_findings, ctx.settings)


CHECKS: list[DoctorCheck] = [
    DoctorCheck("http_conf", "Asterisk http.conf", run_http_conf, RUNBOOK),
    DoctorCheck("ari_conf", "Asterisk ari.conf", run_ari_conf, RUNBOOK),
]
