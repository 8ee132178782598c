"""`vagent doctor`'s checks of Asterisk's http.conf and ari.conf.

They say, in Asterisk's own terms, what `asterisk_model` computed: nothing
listens, every /ari URL answers 404, every login answers 401, writes get
403; each with the line to change and the runbook page.

No password, plain or hashed, ever reaches a Finding: texts are built
without them, and `_redacted` removes any that slipped through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vagent.cli.doctor.asterisk_conf import (
    ConfigFile,
    ConfigParseError,
    Issue,
    Section,
    ast_true,
    load_config,
    shown,
)
from vagent.cli.doctor.asterisk_model import (
    ACL_OPTIONS,
    DEFAULT_HTTP_PORT,
    USER_OPTIONS,
    AriConf,
    AriUser,
    HttpConf,
    Rejection,
    ari_conf,
    crypt_matches,
    http_conf,
    location,
)
from vagent.cli.doctor.model import DoctorCheck, DoctorContext, Finding, Status, worst
from vagent.services.call_controller.ari import ari_root
from vagent.services.config import Settings

RUNBOOK = "asterisk-config.md"
MAX_SHOWN_ISSUES = 10
# Files whose presence says "this is an Asterisk config directory".
ASTERISK_FILES = ("asterisk.conf", "modules.conf", "http.conf", "ari.conf", "extensions.conf")
# Passwords from samples, tutorials and this project's own docs, likeliest first:
# an attacker tries these first.
WELL_KNOWN_PASSWORDS = (
    *("changeme", "asterisk", "password", "secret", "admin", "vagent", "ari", "hey"),
    *(
        "1234",
        "12345",
        "123456",
        "12345678",
        "test",
        "default",
        "change_me",
        "change-me",
        "changeit",
    ),
    *("passw0rd", "qwerty", "letmein", "root", "pass"),
)
# Checking guesses against a crypt hash costs time (yescrypt on purpose): bounded.
CRYPT_GUESS_BUDGET_S = 1.5
REDACTED = "<redacted>"


# --- findings ------------------------------------------------------------------------


def _finding(
    group: str, name: str, status: Status, output: str, observed: Any = None, fix: str = ""
) -> Finding:
    return Finding(f"{group}.{name}", status, output, observed, fix, RUNBOOK)


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
    files = list(dict.fromkeys(config.files))  # a file included again is read again
    observed["files"] = [str(p) for p in files]
    invalid = config.invalid_reason
    if invalid is not None:
        output = (
            f"{location(invalid)}: {invalid.message}: Asterisk rejects the whole {name}, "
            f"so {unusable}"
        )
        return _Opened(config, _finding(group, "file", "fail", output, observed, _fix_for(invalid)))
    read = ", ".join(p.name for p in files)
    return _Opened(config, _finding(group, "file", "pass", f"read {read}", observed))


def _fix_for(issue: Issue) -> str:
    if "no [section]" in issue.message:
        return f"put the [general] line above the first key of {issue.file.name}"
    if "#include" in issue.message:
        return (
            f"create the included file next to {issue.file.name}, or remove the #include "
            f"on line {issue.line} (#tryinclude for an optional file)"
        )
    return f"fix {location(issue)}, then restart Asterisk"


def _syntax(group: str, config: ConfigFile) -> list[Finding]:
    """Lines Asterisk skips or doctor cannot see, as one finding.

    The same issue at the same place is told once with its count, and at
    most MAX_SHOWN_ISSUES places are spelled out: a file that includes
    itself yields thousands, and one finding must stay readable.
    """
    issues = [i for i in config.issues if i.severity != "invalid"]
    if not issues:
        return []
    statuses: list[Status] = ["unknown" if i.severity == "unverifiable" else "warn" for i in issues]
    counts = Counter((location(i), i.severity, i.message) for i in issues)
    shown_issues = list(counts.items())[:MAX_SHOWN_ISSUES]
    output = "; ".join(
        f"{where}: {message}" + (f" ({count} times)" if count > 1 else "")
        for (where, _, message), count in shown_issues
    )
    if len(counts) > len(shown_issues):
        output += f"; and {len(counts) - len(shown_issues)} more"
    observed = [
        {"where": where, "severity": severity, "count": count}
        for (where, severity, _), count in shown_issues
    ]
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
    extra = dict.fromkeys(location(s) for s in opened.config.categories("general")[1:])
    if extra:
        findings.append(
            _finding(
                "http_conf",
                "general",
                "warn",
                f"[general] appears again at {', '.join(extra)}: Asterisk "
                f"reads only the first one ({location(http.general)}) and ignores the others",
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
        f"enabled = {shown(values[-1].value)} ({location(values[-1])})"
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
            f"bindport = {shown(http.bad_port.value)} ({location(http.bad_port)}) is not a port: "
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
                f"[{shown(first.name)}] is defined twice "
                f"({location(first)} and {location(again)}): "
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
        f"enabled = {shown(values[-1].value)} ({location(values[-1])}): /ari is not registered, "
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
            f"[{user}] ({location(plain[0])}) {said}, so Asterisk skips it silently",
            f"make `type = user` the first type line of [{user}] in ari.conf (exactly, lower case)",
        )
    if sections:
        return (
            None,
            f"[{user}] ({location(sections[0])}) is a template (!), and templates are not users",
            f"define [{user}](...) inheriting from a template with another name, without (!)",
        )
    other = [s for s in config.sections if s.name.lower() == name.lower()]
    if other:
        return (
            None,
            f"there is no [{user}], only [{shown(other[0].name)}] ({location(other[0])}), "
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
    observed = {"user": name, "section": location(section), "templates": section.templates}
    if rejection is not None and rejection.code == "unknown_option" and rejection.item:
        item = rejection.item
        return _finding(
            "ari_conf",
            "user",
            "fail",
            f"[{name}] has `{shown(item.key)}` ({location(item)}), which is not an ARI user "
            "option: Asterisk rejects the user, 401 (from the Asterisk source)",
            observed,
            f"remove or correct `{shown(item.key)}` in [{name}] (options: "
            + ", ".join(sorted(USER_OPTIONS))
            + ")",
        )
    via = ", ".join(shown(t) for t in section.templates)
    output = f"user [{name}] at {location(section)}" + (f", inherits {via}" if via else "")
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
            _finding("ari_conf", "password", "pass", f"[{name}] has a password ({location(last)})")
        )
        if last.comment_adjacent:
            findings.append(
                _finding(
                    "ari_conf",
                    "password_semicolon",
                    "warn",
                    f"{location(last)}: the password stops at the `;`: Asterisk reads the rest of "
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
                f"password_format = {shown(bad[0].value)} ({location(bad[0])}): Asterisk accepts "
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
            lines = ", ".join(location(i) for i in own)
            findings.append(
                _finding(
                    "ari_conf",
                    "duplicate_key",
                    "warn",
                    f"{key} is set {len(own)} times in [{shown(section.name)}] ({lines}): "
                    f"Asterisk uses the last one ({location(own[-1])})",
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
        output += f" (Asterisk cut that password at the `;` on {location(last)})"
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
            matches = crypt_matches(word, user.password)
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
