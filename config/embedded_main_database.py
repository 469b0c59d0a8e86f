"""On the embedded default the main database is ours to set up: every `manage.py` command finds it migrated, even on
a fresh data folder (a newcomer's first `tenants add` must not end in `relation "users" does not exist`).

With DATABASE_URL set, migrating stays a deliberate deploy step and nothing here runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path

# Commands that migrate themselves, inspect migrations, or need no database at all.
COMMANDS_LEFT_ALONE = frozenset(
    {"migrate", "makemigrations", "showmigrations", "sqlmigrate", "squashmigrations", "help", "version", "check"}
)


@contextlib.contextmanager
def _migration_lock(data_root: Path) -> Iterator[None]:
    # The web server, the worker and a command may start at once on a fresh folder: one of them migrates.
    with open(data_root / ".main-database-migrate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main_database_migrate_if_needed(command: str | None) -> bool:
    """Apply the main database's pending migrations before `command` runs, on the embedded default only. Returns
    whether anything was applied. Call after django.setup()."""
    from django.conf import settings

    if not settings.EMBEDDED_POSTGRES or not command or command.startswith("-") or command in COMMANDS_LEFT_ALONE:
        return False
    from django.core.management import call_command
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    with _migration_lock(settings.DATA_DIR):
        executor = MigrationExecutor(connection)
        if not executor.migration_plan(executor.loader.graph.leaf_nodes()):
            return False
        print("setting up the embedded main database (first use of this data folder)...", file=sys.stderr, flush=True)
        call_command("migrate", interactive=False, verbosity=0)
    return True
