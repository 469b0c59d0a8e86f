"""Which tenant migrations would break the app still running on the old schema during a fleet migration.

A fleet migration runs while the app serves traffic, so the app of the moment must work with the old schema and the
new one: drops, renames and changes of a column's type or size are refused unless explicitly allowed.
"""

from __future__ import annotations

from django.db.migrations import Migration
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import AlterField, DeleteModel, RemoveField, RenameField, RenameModel
from django.db.migrations.operations.special import RunSQL
from django.db.migrations.state import ProjectState

from vectordb.routers import TENANT_APP_LABEL

DESTRUCTIVE_OPERATIONS = (DeleteModel, RemoveField, RenameField, RenameModel, AlterField)
# A column may change in ways old code still works with (a default, a comment, allowing NULL), or not.
_SHAPE_ATTRIBUTES = ("max_length", "dimensions", "max_digits", "decimal_places")


class BreakingMigrationRefused(Exception):
    """A pending migration would break the app still running on the old schema during a fleet migration."""

    def __init__(self, operations: list[str] | tuple[str, ...]):
        self.operations = list(operations)
        super().__init__("destructive operations need --allow-breaking: " + "; ".join(operations))


def _alter_field_breaks(operation: AlterField, state: ProjectState) -> bool:
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
    return bool(old.null and not new.null)


def breaking_operations(migration: Migration, state: ProjectState | None = None) -> list[str]:
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


def breaking_operations_in_plan(loader: MigrationLoader, migrations: list[Migration]) -> list[str]:
    """Breaking operations across consecutive migrations, each judged against the state before it."""
    if not migrations:
        return []
    state = loader.project_state((TENANT_APP_LABEL, migrations[0].name), at_end=False)
    found = []
    for migration in migrations:
        found += breaking_operations(migration, state)
        state = migration.mutate_state(state, preserve=True)
    return found
