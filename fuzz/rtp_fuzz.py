"""atheris (libFuzzer) harness for RTP: the packet parser and the endpoint's receive path.

Run from the repository root, in the project's venv:

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/rtp_fuzz.py -max_total_time=300 fuzz/corpus/rtp

Each input is cut into up to 8 datagrams. Every datagram goes through
RtpPacket.parse (RtpError only; a parsed packet re-encodes to itself) and then
into one long-lived RtpEndpoint exactly as its socket would hand it over,
which must never raise and must account for every datagram in one counter.
A crash leaves `crash-<sha1>`: replay it with `python fuzz/rtp_fuzz.py crash-...`.
"""

from __future__ import annotations

import asyncio
import sys

import atheris

with atheris.instrument_imports(include=["vagent"]):
    from vagent.services.call_controller.rtp import RtpEndpoint, RtpError, RtpPacket

REMOTE = ("127.0.0.1", 40000)
SOURCES = [REMOTE, ("127.0.0.1", 40001)]


async def _endpoint() -> RtpEndpoint:
    endpoint = RtpEndpoint(strict_source=True, queue_frames=50)
    endpoint.set_remote(*REMOTE)
    return endpoint


LOOP = asyncio.new_event_loop()
ENDPOINT = LOOP.run_until_complete(_endpoint())


def _check_packet(datagram: bytes) -> None:
    try:
        packet = RtpPacket.parse(datagram)
    except RtpError:
        return
    if RtpPacket.parse(packet.encode()) != packet:
        raise AssertionError(f"re-encoding changed {datagram!r}")


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    for _ in range(provider.ConsumeIntInRange(1, 8)):
        datagram = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 400))
        source = SOURCES[provider.ConsumeIntInRange(0, 1)]
        _check_packet(datagram)
        ENDPOINT._on_datagram(datagram, source)  # what the socket's protocol calls
    stats = ENDPOINT.stats
    counted = stats.packets_in + stats.malformed + stats.unsupported + stats.late + stats.foreign
    if counted != stats.datagrams_in:
        raise AssertionError(f"{stats.datagrams_in} datagrams, {counted} counted")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
