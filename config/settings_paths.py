"""Where the project keeps local state (embedded database, uploaded files). Read by settings and local tooling."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def data_root_from_environment() -> Path:
    return Path(os.environ.get("SILO_DATA_DIR") or BASE_DIR / ".data").resolve()
