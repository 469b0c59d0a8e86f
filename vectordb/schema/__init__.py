"""How a tenant database gets its schema: the tenant app's Django migrations, applied per tenant database.

Three entry points, one path:
- `tenant_database_prepare(target, model=, dimensions=)`: a database just provisioned gets the latest schema and
  records the embedding model it will hold (provisioning calls this);
- `tenant_database_migrate(target)`: an existing database gets what is pending (the fleet migration, the template);
- `tenant_database_plan(target)`: what is pending, changing nothing (`migrate_tenants --plan` for a database whose
  registry record cannot say);
- `tenant_database_inspect(target)`: what the database really has (`tenants verify`).

Each reads which tenant migrations the database has recorded in `django_migrations` and applies the rest, compiled
to SQL once per process (`compiled.py`), in one transaction, with their records. Migrations that cannot be compiled
(Python code, non-atomic steps) go through Django's executor instead. A database the provider made empty in this
very attempt skips the read: its whole schema, record and embedding model go in one round trip. Destructive steps are refused unless allowed
(`breaking.py`). Two runs never migrate one database at once: they take a lock named after it in the main database
(tenant roles have no access to advisory locks). Every connection goes through the connection registry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from psycopg import sql

from vectordb.advisory_locks import advisory_lock
from vectordb.connections import TargetPurpose, TenantTarget, get_registry
from vectordb.dsn import Dsn
from vectordb.routers import TENANT_ALIAS_PREFIX, TENANT_APP_LABEL
from vectordb.schema.breaking import BreakingMigrationRefused
from vectordb.schema.compiled import (
    NotCompilable,
    compile_migrations,
    expected_index_names,
    latest_schema_version,
    record_sql,
    tenant_migration_order,
)
from vectordb.tenant_embedding_model import EmbeddingModel, embedding_model_recorded, embedding_model_settle

__all__ = [
    "BreakingMigrationRefused",
    "MigrationResult",
    "SchemaInspection",
    "latest_schema_version",
    "schema_target",
    "tenant_database_inspect",
    "tenant_database_migrate",
    "tenant_database_plan",
    "tenant_database_prepare",
    "tenant_migration_order",
]


@dataclass(frozen=True)
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    schema_version: str = ""


def schema_target(key: str, dsn: str) -> TenantTarget:
    """The target for schema work on a tenant database: `dsn` holds credentials that may change the schema (for
    Neon, the direct endpoint: DDL does not belong on a transaction-mode pooler)."""
    return TenantTarget(key=key, resolve_dsn=lambda _refresh: dsn, purpose=TargetPurpose.SCHEMA)


def tenant_database_prepare(target: TenantTarget, *, model: str, dimensions: int, new_database: bool = False) -> str:
    """Makes a newly provisioned database ready, in one transaction: the latest schema (pgvector with it), the
    embedding model recorded, and the vector column at its dimension. Returns the schema version. Idempotent: a
    retried provisioning finds what an earlier attempt did and completes it.

    `new_database`: the provider made the database empty in this very attempt. Then nothing needs reading first:
    schema, its record and the model go in one round trip (on Neon the database may sit in another region; `make
    bench`, section provisioning, measures what the round trips cost even on this machine)."""
    embedding_model = EmbeddingModel(model, dimensions)
    with _migration_lock(target), get_registry().connection(target) as connection:
        if new_database and (version := _prepare_new_database(connection, embedding_model)):
            return version
        result = _migrate(connection, target, allow_breaking=False)
        embedding_model_settle(connection, embedding_model)
    return result.schema_version


def tenant_database_migrate(target: TenantTarget, *, allow_breaking: bool = False) -> MigrationResult:
    """Applies every pending tenant migration. Safe to run concurrently with itself and with provisioning."""
    with _migration_lock(target), get_registry().connection(target) as connection:
        return _migrate(connection, target, allow_breaking=allow_breaking)


def tenant_database_plan(target: TenantTarget) -> list[str]:
    """The tenant migrations this database still needs, in order."""
    with get_registry().connection(target) as connection:
        applied = _recorded_migrations(connection)
    return [name for name in tenant_migration_order() if name not in (applied or set())]


@dataclass(frozen=True)
class SchemaInspection:
    """What one tenant database really has, read over its own connection."""

    schema_version: str  # the last migration of the order it has recorded ("" none)
    pending: tuple[str, ...]  # what it still needs, in order
    vector_extension: bool
    missing_indexes: tuple[str, ...]  # declared at its schema version, absent from the database
    embedding_model: EmbeddingModel | None

    @property
    def problems(self) -> list[str]:
        found = []
        if not self.vector_extension:
            found.append("the vector extension is not installed")
        if self.missing_indexes:
            found.append(f"missing indexes: {', '.join(self.missing_indexes)}")
        if self.embedding_model is None and self.schema_version:
            found.append("no embedding model recorded")
        return found


def tenant_database_inspect(target: TenantTarget) -> SchemaInspection:
    """Reads the database's migration record, pgvector, its indexes and its embedding model; changes nothing."""
    order = tenant_migration_order()
    with get_registry().connection(target) as connection:
        applied = _recorded_migrations(connection) or set()
        (extension,) = connection.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')"
        ).fetchone() or (False,)
        present = {
            name for (name,) in connection.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        }
        schema_version = next((name for name in reversed(order) if name in applied), "")
        model = embedding_model_recorded(connection) if schema_version else None
    return SchemaInspection(
        schema_version=schema_version,
        pending=tuple(name for name in order if name not in applied),
        vector_extension=bool(extension),
        missing_indexes=tuple(sorted(expected_index_names(schema_version) - present)),
        embedding_model=model,
    )


def _migration_lock(target: TenantTarget) -> contextlib.AbstractContextManager[bool]:
    return advisory_lock(f"tenant-schema:{target.key}")


def _recorded_migrations(connection: psycopg.Connection) -> set[str] | None:
    """The tenant migrations the database has recorded; None when it has no record table at all (a new database)."""
    recorder = connection.execute("SELECT to_regclass('django_migrations') IS NOT NULL").fetchone()
    if not recorder or not recorder[0]:
        return None
    rows = connection.execute("SELECT name FROM django_migrations WHERE app = %s", [TENANT_APP_LABEL]).fetchall()
    return {name for (name,) in rows}


def _migrate(connection: psycopg.Connection, target: TenantTarget, *, allow_breaking: bool) -> MigrationResult:
    """Applies what is pending in the connection's open transaction (the caller commits); the caller holds the
    migration lock."""
    order = tenant_migration_order()
    applied = _recorded_migrations(connection)
    pending = tuple(name for name in order if name not in (applied or set()))
    if not pending:
        return MigrationResult(applied=[], schema_version=order[-1] if order else "")
    try:
        compiled = compile_migrations(pending, with_recorder=applied is None)
    except NotCompilable:
        connection.rollback()
        return _migrate_with_django_executor(target, allow_breaking=allow_breaking)
    if compiled.breaking and not allow_breaking:
        raise BreakingMigrationRefused(compiled.breaking)
    # No parameters, so psycopg sends it all as one simple query: one round trip for the DDL and its records.
    connection.execute("\n".join([*compiled.statements, record_sql(pending).as_string(connection) + ";"]))
    return MigrationResult(applied=list(pending), schema_version=pending[-1])


def _prepare_new_database(connection: psycopg.Connection, model: EmbeddingModel) -> str:
    """The whole schema, its record and the embedding model in one round trip; the schema version, or "" with
    nothing done when the database has a migration record after all, or its schema cannot go as compiled SQL (the
    caller then takes the general path)."""
    order = tenant_migration_order()
    try:
        compiled = compile_migrations(order, with_recorder=True)
    except NotCompilable:
        return ""
    if not order or compiled.breaking:
        return ""  # the general path says why
    schema = sql.SQL("\n").join([sql.SQL(statement) for statement in compiled.statements] + [record_sql(order)])
    try:
        embedding_model_settle(connection, model, after=schema)
    except psycopg.errors.DuplicateTable:  # it has a record table: not a new database after all
        connection.rollback()
        return ""
    return order[-1]


def _migrate_with_django_executor(target: TenantTarget, *, allow_breaking: bool) -> MigrationResult:
    """For migrations that cannot be compiled: Django's own executor, on a connection slot of the registry."""
    from vectordb.schema.breaking import breaking_operations_in_plan

    with get_registry().slot_for_own_connection(target) as dsn, _django_connection(target.key, dsn) as connection:
        executor = MigrationExecutor(connection)
        targets = [node for node in executor.loader.graph.leaf_nodes() if node[0] == TENANT_APP_LABEL]
        plan = executor.migration_plan(targets)
        if not allow_breaking:
            refused = breaking_operations_in_plan(executor.loader, [migration for migration, _ in plan])
            if refused:
                raise BreakingMigrationRefused(refused)
        if plan:
            executor.migrate(targets, plan=plan)
    applied = [migration.name for migration, _ in plan]
    return MigrationResult(applied=applied, schema_version=tenant_migration_order()[-1])


@contextlib.contextmanager
def _django_connection(key: str, dsn: str) -> Iterator[DatabaseWrapper]:
    """A Django connection to the tenant database, visible to this thread only, closed on exit. Its alias starts
    with TENANT_ALIAS_PREFIX, which is how the router recognises a tenant database."""
    alias = f"{TENANT_ALIAS_PREFIX}{key}"
    settings_dict = connections.configure_settings(
        {"default": connections.settings["default"], alias: Dsn.parse(dsn).django_settings()}
    )[alias]
    connection = DatabaseWrapper(settings_dict, alias)
    connections[alias] = connection
    try:
        yield connection
    finally:
        connection.close()
        del connections[alias]
