"""Applying the tenant schema (this app's Django migrations) to one tenant database.

Callers hand us a tenant key and a DSN; we open a Django connection under a tenant alias (the router sends only this
app's migrations there) and migrate under an advisory lock taken inside the tenant database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlparse

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql.base import DatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.operations import AlterField, DeleteModel, RemoveField, RenameField, RenameModel
from django.db.migrations.operations.special import RunSQL

from vectordb.routers import TENANT_ALIAS_PREFIX, TENANT_APP_LABEL

# Taken inside the tenant database, so two `migrate_tenants` runs (or a run and a provisioning task) never migrate
# the same tenant at once. Any constant works: advisory locks are per database.
MIGRATION_LOCK_KEY = 7_316_221_001
DESTRUCTIVE_OPERATIONS = (DeleteModel, RemoveField, RenameField, RenameModel, AlterField)

class BreakingMigrationRefused(Exception):
    """A pending migration would break the app still running on the old schema during a fleet migration."""


@dataclass(frozen=True)
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    schema_version: str = ""


def database_settings_from_dsn(dsn: str) -> dict:
    parsed = urlparse(dsn)
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    options.setdefault("connect_timeout", "10")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": 0,
    }


@contextlib.contextmanager
def tenant_django_connection(tenant_key: str, dsn: str) -> Iterator[BaseDatabaseWrapper]:
    """A Django connection to the tenant database, closed on exit.

    Built directly rather than added to settings.DATABASES, so concurrent migrations in threads share no state. Its
    alias starts with TENANT_ALIAS_PREFIX, which is how the router recognises a tenant database.
    """
    alias = f"{TENANT_ALIAS_PREFIX}{tenant_key}"
    # configure_settings fills in Django's defaults; it insists on seeing a 'default' entry alongside.
    settings_dict = connections.configure_settings(
        {"default": connections.settings["default"], alias: database_settings_from_dsn(dsn)}
    )[alias]
    connection = DatabaseWrapper(settings_dict, alias)
    # Visible to `connections[alias]` (transaction.atomic looks it up) in this thread only.
    connections[alias] = connection
    try:
        yield connection
    finally:
        connection.close()
        del connections[alias]


def _tenant_targets(executor: MigrationExecutor) -> list[tuple[str, str]]:
    return [node for node in executor.loader.graph.leaf_nodes() if node[0] == TENANT_APP_LABEL]


def _plan(executor: MigrationExecutor) -> list:
    return [(migration, backwards) for migration, backwards in executor.migration_plan(_tenant_targets(executor))]


def breaking_operations(migration) -> list[str]:
    """Descriptions of a migration's operations that would break the running app's queries."""
    found = []
    for operation in migration.operations:
        if isinstance(operation, DESTRUCTIVE_OPERATIONS):
            found.append(f"{migration.name}: {operation.describe()}")
        elif isinstance(operation, RunSQL) and getattr(operation, "hints", {}).get("breaking"):
            found.append(f"{migration.name}: {operation.describe()}")
    return found


def pending_migrations(tenant_key: str, dsn: str) -> list[str]:
    with tenant_django_connection(tenant_key, dsn) as connection:
        executor = MigrationExecutor(connection)
        return [migration.name for migration, _ in _plan(executor)]


def latest_schema_version() -> str:
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    leaves = [name for app, name in loader.graph.leaf_nodes() if app == TENANT_APP_LABEL]
    return leaves[0] if leaves else ""


def migrate_tenant_database(tenant_key: str, dsn: str, *, allow_breaking: bool = False) -> MigrationResult:
    """Apply every pending tenant migration to this database. Safe to run concurrently with itself."""
    with tenant_django_connection(tenant_key, dsn) as connection:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        try:
            executor = MigrationExecutor(connection)
            plan = _plan(executor)
            if not allow_breaking:
                refused = [description for migration, _ in plan for description in breaking_operations(migration)]
                if refused:
                    raise BreakingMigrationRefused(
                        "destructive operations need --allow-breaking: " + "; ".join(refused)
                    )
            if plan:
                executor.migrate(_tenant_targets(executor), plan=plan)
            applied = [migration.name for migration, _ in plan]
            executor.loader.build_graph()
            version = _applied_version(executor)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
        return MigrationResult(applied=applied, schema_version=version)


def _applied_version(executor: MigrationExecutor) -> str:
    applied = sorted(name for app, name in executor.loader.applied_migrations if app == TENANT_APP_LABEL)
    return applied[-1] if applied else ""


def schema_version(tenant_key: str, dsn: str) -> str:
    with tenant_django_connection(tenant_key, dsn) as connection:
        executor = MigrationExecutor(connection)
        return _applied_version(executor)


class EmbeddingModelMismatch(Exception):
    """The tenant database holds embeddings from another model than the one configured: never mix them."""


EMBEDDING_MODEL_KEY = "embedding_model"
EMBEDDING_DIMENSIONS_KEY = "embedding_dimensions"


def embedding_model_of(dsn: str) -> tuple[str, int] | None:
    """The embedding model and dimension recorded in the tenant database, if any."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10) as connection:
        rows = dict(
            connection.execute(
                "SELECT key, value FROM tenant_settings WHERE key IN (%s, %s)",
                [EMBEDDING_MODEL_KEY, EMBEDDING_DIMENSIONS_KEY],
            ).fetchall()
        )
    if EMBEDDING_MODEL_KEY not in rows:
        return None
    return rows[EMBEDDING_MODEL_KEY], int(rows.get(EMBEDDING_DIMENSIONS_KEY, 0))


def embedding_model_record(dsn: str, model: str, dimensions: int, *, replace: bool = False) -> None:
    """Record which model fills this database. Refuses a different model unless `replace` (re-embedding)."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=10) as connection, connection.transaction():
        connection.execute("LOCK TABLE tenant_settings IN SHARE ROW EXCLUSIVE MODE")
        rows = dict(
            connection.execute(
                "SELECT key, value FROM tenant_settings WHERE key IN (%s, %s)",
                [EMBEDDING_MODEL_KEY, EMBEDDING_DIMENSIONS_KEY],
            ).fetchall()
        )
        recorded = (rows.get(EMBEDDING_MODEL_KEY), rows.get(EMBEDDING_DIMENSIONS_KEY))
        if recorded[0] is not None and recorded != (model, str(dimensions)) and not replace:
            raise EmbeddingModelMismatch(
                f"tenant database holds {recorded[0]} ({recorded[1]} dims) embeddings; configured model is "
                f"{model} ({dimensions} dims): re-embed the tenant's documents to switch"
            )
        for key, value in [(EMBEDDING_MODEL_KEY, model), (EMBEDDING_DIMENSIONS_KEY, str(dimensions))]:
            connection.execute(
                "INSERT INTO tenant_settings (key, value, updated_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                [key, value],
            )
