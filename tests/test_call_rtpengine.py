"""A call whose media is anchored through the real rtpengine daemon."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import Stack, answering_stack, wait_for
from support.ari_double import AriDouble
from support.rtpengine_proc import RtpEngineProcess

pytestmark = pytest.mark.slow

PASSWORD = "ari-rtpengine-secret"


@pytest.fixture(scope="module")
def anchored(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, AriDouble, RtpEngineProcess]]:
    with (
        AriDouble(user="vagent", password=PASSWORD, fail_on_violations=False) as ari,
        RtpEngineProcess() as rtpengine,
        answering_stack(
            tmp_path_factory.mktemp("anchored"),
            ari,
            PASSWORD,
            VAGENT_RTPENGINE_NG=rtpengine.ng_address,
            VAGENT_MEDIA_MODE="rtpengine",
        ) as stack,
    ):
        yield stack, ari, rtpengine


def test_the_call_is_heard_both_ways_through_rtpengine(
    anchored: tuple[Stack, AriDouble, RtpEngineProcess],
) -> None:
    _, ari, rtpengine = anchored
    channel = ari.start_inbound_call(["inbound"], answered=False)
    wait_for(lambda: ari.heard(channel).duration_s > 2.0, 15, "the greeting")
    media = f"{channel}-media"
    sources = {p.source for p in ari.rtp_log(media) if p.accepted}
    assert sources and all(
        rtpengine.port_min <= port <= rtpengine.port_max for _, port in sources
    ), sources  # Asterisk got our audio from rtpengine's ports, not from the controller
    greeting = ari.heard(channel).duration_s
    time.sleep(1.0)
    speech = subprocess.run(
        ["espeak-ng", "--stdout", "What are your opening hours?"], capture_output=True, check=True
    ).stdout
    ari.say(channel, speech)  # the caller's audio reaches the controller through rtpengine too
    wait_for(lambda: ari.heard(channel).duration_s > greeting + 2.0, 20, "the answer")
    ari.hangup(channel)
