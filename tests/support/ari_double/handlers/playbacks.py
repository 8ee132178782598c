"""``/playbacks`` (resource_playbacks.c): get and stop."""

from __future__ import annotations

from ..engine import Engine
from ..params import DecodedArgs
from ..responses import AriResponse, error, no_content, ok
from .registry import handler


@handler("playbacks.get")
def get(engine: Engine, args: DecodedArgs) -> AriResponse:
    playback = engine.playbacks.get(args.path["playbackId"])
    return ok(playback.to_json()) if playback else error(404, "Playback not found")


@handler("playbacks.stop")
def stop(engine: Engine, args: DecodedArgs) -> AriResponse:
    """Stopping a playing playback still reports PlaybackFinished ``done`` (README 11)."""
    playback = engine.playbacks.get(args.path["playbackId"])
    if playback is None:
        return error(404, "Playback not found")
    engine.media.stop(playback)
    return no_content()
