"""What counts as a breaking tenant migration: the running app must keep working during a fleet migration."""

from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader

from vectordb.schema import breaking_operations, breaking_operations_in_plan, tenant_migration_order


def _migration(*operations):
    migration = migrations.Migration("9999_test", "vectordb")
    migration.operations = list(operations)
    return migration


def _state():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return loader.project_state(("vectordb", tenant_migration_order()[-1]))


def test_adding_a_nullable_column_or_a_default_is_not_breaking():
    migration = _migration(
        migrations.AddField("embedding", "language", models.CharField(max_length=16, null=True)),
        migrations.AlterField("conversation", "title", models.CharField(max_length=200, default="Untitled")),
    )

    assert breaking_operations(migration, _state()) == []


def test_drops_renames_and_type_changes_are_breaking():
    migration = _migration(
        migrations.RemoveField("embedding", "metadata"),
        migrations.RenameField("conversation", "title", "name"),
        migrations.AlterField("conversation", "title", models.CharField(max_length=50)),
        migrations.AlterField("message", "content", models.CharField(max_length=500)),
        migrations.DeleteModel("tenantsetting"),
    )

    assert breaking_operations(migration, _state()) == [
        "9999_test: Remove field metadata from embedding",
        "9999_test: Rename field title on conversation to name",
        "9999_test: Alter field title on conversation",
        "9999_test: Alter field content on message",
        "9999_test: Delete model tenantsetting",
    ]


def test_forbidding_null_is_breaking_allowing_it_is_not():
    migration = _migration(
        migrations.AlterField("conversation", "document_id", models.BigIntegerField(null=False, default=0)),
    )
    relaxing = _migration(
        migrations.AlterField("conversation", "title", models.CharField(max_length=200, null=True)),
    )

    assert breaking_operations(migration, _state()) == ["9999_test: Alter field document_id on conversation"]
    assert breaking_operations(relaxing, _state()) == []


def test_the_shipped_tenant_migrations_after_the_first_are_not_breaking():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    names = tenant_migration_order()[1:]

    assert breaking_operations_in_plan(loader, [loader.graph.nodes[("vectordb", name)] for name in names]) == []
