"""Run the double as its own process (for tests that start real services).

    cd tests && python -m support.ari_double --port 8088 --user vagent --password secret

Prints one JSON line ``{"base_url": ..., "ws_url": ..., "port": ...}`` once it
listens (``--port 0`` picks a free port), then serves until SIGTERM/SIGINT.
Steer it over HTTP under ``/_double/`` (see control.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType

from .config import DoubleConfig
from .double import AriDouble


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m support.ari_double",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--user", default="vagent")
    parser.add_argument("--password", default="CHANGEME")
    parser.add_argument("--read-only", action="store_true", help="the user may only GET")
    parser.add_argument("--system-name", default="vagent-lab")
    parser.add_argument("--app", default="vagent", help="default Stasis app for inbound calls")
    parser.add_argument("--media-time-scale", type=float, default=1.0)
    parser.add_argument(
        "--rtp-time-scale", type=float, default=1.0, help="scale of the 20 ms RTP clock"
    )
    parser.add_argument(
        "--strict-rtp-window", type=float, default=5.0, help="seconds before the source locks"
    )
    parser.add_argument("--ari-disabled", action="store_true", help="ari.conf enabled = no")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    config = DoubleConfig(
        user=options.user,
        password=options.password,
        read_only=options.read_only,
        system_name=options.system_name,
        default_app=options.app,
        media_time_scale=options.media_time_scale,
        rtp_time_scale=options.rtp_time_scale,
        strict_rtp_window=options.strict_rtp_window,
        ari_enabled=not options.ari_disabled,
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    double = AriDouble(
        host=options.host, port=options.port, config=config, fail_on_violations=False
    )
    double.start()
    ready = {"base_url": double.base_url, "ws_url": double.ws_url, "port": double.port}
    print(json.dumps(ready), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        double.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
