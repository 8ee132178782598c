"""Which source Asterisk accepts RTP from: ``strictrtp=yes`` as measured.

rtp-notes.md, "Symmetric RTP / strict RTP" (``probation=4``, learning window
5 s from channel creation). Asterisk never *sends* anywhere but
``external_host``; this class only decides what it *accepts*:

* A. During the window, ``external_host`` is accepted at once, always, even
  after another source was learned; any other source is accepted after 4
  packets of probation (consecutive sequence numbers), which are dropped.
* B. The first packet accepted after the window closes locks the source:
  everything from elsewhere is dropped from then on, whatever its SSRC.
* C. With nothing received before the window closed, the first source to
  pass probation (or ``external_host`` at once) gets locked, even if it is
  not ``external_host``; ``external_host`` is then dropped too.

An app that sends from another socket than the one it named, or starts late,
is therefore caught the way Asterisk would catch it: its audio vanishes.
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""


ACCEPT = Verdict(True)


class StrictRtp:
    """The learning state machine for one ExternalMedia channel."""

    def __init__(
        self,
        expected: Address | None,
        created_at: float,
        *,
        window: float = 5.0,
        probation: int = 4,
        enabled: bool = True,
    ) -> None:
        self.expected = expected
        self.created_at = created_at
        self.window = window
        self.probation = probation
        self.enabled = enabled
        self.learned: Address | None = None
        self.locked: Address | None = None
        self._candidate: Address | None = None
        self._candidate_seq = 0
        self._candidate_run = 0

    def check(self, source: Address, sequence: int, now: float) -> Verdict:
        """Accept or drop one packet from ``source`` arriving at ``now`` (monotonic)."""
        if not self.enabled:
            return ACCEPT
        if self.locked is not None:
            if source == self.locked:
                return ACCEPT
            return Verdict(False, f"strict RTP: source locked to {_show(self.locked)}")
        if source not in (self.expected, self.learned) and not self._passes_probation(
            source, sequence
        ):
            return Verdict(
                False, f"strict RTP probation ({self._candidate_run}/{self.probation} in sequence)"
            )
        self.learned = source
        if now - self.created_at >= self.window:
            self.locked = source
        return ACCEPT

    def _passes_probation(self, source: Address, sequence: int) -> bool:
        if source != self._candidate:
            self._candidate, self._candidate_run = source, 0
        elif sequence == (self._candidate_seq + 1) & 0xFFFF:
            self._candidate_run += 1
        else:
            self._candidate_run = 0
        self._candidate_seq = sequence
        if self._candidate_run < self.probation:
            return False
        self._candidate = None
        return True


def _show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
