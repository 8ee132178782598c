"""Doctor's security checks: who can read vagent's secrets, sockets and ports.

vagent's secrets live in `.env` (or the environment), its control surface
is the supervisord socket in the run dir, and its HTTP listeners expose
/health and /metrics. Each is only as private as its file mode or listen
address, and none of these mistakes shows up in a log: so doctor looks.
Nothing here prints a secret's value, only the variable's name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from vagent.cli.doctor.asterisk_checks import WELL_KNOWN_PASSWORDS
from vagent.cli.doctor.model import DoctorCheck, DoctorContext, Finding, Status
from vagent.services.config import SERVICES, Settings, env_file

RUNBOOK = "security.md"
SECRET_VARIABLES = ("OPENAI_API_KEY", "VAGENT_OPENAI_API_KEY", "VAGENT_ARI_PASSWORD")
MIN_PASSWORD_LENGTH = 12
PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_TCP_LISTEN = "0A"


@dataclass(frozen=True)
class _Private:
    """A path that must be owner-only: what exposing it gives away, and how bad that is."""

    name: str
    path: Path
    exposes: str
    severity: Status


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _env_secrets(path: Path) -> list[str]:
    """Names of the secret variables the file sets (never their values)."""
    values = dotenv_values(path)
    names = [name for name in SECRET_VARIABLES if values.get(name)]
    redis_url = values.get("VAGENT_REDIS_URL") or ""
    if urlsplit(redis_url).password:
        names.append("VAGENT_REDIS_URL (its password)")
    return names


def check_env_file() -> Finding:
    """`.env` holds the API key and the ARI password: owner-only, like ~/.ssh keys."""
    path = env_file()
    if path is None or not path.is_file():
        return Finding(
            "security.env_file", "pass", "no .env file: settings come from the environment"
        )
    mode = _mode(path)
    secrets = _env_secrets(path)
    holds = f"holds {', '.join(secrets)}" if secrets else "holds no secret"
    observed = {"path": str(path), "mode": f"{mode:04o}", "secrets": secrets}
    fix = f"chmod 600 {path}"
    if mode & stat.S_IROTH and secrets:
        status: Status = "fail"
        output = f"{path} is readable by every user (mode {mode:04o}) and {holds}"
    elif mode & stat.S_IWOTH:  # anyone could point OPENAI_BASE_URL at themselves
        status, output = "fail", f"{path} is writable by every user (mode {mode:04o})"
    elif mode & 0o077:
        status, output = "warn", f"{path} is open to group or others (mode {mode:04o}); it {holds}"
    else:
        status, output, fix = "pass", f"{path} is owner-only (mode {mode:04o}); it {holds}", ""
    return Finding("security.env_file", status, output, observed, fix, RUNBOOK)


def _private_paths(settings: Settings) -> list[_Private]:
    run = settings.run_dir
    return [
        _Private("run_dir", run, "the supervisord socket (control of every service)", "fail"),
        _Private("supervisor_socket", run / "supervisor.sock", "control of every service", "fail"),
        _Private("redis_socket", run / "redis.sock", "every live turn on the bus", "fail"),
        _Private("control_token", run / "control.token", "the drill control endpoints", "fail"),
        _Private("supervisord_conf", run / "supervisord.conf", "the run configuration", "warn"),
        _Private("log_dir", settings.log_dir, "the services' logs", "warn"),
        _Private(
            "ari_conf",
            settings.asterisk_config_dir / "ari.conf",
            "the ARI passwords of Asterisk",
            "warn",
        ),
    ]


def _exposed(item: _Private) -> Finding | None:
    """A finding when group or others can reach the path; None when it is private or absent."""
    try:
        mode = _mode(item.path)
    except FileNotFoundError:
        return None  # not created yet (`vagent up` creates them owner-only), or not used
    except PermissionError:
        return None  # cannot tell: a directory on the way is closed to this user
    if not mode & 0o077:
        return None
    # Only ari.conf is meant to be group-readable (Asterisk's own group); the rest, nothing.
    if item.name == "ari_conf" and not mode & 0o007:
        return None
    who = "every user" if mode & 0o007 else "its group"
    if item.name == "ari_conf":
        fix = f"chmod 640 {item.path} (owned by the asterisk user and group)"
    else:
        fix = f"chmod {'700' if item.path.is_dir() else '600'} {item.path}"
    return Finding(
        f"security.{item.name}",
        item.severity,
        f"{item.path} is open to {who} (mode {mode:04o}): it exposes {item.exposes}",
        {"path": str(item.path), "mode": f"{mode:04o}"},
        fix,
        RUNBOOK,
    )


def check_permissions(settings: Settings) -> list[Finding]:
    """The run dir, its sockets and files, the logs and ari.conf: owner-only."""
    problems = [f for f in map(_exposed, _private_paths(settings)) if f is not None]
    if problems:
        return problems
    return [
        Finding(
            "security.permissions",
            "pass",
            "run dir, sockets, control token, logs and ari.conf: not open to others",
        )
    ]


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} addresses: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _shown(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """`::ffff:10.0.0.5` rather than Python 3.11's `::ffff:a00:5`."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def _listeners(ports: set[int]) -> Iterator[tuple[int, str, bool]]:
    """(port, address, on loopback) of every listening TCP socket on one of `ports`."""
    for table in PROC_NET:
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != _TCP_LISTEN:
                continue
            hex_address, hex_port = fields[1].split(":")
            port = int(hex_port, 16)
            if port in ports:
                address = _address(hex_address)
                yield port, _shown(address), _is_loopback(address)


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _bind_host_is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return _is_loopback(ipaddress.ip_address(host))
    except ValueError:
        return False  # a host name: it resolves to whatever the network says


def check_listeners(settings: Settings) -> Finding:
    """The services' HTTP ports must listen on loopback unless VAGENT_BIND_HOST says otherwise."""
    ports = {settings.service_port(s) for s in SERVICES}
    span = f"{min(ports)}-{max(ports)}"
    if not any(table.exists() for table in PROC_NET):
        return Finding("security.listeners", "unknown", "cannot read /proc/net/tcp (not Linux?)")
    found = sorted(set(_listeners(ports)))
    exposed = [_endpoint(address, port) for port, address, loopback in found if not loopback]
    observed = {"listeners": [_endpoint(address, port) for port, address, _ in found]}
    configured_open = not _bind_host_is_loopback(settings.bind_host)
    reachable = "/health and /metrics are reachable from the network"
    if exposed and configured_open:
        return Finding(
            "security.listeners",
            "warn",
            f"services listen on {', '.join(exposed)}: {reachable}",
            observed,
            "set VAGENT_BIND_HOST=127.0.0.1 unless you mean it; otherwise firewall ports " + span,
            RUNBOOK,
        )
    if exposed:
        taken = "|".join(sorted({str(p) for p, _, loopback in found if not loopback}))
        return Finding(
            "security.listeners",
            "fail",
            f"{', '.join(exposed)} listen beyond loopback though VAGENT_BIND_HOST is "
            f"{settings.bind_host}: another program holds vagent's ports?",
            observed,
            f"find it: `ss -ltnp | grep -E ':({taken}) '`; stop it or change VAGENT_PORT_BASE",
            RUNBOOK,
        )
    if configured_open:
        return Finding(
            "security.listeners",
            "warn",
            f"VAGENT_BIND_HOST={settings.bind_host}: once up, {reachable}",
            observed,
            "set VAGENT_BIND_HOST=127.0.0.1 unless you mean it; otherwise firewall ports " + span,
            RUNBOOK,
        )
    where = "on loopback only" if found else "(nothing listening: vagent is not up)"
    return Finding("security.listeners", "pass", f"ports {span} {where}", observed)


def check_ari_password(settings: Settings) -> Finding:
    """A default ARI password lets anyone on the network drive every call: never print it."""
    if settings.ari_password is None or not settings.ari_password.get_secret_value():
        return Finding("security.ari_password", "pass", "VAGENT_ARI_PASSWORD is not set")
    password = settings.ari_password.get_secret_value()
    fix = (
        "set a long random password (`openssl rand -hex 16`) in ari.conf and "
        "VAGENT_ARI_PASSWORD, then reload res_ari and `vagent restart call_controller`"
    )
    if password.strip().lower() in WELL_KNOWN_PASSWORDS or password == settings.ari_user:
        output = "VAGENT_ARI_PASSWORD is a well-known default password"
        return Finding("security.ari_password", "fail", output, "default", fix, RUNBOOK)
    if len(password) < MIN_PASSWORD_LENGTH:
        output = f"VAGENT_ARI_PASSWORD is short ({len(password)} characters)"
        return Finding("security.ari_password", "warn", output, len(password), fix, RUNBOOK)
    return Finding("security.ari_password", "pass", "VAGENT_ARI_PASSWORD is not a default")


def _all(ctx: DoctorContext) -> list[Finding]:
    settings = ctx.settings
    return [
        check_env_file(),
        *check_permissions(settings),
        check_listeners(settings),
        check_ari_password(settings),
    ]


async def check_security(ctx: DoctorContext) -> list[Finding]:
    """File modes, listen addresses and default passwords (file I/O: in a thread)."""
    return await asyncio.to_thread(_all, ctx)


CHECKS = [DoctorCheck("security", "permissions, listeners and secrets", check_security, RUNBOOK)]
