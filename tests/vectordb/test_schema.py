"""The tenant schema: what counts as a breaking migration (the running app must keep working during a fleet
migration), and the compiled SQL that builds a new tenant database in one round trip."""

import contextlib
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
from django.db import migrations, models
from psycopg import sql
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


# --- the fast path and Django's executor build the same schema -----------------------------------------------------

_SCHEMA_QUERIES = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2
    """,
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2
    """,
    "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
}


@contextlib.contextmanager
def _scratch_databases(admin_dsn: str, *suffixes: str):
    """Empty databases on the tenant server, one per suffix, dropped afterwards: their DSNs (superuser)."""
    names = [f"silo_schema_{uuid.uuid4().hex[:8]}_{suffix}" for suffix in suffixes]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield [urlsplit(admin_dsn)._replace(path=f"/{name}").geturl() for name in names]
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _schema(dsn: str) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as connection:
        return {name: connection.execute(query).fetchall() for name, query in _SCHEMA_QUERIES.items()}


@pytest.mark.django_db(transaction=True)  # the compiled path compiles over a Django connection to the tenant
def test_compiled_sql_creates_pgvector_even_when_compiled_against_a_database_that_has_it(admin_dsn, monkeypatch):
    from vectordb import schema
    from vectordb.schema import compile_migrations, tenant_migration_order

    monkeypatch.setattr(schema, "_compiled", {})  # compile now, not from an earlier test's cache

    with _scratch_databases(admin_dsn, "with_vector") as (sample,):
        with psycopg.connect(sample, autocommit=True) as connection:
            connection.execute("CREATE EXTENSION vector")  # Django's CreateExtension then writes no SQL

        compiled = compile_migrations(tenant_migration_order(), sample, with_recorder=True)

        assert compiled.statements[0] == 'CREATE EXTENSION IF NOT EXISTS "vector";'
        assert sum("CREATE EXTENSION" in statement for statement in compiled.statements) == 1


@pytest.mark.django_db(transaction=True)  # the compiled path compiles over a Django connection to the tenant
def test_a_new_database_gets_the_same_schema_from_compiled_sql_as_from_django_migrate(admin_dsn):
    from vectordb.schema import migrate_tenant_database, tenant_database_prepare

    with _scratch_databases(admin_dsn, "fast", "django") as (fast, django):
        tenant_database_prepare("schema-fast", fast, model="all-MiniLM-L6-v2", dimensions=384)
        migrate_tenant_database("schema-django", django)

        built_fast, built_django = _schema(fast), _schema(django)

        assert built_fast == built_django
        generated = [row for row in built_fast["columns"] if row[:2] == ("embeddings", "content_search")]
        assert generated == [
            ("embeddings", "content_search", "tsvector", False, "s", "to_tsvector('english'::regconfig, content)")
        ]
        assert ("vector",) in built_fast["extensions"]


def _counting_queries(monkeypatch) -> list[str]:
    """Every query a psycopg connection sends through `execute` from now on (each is one round trip)."""
    sent: list[str] = []
    execute = psycopg.Connection.execute

    def counted(self, query, *arguments, **options):
        sent.append(query if isinstance(query, str) else query.as_string(self))
        return execute(self, query, *arguments, **options)

    monkeypatch.setattr(psycopg.Connection, "execute", counted)
    return sent


@pytest.mark.django_db(transaction=True)
def test_a_database_made_in_this_attempt_gets_lock_schema_and_records_in_one_round_trip(admin_dsn, monkeypatch):
    from vectordb.schema import migrate_tenant_database, tenant_database_prepare

    with _scratch_databases(admin_dsn, "warm", "new", "django") as (warm, new, django):
        tenant_database_prepare("schema-warm", warm, model="all-MiniLM-L6-v2", dimensions=384)  # compiles the SQL
        migrate_tenant_database("schema-django", django)
        sent = _counting_queries(monkeypatch)

        version = tenant_database_prepare(
            "schema-new", new, model="all-MiniLM-L6-v2", dimensions=384, new_database=True
        )

        assert len(sent) == 1
        assert sent[0].startswith("SELECT pg_advisory_xact_lock(")
        assert 'CREATE TABLE "django_migrations"' in sent[0] and "INSERT INTO tenant_settings" in sent[0]
        assert version == tenant_migration_order()[-1]
        assert _schema(new) == _schema(django)


@pytest.mark.django_db(transaction=True)
def test_a_database_said_to_be_new_that_already_has_the_schema_is_checked_the_general_way(admin_dsn):
    from vectordb.schema import embedding_model_of, tenant_database_prepare

    with _scratch_databases(admin_dsn, "again") as (dsn,):
        tenant_database_prepare("schema-again", dsn, model="all-MiniLM-L6-v2", dimensions=384)
        before = _schema(dsn)

        version = tenant_database_prepare(
            "schema-again", dsn, model="all-MiniLM-L6-v2", dimensions=384, new_database=True
        )

        assert version == tenant_migration_order()[-1]
        assert _schema(dsn) == before
        assert embedding_model_of(dsn) == ("all-MiniLM-L6-v2", 384)
        with psycopg.connect(dsn) as connection:
            recorded = connection.execute("SELECT name FROM django_migrations WHERE app = 'vectordb'").fetchall()
        assert sorted(name for (name,) in recorded) == sorted(tenant_migration_order())
