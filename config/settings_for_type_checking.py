"""The settings mypy's Django plugin loads: the app's own, pointed at a database URL that is never connected to, so a
type check starts no embedded PostgreSQL and needs no environment."""

import os

os.environ.setdefault("DATABASE_URL", "postgresql://type-check@127.0.0.1:9/type_check")

from config.settings import *  # noqa: F403
