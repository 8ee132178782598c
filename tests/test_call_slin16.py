"""A call with VAGENT_MEDIA_FORMAT=slin16: Asterisk sends 16 kHz (PT 118), and the
agent answers in PT 0 mu-law, because Asterisk silently drops PT 118 coming back."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from conftest import Stack, answering_stack, wait_for
from support.ari_double import AriDouble

pytestmark = pytest.mark.slow

PASSWORD = "ari-slin16-secret"


@pytest.fixture(scope="module")
def wideband(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, AriDouble]]:
    with (
        AriDouble(user="vagent", password=PASSWORD, fail_on_violations=False) as ari,
        answering_stack(
            tmp_path_factory.mktemp("slin16"), ari, PASSWORD, VAGENT_MEDIA_FORMAT="slin16"
        ) as stack,
    ):
        yield stack, ari


def test_wideband_caller_is_heard_and_answered(wideband: tuple[Stack, AriDouble]) -> None:
    _, ari = wideband
    channel = ari.start_inbound_call(["inbound"], answered=False)
    wait_for(lambda: ari.heard(channel).duration_s > 2.0, 15, "the greeting")
    media = f"{channel}-media"
    assert {p.payload_type for p in ari.rtp_sent(media)} == {118}  # Asterisk -> us: slin16
    assert {p.payload_type for p in ari.rtp_log(media) if p.accepted} == {0}  # us -> Asterisk
    greeting = ari.heard(channel).duration_s
    speech = subprocess.run(
        ["espeak-ng", "--stdout", "What are your opening hours?"], capture_output=True, check=True
    ).stdout
    ari.say(channel, speech)
    wait_for(lambda: ari.heard(channel).duration_s > greeting + 2.0, 20, "the answer")
    ari.hangup(channel)
