"""The media half of :class:`~.double.AriDouble`'s test API.

With an inbound call bridged to an ExternalMedia RTP channel, the double
carries real RTP like Asterisk 22.10.1 (rtp-notes.md): the caller's queued
speech (silence otherwise) goes to the app every 20 ms, and whatever the app
sends back is judged (strict RTP, payload type), recorded and played to the
caller. A typical end-to-end test:

    caller = ari.start_inbound_call(args=["inbound"])
    ... the app answers, bridges, creates its ExternalMedia channel ...
    ari.say(caller, wav_bytes)              # the caller speaks
    ari.wait_until_said(caller)
    ... wait for the agent's turn ...
    answer = ari.heard(caller)             # 8 kHz Audio the caller got back
    [media] = ari.external_media_channels()
    log = ari.rtp_log(media)               # every packet the app sent, judged

Times in every record are ``time.time()``, the journal's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from vagent.services.audio import Audio

from . import media_actions
from .caller import HeardChunk, SpeechRecord
from .engine import Engine
from .media import PlaybackRecord
from .recorder import PacketRecord
from .rtp_stream import SentPacket

T = TypeVar("T")


class MediaControls:
    """Mixin: needs ``_call`` (run a function on the server loop) from AriDouble."""

    def _call(self, function: Callable[[Engine], T], timeout: float = 5.0) -> T:
        raise NotImplementedError

    # --- the caller's mouth ----------------------------------------------------------

    def say(self, channel_id: str, speech: bytes | Audio) -> float:
        """Queue caller speech (WAV bytes or an ``Audio``) after any still queued.

        Returns its duration in seconds. The caller is patient: speech advances
        only while the call is answered and bridged with an ExternalMedia
        channel, so it may be queued before the app is ready. Between
        utterances the caller sends silence frames.
        """
        samples, rate = media_actions.speech_samples(speech)
        record = self._call(lambda e: media_actions.say(e, channel_id, samples, rate))
        return record.seconds

    def wait_until_said(self, channel_id: str, timeout: float = 10.0) -> None:
        """Block until every queued utterance of the caller has been sent."""
        deadline = time.monotonic() + timeout
        while self._call(lambda e: media_actions.speaking(e, channel_id)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"caller {channel_id!r} still has speech queued")
            time.sleep(0.01)

    def speech_log(self, channel_id: str) -> list[SpeechRecord]:
        """Each ``say``: duration, when it was queued, started and finished."""
        return self._call(lambda e: media_actions.speech_log(e, channel_id))

    # --- what was heard ----------------------------------------------------------------

    def heard(self, channel_id: str) -> Audio:
        """8 kHz ``Audio`` of what reached ``channel_id``, in order of arrival.

        For an ExternalMedia channel: the app's audio that Asterisk accepted
        (strict RTP passed, payload type 0/8/10/11). For an inbound call: the
        app's audio that reached the caller through the bridge. Gaps between
        packets are not filled in.
        """
        samples = self._call(lambda e: media_actions.heard(e, channel_id))
        return Audio(samples.astype("<i2").tobytes(), media_actions.HEARD_RATE)

    def heard_chunks(self, channel_id: str, start: int = 0) -> list[HeardChunk]:
        """What reached the caller of ``channel_id``, one chunk per accepted packet
        (arrival time and 8 kHz samples), from index ``start``: poll it to follow
        a call as it goes without copying what was already read."""
        return self._call(lambda e: media_actions.heard_chunks(e, channel_id, start))

    def rtp_log(self, channel_id: str) -> list[PacketRecord]:
        """Every datagram the app sent to the ExternalMedia channel, with the verdict
        (``accepted``, else ``reason``: not RTP, strict RTP, unmapped payload type)."""
        return self._call(lambda e: media_actions.rtp_log(e, channel_id))

    def rtp_sent(self, channel_id: str) -> list[SentPacket]:
        """Every RTP packet the double sent from the ExternalMedia channel to the app."""
        return self._call(lambda e: media_actions.rtp_sent(e, channel_id))

    def external_media_channels(self) -> list[str]:
        """ExternalMedia RTP channel ids (hung up ones too), oldest first: how a test
        finds the channel an app created."""
        return self._call(media_actions.external_media_channels)

    def playback_log(self, target_id: str) -> list[PlaybackRecord]:
        """Playbacks the app started on a channel or bridge (``sound:``,
        ``characters:``, ...) with start/finish times, final state and ``stopped``."""
        return self._call(lambda e: media_actions.playback_log(e, target_id))
