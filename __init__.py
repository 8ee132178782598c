"""vagent: a resilient AI voice agent for the Asterisk PBX, and the ops CLI that runs it."""

from __future__ import annotations

__version__ = "0.1.0"
