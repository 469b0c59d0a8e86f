"""Applying the tenant schema (this app's Django migrations) to one tenant database.

Callers hand us a tenant key and a DSN; we open a Django connection under a tenant alias (the router sends only this
app's migrations there) and migrate under an advisory lock taken inside the tenant database.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.postgresql.base import DatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import AlterField, DeleteModel, RemoveField, RenameField, RenameModel
from django.db.migrations.operations.special import RunSQL
from psycopg import sql

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
    # The compiled path's cursor when statements rode after the DDL (`then`): their results are its last sets.
    cursor: psycopg.Cursor | None = field(default=None, compare=False, repr=False)


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


# A column may change in ways old code still works with (a default, a comment, allowing NULL), or not.
_SHAPE_ATTRIBUTES = ("max_length", "dimensions", "max_digits", "decimal_places")


def _alter_field_breaks(operation: AlterField, state) -> bool:
    """An AlterField breaks the running app when it changes the column's type or size, or forbids NULL."""
    try:
        old = state.models[TENANT_APP_LABEL, operation.model_name_lower].fields[operation.name]
    except KeyError:
        return True
    new = operation.field
    if type(old) is not type(new):
        return True
    if any(getattr(old, name, None) != getattr(new, name, None) for name in _SHAPE_ATTRIBUTES):
        return True
    return old.null and not new.null


def breaking_operations(migration, state=None) -> list[str]:
    """Descriptions of a migration's operations that would break the app still running on the old schema.

    `state` is the project state before the migration; without it every AlterField counts as breaking.
    """
    found = []
    state = state.clone() if state is not None else None
    for operation in migration.operations:
        if isinstance(operation, AlterField) and state is not None:
            breaks = _alter_field_breaks(operation, state)
        elif isinstance(operation, RunSQL):
            breaks = bool(getattr(operation, "hints", {}).get("breaking"))
        else:
            breaks = isinstance(operation, DESTRUCTIVE_OPERATIONS)
        if breaks:
            found.append(f"{migration.name}: {operation.describe()}")
        if state is not None:
            operation.state_forwards(TENANT_APP_LABEL, state)
    return found


def breaking_operations_in_plan(loader, migrations: list) -> list[str]:
    """Breaking operations across consecutive migrations, each judged against the state before it."""
    if not migrations:
        return []
    state = loader.project_state((TENANT_APP_LABEL, migrations[0].name), at_end=False)
    found = []
    for migration in migrations:
        found += breaking_operations(migration, state)
        state = migration.mutate_state(state, preserve=True)
    return found


def pending_migrations(tenant_key: str, dsn: str) -> list[str]:
    with tenant_django_connection(tenant_key, dsn) as connection:
        executor = MigrationExecutor(connection)
        return [migration.name for migration, _ in _plan(executor)]


def tenant_migration_order() -> tuple[str, ...]:
    """Every tenant migration, in the order they apply. Cached per migration source (they don't change at run
    time; tests swap them with MIGRATION_MODULES)."""
    from django.conf import settings

    return _tenant_migration_order(repr(getattr(settings, "MIGRATION_MODULES", {})))


@lru_cache(maxsize=8)
def _tenant_migration_order(_migration_modules: str) -> tuple[str, ...]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    leaves = [node for node in loader.graph.leaf_nodes() if node[0] == TENANT_APP_LABEL]
    if not leaves:
        return ()
    return tuple(name for app, name in loader.graph.forwards_plan(leaves[0]) if app == TENANT_APP_LABEL)


def latest_schema_version() -> str:
    order = tenant_migration_order()
    return order[-1] if order else ""


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
                refused = breaking_operations_in_plan(executor.loader, [migration for migration, _ in plan])
                if refused:
                    raise BreakingMigrationRefused(
                        "destructive operations need --allow-breaking: " + "; ".join(refused)
                    )
            already = _applied_version(executor)
            if plan:
                executor.migrate(_tenant_targets(executor), plan=plan)
            applied = [migration.name for migration, _ in plan]
            version = applied[-1] if applied else already
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


# --- fleet fast path: compile pending migrations to SQL once, apply the SQL to every tenant -----------------------


@dataclass(frozen=True)
class CompiledMigrations:
    names: tuple[str, ...]  # the migrations, in order
    statements: tuple[str, ...]  # their SQL, in order
    breaking: tuple[str, ...]  # descriptions of destructive operations, if any


class NotCompilable(Exception):
    """These migrations need Django's executor per tenant (Python code, non-atomic steps)."""


_compile_lock = threading.Lock()
_compiled: dict[tuple, CompiledMigrations] = {}


def _compile_key(names: tuple[str, ...], with_recorder: bool) -> tuple:
    from django.conf import settings

    return (repr(getattr(settings, "MIGRATION_MODULES", {})), names, with_recorder)


def compile_migrations(names: tuple[str, ...], sample_dsn: str, with_recorder: bool = False) -> CompiledMigrations:
    """The SQL of these tenant migrations (like `sqlmigrate`), computed once and reused for every tenant.
    `with_recorder` starts with the `django_migrations` table itself, for a brand-new database."""
    from django.contrib.postgres.operations import CreateExtension
    from django.db.migrations.operations.special import RunPython
    from django.db.migrations.recorder import MigrationRecorder

    cache_key = _compile_key(names, with_recorder)
    with _compile_lock:
        if cache_key in _compiled:
            return _compiled[cache_key]
        with tenant_django_connection("compile", sample_dsn) as connection:
            loader = MigrationLoader(connection, ignore_no_migrations=True)
            migrations = [loader.graph.nodes[(TENANT_APP_LABEL, name)] for name in names]
            for migration in migrations:
                if not migration.atomic or any(isinstance(op, RunPython) for op in migration.operations):
                    raise NotCompilable(migration.name)
            recorder_sql: list[str] = []
            if with_recorder:
                with connection.schema_editor(collect_sql=True, atomic=False) as editor:
                    editor.create_model(MigrationRecorder.Migration)
                recorder_sql = editor.collected_sql
            # CreateExtension writes its statement only when the sample database lacks the extension, and the SQL is
            # reused for other databases: always create them, first (IF NOT EXISTS makes it a no-op where present).
            extensions = [
                f"CREATE EXTENSION IF NOT EXISTS {connection.ops.quote_name(operation.name)};"
                for migration in migrations
                for operation in migration.operations
                if isinstance(operation, CreateExtension)
            ]
            collected = recorder_sql + loader.collect_sql([(migration, False) for migration in migrations])
            statements = tuple(
                dict.fromkeys(  # in order, each once
                    extensions
                    + [
                        _terminated(statement)
                        for statement in collected
                        if statement.strip() and not statement.lstrip().startswith("--")
                    ]
                )
            )
        compiled = CompiledMigrations(
            names=names,
            statements=statements,
            breaking=tuple(breaking_operations_in_plan(loader, migrations)),
        )
        _compiled[cache_key] = compiled
        return compiled


def _recorded_names(connection: psycopg.Connection) -> set[str]:
    rows = connection.execute("SELECT name FROM django_migrations WHERE app = %s", [TENANT_APP_LABEL]).fetchall()
    return {row[0] for row in rows}


def _lock_and_applied_names(connection: psycopg.Connection) -> tuple[bool, set[str]]:
    """Takes the migration lock (transaction-scoped form of the one `migrate_tenant_database` takes) and reads the
    migration record: (whether the database has one at all, the tenant migrations in it)."""
    exists = connection.execute(
        "SELECT to_regclass('django_migrations') IS NOT NULL FROM pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_KEY]
    ).fetchone()[0]
    return exists, _recorded_names(connection) if exists else set()


def migrate_tenant_database_fast(tenant_key: str, dsn: str, *, allow_breaking: bool = False) -> MigrationResult:
    """Like `migrate_tenant_database`, but with one plain connection and SQL compiled once per fleet run: the
    per-tenant work is a query and the DDL, which lets many tenants migrate in parallel threads."""
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        result = _migrate_in_transaction(connection, tenant_key, dsn, allow_breaking=allow_breaking)
        connection.commit()
    return result


def _migrate_in_transaction(
    connection: psycopg.Connection,
    tenant_key: str,
    dsn: str,
    *,
    allow_breaking: bool = False,
    then: list[str] | tuple[str, ...] = (),
    new_database: bool = False,
) -> MigrationResult:
    """Applies the pending tenant migrations, compiled, in the connection's open transaction (the caller commits).
    `then`: statements (no parameters) sent in the same round trip after the DDL, only when there is DDL to send.
    `new_database`: the database was made moments ago and should have no schema at all (see `_migrate_new_database`).
    Raises NotCompilable for migrations that need Django's executor."""
    if new_database:
        migrated = _migrate_new_database(connection, then)
        if migrated is not None:
            return migrated
    order = tenant_migration_order()
    recorded, applied = _lock_and_applied_names(connection)
    pending = tuple(name for name in order if name not in applied)
    version = next((name for name in reversed(order) if name in applied), "")
    if not pending:
        return MigrationResult(applied=[], schema_version=version)
    compiled = _compiled.get(_compile_key(pending, not recorded))
    if compiled is None:
        connection.rollback()  # compiling takes a moment (once per process): don't hold the lock meanwhile
        compiled = compile_migrations(pending, dsn, with_recorder=not recorded)
        if tuple(name for name in order if name not in _lock_and_applied_names(connection)[1]) != pending:
            connection.rollback()  # someone migrated meanwhile: let the executor sort out what is left
            return migrate_tenant_database(tenant_key, dsn, allow_breaking=allow_breaking)
    if compiled.breaking and not allow_breaking:
        raise BreakingMigrationRefused("destructive operations need --allow-breaking: " + "; ".join(compiled.breaking))
    # One round trip for the DDL and its record: no parameters, so psycopg sends it all as one simple query.
    cursor = connection.execute(_batch([*compiled.statements, _record_sql(pending).as_string(connection), *then]))
    return MigrationResult(applied=list(pending), schema_version=pending[-1], cursor=cursor if then else None)


def _migrate_new_database(connection: psycopg.Connection, then: list[str] | tuple[str, ...]) -> MigrationResult | None:
    """The whole schema for a database made moments ago, with the migration lock in the DDL's own round trip rather
    than in one of its own to read the (absent) record first: one round trip fewer to a managed service that may sit
    in another region. None, with nothing done, when the compiled SQL is not at hand yet (the process's first
    tenant) or has destructive steps, or when the database has a migration record after all: the caller then takes
    the general path."""
    order = tenant_migration_order()
    compiled = _compiled.get(_compile_key(order, True))
    if compiled is None or compiled.breaking:
        return None
    lock = sql.SQL("SELECT pg_advisory_xact_lock({})").format(MIGRATION_LOCK_KEY)
    statements = [lock.as_string(connection), *compiled.statements, _record_sql(order).as_string(connection), *then]
    try:
        cursor = connection.execute(_batch(statements))
    except psycopg.errors.DuplicateTable:  # the record table exists: not a new database after all
        connection.rollback()
        return None
    return MigrationResult(applied=list(order), schema_version=order[-1], cursor=cursor if then else None)


def _record_sql(names: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("INSERT INTO django_migrations (app, name, applied) VALUES {}").format(
        sql.SQL(", ").join(sql.SQL("({}, {}, now())").format(TENANT_APP_LABEL, name) for name in names)
    )


def _batch(statements: list[str]) -> str:
    """Statements as one simple query: one round trip, one result set each."""
    return "\n".join(_terminated(statement) for statement in statements)


def _terminated(statement: str) -> str:
    statement = statement.rstrip()
    return statement if statement.endswith(";") else statement + ";"


class EmbeddingModelMismatch(Exception):
    """The tenant database holds embeddings from another model than the one configured: never mix them."""


EMBEDDING_MODEL_KEY = "embedding_model"
EMBEDDING_DIMENSIONS_KEY = "embedding_dimensions"


def tenant_database_prepare(
    tenant_key: str, dsn: str, *, model: str, dimensions: int, known_version: str = "", new_database: bool = False
) -> str:
    """Makes a new tenant database ready over one connection, in one transaction: the schema at the latest version
    (pgvector with it), the vector column at the configured model's dimension while the table is empty, and the
    model recorded. Returns the schema version. `known_version`: the version a fresh template clone is known to be at.
    `new_database`: the provider made the database in this attempt, so it has no schema yet.

    One connection rather than one per step: on a managed service each connection costs a TLS and SCRAM handshake.
    """
    from vectordb.store import embedding_dimension_change

    # Recorded unless a model is already: ON CONFLICT instead of a table lock settles a race with another recorder.
    record = sql.SQL(
        "INSERT INTO tenant_settings (key, value, updated_at) VALUES ({}, {}, now()), ({}, {}, now()) "
        "ON CONFLICT (key) DO NOTHING"
    ).format(EMBEDDING_MODEL_KEY, model, EMBEDDING_DIMENSIONS_KEY, str(dimensions))
    # What the checks below read: the vector column's dimension, whether it holds chunks, the recorded model.
    check = sql.SQL(
        "SELECT atttypmod, EXISTS (SELECT 1 FROM embeddings), "
        "(SELECT value FROM tenant_settings WHERE key = {}), (SELECT value FROM tenant_settings WHERE key = {}) "
        "FROM pg_attribute WHERE attrelid = 'embeddings'::regclass AND attname = 'embedding'"
    ).format(EMBEDDING_MODEL_KEY, EMBEDDING_DIMENSIONS_KEY)
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        after = [record.as_string(connection), check.as_string(connection)]
        if known_version and known_version == latest_schema_version():
            version, cursor = known_version, None
        else:
            try:
                # The record and the check ride in the migration's own round trip when there is DDL to send.
                migrated = _migrate_in_transaction(connection, tenant_key, dsn, then=after, new_database=new_database)
                version, cursor = migrated.schema_version, migrated.cursor
            except NotCompilable:
                connection.rollback()
                version, cursor = migrate_tenant_database(tenant_key, dsn).schema_version, None
        if cursor is None:
            cursor = connection.execute(_batch(after))
        while cursor.nextset():  # the check's answer is the last result
            pass
        column_dimensions, has_chunks, recorded_model, recorded_dimensions = cursor.fetchone()
        if (recorded_model, recorded_dimensions) != (model, str(dimensions)):
            raise EmbeddingModelMismatch(
                f"tenant database holds {recorded_model} ({recorded_dimensions} dims) embeddings; configured model "
                f"is {model} ({dimensions} dims): re-embed the tenant's documents to switch"
            )
        if column_dimensions != dimensions and not has_chunks:
            # Made from a template migrated under another model: match the column while nothing is in it. (A table
            # with chunks keeps them and its recorded model, which the check above holds to the configured one.)
            embedding_dimension_change(connection, dimensions)
        connection.commit()
    return version


def embedding_model_of(dsn: str) -> tuple[str, int] | None:
    """The embedding model and dimension recorded in the tenant database, if any."""
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
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        _embedding_model_record_in(connection, model, dimensions, replace=replace)
        connection.commit()


def _embedding_model_record_in(connection: psycopg.Connection, model: str, dimensions: int, *, replace: bool) -> None:
    """`embedding_model_record` in the connection's open transaction (the caller commits)."""
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
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO tenant_settings (key, value, updated_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            [(EMBEDDING_MODEL_KEY, model), (EMBEDDING_DIMENSIONS_KEY, str(dimensions))],
        )
