"""``/applications`` (resource_applications.c)."""

from __future__ import annotations

from ..engine import Engine
from ..params import DecodedArgs
from ..responses import AriResponse, error, ok
from .registry import handler


@handler("applications.list")
def list_applications(engine: Engine, args: DecodedArgs) -> AriResponse:
    return ok([app.to_json() for app in engine.apps.apps.values()])


@handler("applications.get")
def get_application(engine: Engine, args: DecodedArgs) -> AriResponse:
    """404 once no websocket holds the app and nothing subscribes it (README 20)."""
    app = engine.apps.apps.get(args.path["applicationName"])
    if app is None:
        return error(404, "Application not found")
    return ok(app.to_json())
