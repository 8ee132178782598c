"""Start a real rtpengine daemon for tests, on loopback only.

Usage::

    with RtpEngineProcess() as rtpe:
        client = RtpEngineClient.from_address(rtpe.ng_address)

The daemon runs in the foreground as our child, with every socket on
127.0.0.1, a free ng control port, a private RTP port window, no kernel
module and no system config file (see :meth:`RtpEngineProcess.command` for
why each flag). Readiness is an ng ``ping`` answered with ``pong``, sent with
a few lines of socket code of its own so the helper does not depend on the
client under test. On exit: SIGTERM, then SIGKILL after a grace period.

If the binary is missing the test is skipped with the install hint; if it is
present but does not come up, that is a failure with the daemon's log.
"""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

import pytest

BINARY_ENV = "VAGENT_RTPENGINE_BIN"
INSTALL_HINT = "rtpengine not found: apt-get install rtpengine-daemon (or set VAGENT_RTPENGINE_BIN)"

LOOPBACK = "127.0.0.1"
# RTP ports come from a random 100-port window above Linux's default
# ephemeral range (32768-60999), so they rarely meet client sockets, and two
# daemons started by parallel test runs rarely share a window.
RTP_RANGE_LOW = 61000
RTP_RANGE_HIGH = 64999
RTP_WINDOW = 100
START_ATTEMPTS = 3  # the free ng port can be taken between probe and bind


def find_binary() -> str | None:
    """The rtpengine executable: $VAGENT_RTPENGINE_BIN, PATH, then Debian's path."""
    override = os.environ.get(BINARY_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("rtpengine")
    if found:
        return found
    return "/usr/bin/rtpengine" if os.access("/usr/bin/rtpengine", os.X_OK) else None


def free_udp_port(host: str = LOOPBACK) -> int:
    """A UDP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ng_ping(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True if an ng ``ping`` to host:port is answered with ``pong`` in time."""
    cookie = secrets.token_hex(6).encode("ascii")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendto(cookie + b" d7:command4:pinge", (host, port))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                data = sock.recv(65535)
                if data.startswith(cookie + b" ") and b"6:result4:pong" in data:
                    return True
        except OSError:  # timeout, or ICMP port unreachable while it starts
            return False
    return False


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up in the parent: the child must not dlopen or import."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test process dies uncleanly."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RtpEngineStartError(RuntimeError):
    """The daemon exists but did not come up; the message carries its log."""


class RtpEngineProcess:
    """A real rtpengine bound to 127.0.0.1, as a context manager.

    ``ng_address`` is ``"127.0.0.1:PORT"``; ``port_min``/``port_max`` is the
    RTP window rtpengine allocates from; ``log_text()`` returns its log.
    """

    def __init__(self, *, startup_timeout_s: float = 10.0, stop_timeout_s: float = 5.0) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.ng_port = 0
        self.port_min = 0
        self.port_max = 0
        self._binary: str | None = None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ---------------------------------------------------------------- public

    @property
    def ng_address(self) -> str:
        """Where the ng control protocol listens, as ``host:port``."""
        return f"{LOOPBACK}:{self.ng_port}"

    @property
    def pid(self) -> int | None:
        """PID of the running daemon, if any."""
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        """The daemon's stderr log inside the private temp dir."""
        assert self._workdir is not None, "not started"
        return self._workdir / "rtpengine.log"

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def command(self) -> list[str]:
        """The daemon's command line; every flag keeps it local, light and rootless."""
        assert self._binary is not None and self._workdir is not None
        return [
            self._binary,
            # Never read /etc/rtpengine/rtpengine.conf: Debian's copy opens the
            # CLI on :2224 and HTTP on :2225 (fixed ports that collide between
            # runs), sets table=0 and interface=any.
            "--config-file=none",
            "--foreground",  # stay our child, so we can wait for it and signal it
            "--log-stderr",  # log to our file, not syslog
            f"--pidfile={self._workdir / 'rtpengine.pid'}",
            "--table=-1",  # userspace forwarding: no kernel module, no root needed
            f"--interface={LOOPBACK}",  # RTP sockets on loopback only
            f"--listen-ng={LOOPBACK}:{self.ng_port}",  # control on loopback only
            f"--port-min={self.port_min}",
            f"--port-max={self.port_max}",
            "--delete-delay=0",  # free a deleted call at once, not after 30 s
            "--num-threads=2",  # default is one worker per CPU; tests need few
            "--media-num-threads=1",
        ]

    def __enter__(self) -> RtpEngineProcess:
        self._binary = find_binary()
        if self._binary is None:
            pytest.skip(INSTALL_HINT)
        self._workdir = Path(tempfile.mkdtemp(prefix="vagent-rtpengine-"))
        try:
            self._start_with_retries()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if needed; then remove the temp dir."""
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # ---------------------------------------------------------------- internals

    def _start_with_retries(self) -> None:
        """Start on a fresh port; retry when the port was taken meanwhile."""
        last_error: RtpEngineStartError | None = None
        for _ in range(START_ATTEMPTS):
            self.ng_port = free_udp_port()
            self.port_min = random.randrange(RTP_RANGE_LOW, RTP_RANGE_HIGH - RTP_WINDOW, 2)
            self.port_max = self.port_min + RTP_WINDOW - 1
            try:
                self._spawn()
                self._wait_ready()
                return
            except RtpEngineStartError as exc:
                last_error = exc
                self._terminate()
        assert last_error is not None
        raise last_error

    def _spawn(self) -> None:
        """Launch the daemon with stdout and stderr going to the log file."""
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._workdir,
            preexec_fn=_die_with_parent,  # only a prctl call: safe before exec
        )

    def _wait_ready(self) -> None:
        """Poll with ng pings until pong, the process exits, or the timeout."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RtpEngineStartError(
                    f"rtpengine exited with {self._proc.returncode} during startup:\n"
                    f"{self._log_tail()}"
                )
            if ng_ping(LOOPBACK, self.ng_port):
                return
            time.sleep(0.02)
        raise RtpEngineStartError(
            f"rtpengine did not answer ng ping on {self.ng_address} within "
            f"{self.startup_timeout_s:g} s:\n{self._log_tail()}"
        )

    def _terminate(self) -> None:
        """Stop the process if it runs and close the log file."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 30) -> str:
        """Last lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])
