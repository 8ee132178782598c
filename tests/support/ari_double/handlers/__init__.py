"""REST handlers, one per Swagger operation the double implements.

A handler receives the decoded ``args`` (exactly what Asterisk's generated
callback would hand its resource function) and returns the response. The
registry is keyed by ``resource.nickname``; an operation that is valid in
Swagger but missing here is answered 501 by the pipeline, so a test notices
the double's gap instead of getting a fake success.
"""

from __future__ import annotations

# Importing the modules fills HANDLERS.
from . import applications, asterisk, bridges, channels, external_media, playbacks  # noqa: F401
from .registry import HANDLERS, Handler, handler

__all__ = ["HANDLERS", "Handler", "handler"]
