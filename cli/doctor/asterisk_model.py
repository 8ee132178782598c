"""What Asterisk 22 makes of http.conf and ari.conf: listening? ARI served? which users?

Why model Asterisk instead of linting the files: every mistake here is
silent on the Asterisk side. Asterisk starts, `module show` says Running,
`ari show users` even lists the user, and yet nothing listens (http.conf),
every /ari URL answers 404 (ari.conf rejected or disabled) or every login
answers 401 (the user was dropped). The rules come from real Asterisk
22.10.1 runs on broken variants (shared/asterisk-configs, README "Rules a
config checker can take from this"); the few rules no variant covers are
taken from the Asterisk source that decides them and marked "(from the
Asterisk source)": res/ari/config.c, res/res_sorcery_config.c, main/http.c.

`predict()` is that model as data (listening? ARI served? these credentials
accepted? may write?): the doctor checks use it, and the tests hold it
against the HTTP statuses real Asterisk answered.
"""

from __future__ import annotations

import hmac
import ipaddress
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

DEFAULT_HTTP_PORT = 8088
DEFAULT_TLS_PORT = 8089
# Fields registered for ARI's sorcery types (res/ari/config.c, Asterisk 22).
GENERAL_OPTIONS = frozenset(
    {"type", "auth_realm", "allowed_origins", "channelvars", "enabled", "pretty"}
    | {"websocket_write_timeout"}
)
USER_OPTIONS = frozenset(
    {"type", "password", "read_only", "password_format", "permit", "deny", "acl"}
)
ACL_OPTIONS = ("permit", "deny", "acl")

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
            return crypt_matches(password, found.password)
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


def crypt_matches(password: str, hashed: str) -> bool | None:
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
        lines = ", ".join(dict.fromkeys(f"{s.file.name}:{s.line}" for s in found))
        return None, f"[general] is defined {len(found)} times ({lines})"
    for section in config.categories("general", templates=True):
        if section.is_template:
            return None, f"[general] at {location(section)} is a template (!)"
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


def location(item: Item | Section | Issue) -> str:
    """file:line, as an admin would open it."""
    return f"{item.file.name}:{item.line}"


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
