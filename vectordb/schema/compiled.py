"""The tenant migrations as SQL, compiled once per process and sent to every tenant database.

Django's executor costs tens of milliseconds of Python per tenant (loading the graph, rendering model states), under
the GIL: a fleet migrated by threads would gain little. Compiled once, like `sqlmigrate`, the per-tenant work is a
query and the DDL, and tenants migrate in parallel (`make bench`, section fleet_migration). Migrations that need
Python (RunPython) or run outside a transaction are not compiled: Django's executor applies those.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.contrib.postgres.operations import CreateExtension
from django.db import connections
from django.db.backends.postgresql.base import DatabaseWrapper
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations.special import RunPython
from django.db.migrations.recorder import MigrationRecorder
from psycopg import sql

from vectordb.routers import TENANT_ALIAS_PREFIX, TENANT_APP_LABEL
from vectordb.schema.breaking import breaking_operations_in_plan


@dataclass(frozen=True)
class CompiledMigrations:
    names: tuple[str, ...]  # the migrations, in order
    statements: tuple[str, ...]  # their SQL, in order, each ending with ";"
    breaking: tuple[str, ...]  # descriptions of destructive operations, if any


class NotCompilable(Exception):
    """These migrations need Django's executor per tenant (Python code, non-atomic steps)."""


def tenant_migration_order() -> tuple[str, ...]:
    """Every tenant migration, in the order they apply. Cached per migration source (they don't change at run
    time; tests swap them with MIGRATION_MODULES)."""
    return _tenant_migration_order(_migration_source())


def latest_schema_version() -> str:
    order = tenant_migration_order()
    return order[-1] if order else ""


def expected_index_names(schema_version: str) -> frozenset[str]:
    """The indexes the tenant tables declare once `schema_version` is applied (from the migrations' model states)."""
    return _expected_index_names(_migration_source(), schema_version)


@lru_cache(maxsize=32)
def _expected_index_names(_migration_modules: str, schema_version: str) -> frozenset[str]:
    if not schema_version:
        return frozenset()
    state = MigrationLoader(None, ignore_no_migrations=True).project_state((TENANT_APP_LABEL, schema_version))
    return frozenset(
        index.name
        for (app, _model), model_state in state.models.items()
        if app == TENANT_APP_LABEL
        for index in model_state.options.get("indexes", [])
    )


def _migration_source() -> str:
    return repr(getattr(settings, "MIGRATION_MODULES", {}))


@lru_cache(maxsize=8)
def _tenant_migration_order(_migration_modules: str) -> tuple[str, ...]:
    loader = MigrationLoader(None, ignore_no_migrations=True)
    leaves = [node for node in loader.graph.leaf_nodes() if node[0] == TENANT_APP_LABEL]
    if not leaves:
        return ()
    return tuple(name for app, name in loader.graph.forwards_plan(leaves[0]) if app == TENANT_APP_LABEL)


_compile_lock = threading.Lock()
_compiled: dict[tuple, CompiledMigrations] = {}


def compile_migrations(names: tuple[str, ...], with_recorder: bool) -> CompiledMigrations:
    """The SQL of these tenant migrations, computed once and reused for every tenant. `with_recorder` starts with
    Django's `django_migrations` table itself, for a database that has none yet. Raises NotCompilable."""
    cache_key = (_migration_source(), names, with_recorder)
    with _compile_lock:
        if cache_key not in _compiled:
            _compiled[cache_key] = _compile(names, with_recorder)
        return _compiled[cache_key]


def _compile(names: tuple[str, ...], with_recorder: bool) -> CompiledMigrations:
    # Collecting SQL sends nothing but a catalogue lookup, so the main database serves as the sample; the alias
    # only has to look like a tenant's for the router to let the tenant app's operations through.
    alias = f"{TENANT_ALIAS_PREFIX}compile"
    main = connections["default"].settings_dict
    options = {key: value for key, value in main["OPTIONS"].items() if key != "pool"}  # one plain connection
    connection = DatabaseWrapper({**main, "OPTIONS": options, "CONN_MAX_AGE": 0}, alias)
    connections[alias] = connection  # this thread only, for lookups by alias during collection
    try:
        loader = MigrationLoader(connection, ignore_no_migrations=True)
        migrations = [loader.graph.nodes[(TENANT_APP_LABEL, name)] for name in names]
        for migration in migrations:
            if not migration.atomic or any(isinstance(operation, RunPython) for operation in migration.operations):
                raise NotCompilable(migration.name)
        recorder_sql: list[str] = []
        if with_recorder:
            with connection.schema_editor(collect_sql=True, atomic=False) as editor:
                editor.create_model(MigrationRecorder.Migration)
            recorder_sql = editor.collected_sql
        # CreateExtension writes its statement only when the sample database lacks the extension: always create
        # them, first (IF NOT EXISTS makes it a no-op where present).
        extensions = [
            f"CREATE EXTENSION IF NOT EXISTS {connection.ops.quote_name(operation.name)}"
            for migration in migrations
            for operation in migration.operations
            if isinstance(operation, CreateExtension)
        ]
        collected = recorder_sql + loader.collect_sql([(migration, False) for migration in migrations])
        statements = [
            statement for statement in collected if statement.strip() and not statement.lstrip().startswith("--")
        ]
        return CompiledMigrations(
            names=names,
            statements=tuple(dict.fromkeys(terminated(statement) for statement in extensions + statements)),
            breaking=tuple(breaking_operations_in_plan(loader, migrations)),
        )
    finally:
        connection.close()
        del connections[alias]


def record_sql(names: tuple[str, ...]) -> sql.Composed:
    """Records these migrations as applied, as Django's executor would."""
    return sql.SQL("INSERT INTO django_migrations (app, name, applied) VALUES {}").format(
        sql.SQL(", ").join(sql.SQL("({}, {}, now())").format(TENANT_APP_LABEL, name) for name in names)
    )


def terminated(statement: str) -> str:
    statement = statement.rstrip()
    return statement if statement.endswith(";") else statement + ";"
