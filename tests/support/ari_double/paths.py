"""Where the shared reference material (Swagger files, captured samples) lives.

The repository is /work/main and the read-only reference corpus is its sibling
``../shared``. Other checkouts (CI, a developer laptop) may keep it elsewhere,
so ``VAGENT_SHARED_DIR`` wins when set.
"""

from __future__ import annotations

import os
from pathlib import Path

#: tests/support/ari_double/paths.py -> parents[3] is the repository root.
REPO_ROOT = Path(__file__).resolve().parents[3]


def shared_dir() -> Path:
    """The shared reference directory: $VAGENT_SHARED_DIR, else <repo>/../shared."""
    configured = os.environ.get("VAGENT_SHARED_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    return REPO_ROOT.parent / "shared"


def api_docs_dir() -> Path:
    """The Asterisk 22 ARI Swagger 1.1 files (the REST contract)."""
    return shared_dir() / "ari-api-docs"


def samples_dir() -> Path:
    """Real traffic captured from Asterisk 22.10.1 (events, REST exchanges)."""
    return shared_dir() / "ari-samples"
