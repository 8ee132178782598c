"""Timestamps and identifiers in exactly the format Asterisk 22 produces.

Product code parses these (timestamps for latency metrics, ids as dictionary
keys), so the double must not invent its own shapes:

* timestamps: ``2026-11-29T11:12:57.062+0000`` (milliseconds, ``+0000``, no colon);
* channel ids: ``<systemname>-<epoch>.<counter>`` (``vagent-lab-1795950775.0``),
  with one counter per Asterisk boot shared by every channel;
* bridge and playback ids: UUID4 strings.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime


def ari_timestamp(when: float | None = None) -> str:
    """Format a POSIX time like Asterisk's ``ast_json_timeval`` (UTC server)."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def http_date(when: float | None = None) -> str:
    """The RFC 7231 date Asterisk's HTTP server writes in the ``Date`` header."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, tz=UTC)
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


class IdFactory:
    """Identifier source for one Asterisk boot.

    Asterisk numbers channels with a process-wide counter that restarts at 0
    on every boot, prefixed by the system name and the creation second; a
    restarted double must therefore hand out fresh-looking ids too.
    """

    def __init__(self, system_name: str, clock: Callable[[], float] = time.time) -> None:
        self._system_name = system_name
        self._clock = clock
        self._unique = itertools.count()
        self._tech_counters: dict[str, itertools.count[int]] = {}
        self._random = random.Random()

    def uniqueid(self) -> str:
        """Next channel uniqueid, e.g. ``vagent-lab-1795950775.0``."""
        stamp = f"{int(self._clock())}.{next(self._unique)}"
        return f"{self._system_name}-{stamp}" if self._system_name else stamp

    def channel_sequence(self, technology: str) -> str:
        """Per-technology 8-hex-digit suffix (``PJSIP/1001-0000000a``)."""
        counter = self._tech_counters.setdefault(technology, itertools.count())
        return f"{next(counter):08x}"

    def pointer(self) -> str:
        """A plausible heap address, as UnicastRTP/WebSocket channel names embed one."""
        return f"0x7f{self._random.getrandbits(40):010x}"

    @staticmethod
    def uuid() -> str:
        """A UUID4 string, as Asterisk uses for bridges and playbacks."""
        return str(uuid.uuid4())
