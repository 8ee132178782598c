"""How the simulated Asterisk is set up: users, identity, media timings.

Defaults reproduce the lab Asterisk the samples were captured from
(``vagent-lab``, entity id ``02:fc:00:00:00:01``, 22.10.1, user ``vagent``),
so captured exchanges can be replayed against the double unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth import AriUser

#: Measured in the lab (events.jsonl timestamps): seconds of audio per sound.
DEFAULT_SOUNDS: dict[str, float] = {
    "hello-world": 1.4,
    "beep": 0.425,
    "tt-monkeys": 6.5,
    "demo-congrats": 11.0,
    "vm-goodbye": 0.8,
    "silence/1": 1.0,
    "silence/2": 2.0,
    "silence/3": 3.0,
}

#: Audio format names Asterisk 22 knows (``core show codecs``); anything else
#: makes ExternalMedia fail with 500.
AUDIO_FORMATS = frozenset(
    {
        "ulaw", "alaw", "gsm", "g722", "g723", "g726", "g726aal2", "g729", "ilbc", "lpc10",
        "adpcm", "speex", "speex16", "speex32", "siren7", "siren14", "testlaw", "opus",
        "slin", "slin12", "slin16", "slin24", "slin32", "slin44", "slin48", "slin96",
        "slin192", "codec2", "silk8", "silk12", "silk16", "silk24",
    }
)  # fmt: skip


@dataclass
class DoubleConfig:
    """Everything that distinguishes one simulated Asterisk from another."""

    user: str = "vagent"
    password: str = "CHANGEME"
    read_only: bool = False
    extra_users: tuple[AriUser, ...] = ()
    system_name: str = "vagent-lab"
    entity_id: str = "02:fc:00:00:00:01"
    version: str = "22.10.1"
    default_app: str = "vagent"
    #: False reproduces ``enabled = no`` in ari.conf: every /ari URL is a 404 page.
    ari_enabled: bool = True
    rtp_address: str = "127.0.0.1"
    rtp_port_range: tuple[int, int] = (10000, 10999)
    #: Multiplies every simulated media duration (0.05 makes tests fast).
    media_time_scale: float = 1.0
    #: Multiplies the 20 ms RTP clock of bridged media (caller speech included).
    #: Separate from ``media_time_scale`` on purpose: an app paces its own RTP
    #: on a real clock, so speeding this up is only for apps that do not care.
    rtp_time_scale: float = 1.0
    #: rtp.conf ``strictrtp`` / ``probation``, and the learning window after which
    #: the accepted source is locked (5 s in Asterisk; shorter makes tests fast).
    strict_rtp: bool = True
    strict_rtp_probation: int = 4
    strict_rtp_window: float = 5.0
    sounds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SOUNDS))
    recordings: dict[str, float] = field(default_factory=dict)
    build_os: str = "Linux"
    build_kernel: str = "6.18.44-fc-v769"
    build_machine: str = "x86_64"
    build_date: str = "2026-11-29 10:51:24 UTC"
    max_open_files: int = 8192

    @property
    def server_name(self) -> str:
        """What Asterisk writes in ``Server:`` and at the foot of its HTML pages."""
        return f"Asterisk/{self.version}"

    def users(self) -> dict[str, AriUser]:
        primary = AriUser(self.user, self.password, self.read_only)
        return {u.name: u for u in (primary, *self.extra_users)}
