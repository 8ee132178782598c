"""``/asterisk``: system information and ping (resource_asterisk.c)."""

from __future__ import annotations

from typing import Any

from ..clock import ari_timestamp
from ..engine import Engine
from ..params import DecodedArgs
from ..responses import AriResponse, ok
from .registry import handler

SECTIONS = ("build", "system", "config", "status")


def _sections(engine: Engine) -> dict[str, Any]:
    config = engine.config
    return {
        "build": {
            "os": config.build_os,
            "kernel": config.build_kernel,
            "machine": config.build_machine,
            "options": "OPTIONAL_API",
            "date": config.build_date,
            "user": "root",
        },
        "system": {"version": config.version, "entity_id": config.entity_id},
        "config": {
            "name": config.system_name,
            "default_language": "en",
            "setid": {"user": "", "group": ""},
            "max_open_files": config.max_open_files,
        },
        "status": {"startup_time": engine.startup_time, "last_reload_time": engine.startup_time},
    }


@handler("asterisk.getInfo")
def get_info(engine: Engine, args: DecodedArgs) -> AriResponse:
    """``only=`` selects sections case-insensitively; unknown names are just ignored."""
    wanted = {item.lower() for item in args.items("only")}
    sections = _sections(engine)
    show_all = "only" not in args.values
    return ok({name: body for name, body in sections.items() if show_all or name in wanted})


@handler("asterisk.ping")
def ping(engine: Engine, args: DecodedArgs) -> AriResponse:
    return ok(
        {"ping": "pong", "timestamp": ari_timestamp(), "asterisk_id": engine.config.entity_id}
    )
