"""The control token: a random secret `vagent up` writes for the CLI and the services.

Only the account that runs vagent can read it (mode 0600 in the 0700 run
dir). It lives apart from the control API so the CLI can read it without
importing the web framework.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from vagent.services.config import Settings

TOKEN_FILE = "control.token"


def token_path(settings: Settings) -> Path:
    return settings.run_dir / TOKEN_FILE


def write_token(settings: Settings) -> str:
    """Write a fresh token, mode 0600, and return it. The run dir must exist (0700)."""
    token = secrets.token_hex(32)
    fd = os.open(token_path(settings), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        os.fchmod(handle.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        handle.write(token)
    return token


def read_token(settings: Settings) -> str | None:
    """The token of the running stack; None when the file is missing, empty or unreadable."""
    return read_token_file(token_path(settings))


def read_token_file(path: Path) -> str | None:
    """The token in `path`; None when the file is missing, empty or unreadable."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None
