"""What outlives a simulated Asterisk restart, shared by server and test thread.

The configuration, the fault switches and the journal belong to the *test*,
not to one Asterisk boot; the :class:`~.engine.Engine` is replaced on every
(re)start. Handlers reach the current engine through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .config import DoubleConfig
from .engine import Engine
from .faults import FaultInjector
from .journal import Journal
from .swagger import SwaggerSpec


@dataclass
class Runtime:
    """Long-lived pieces of one double."""

    config: DoubleConfig
    spec: SwaggerSpec
    journal: Journal = field(default_factory=Journal)
    faults: FaultInjector = field(default_factory=FaultInjector)
    engine: Engine | None = None
    base_url: str = ""
    #: Called (in a worker thread) by ``POST /_double/restart``.
    restart_hook: Callable[[float], None] | None = None

    def require_engine(self) -> Engine:
        if self.engine is None or self.engine.closed:
            raise RuntimeError("the simulated Asterisk is not running")
        return self.engine
