"""The tenant schema: what counts as a breaking migration (the running app must keep working during a fleet
migration), and the one path that gives a tenant database its schema (compiled SQL, or Django's executor)."""

import contextlib
import threading
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader
from psycopg import sql

from tests.helpers import embedding_model_of
from vectordb.schema import tenant_migration_order
from vectordb.schema.breaking import breaking_operations, breaking_operations_in_plan


def _migration(*operations):
    migration = migrations.Migration("9999_test", "vectordb")
    migration.operations = list(operations)
    return migration


def _state():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    return loader.project_state(("vectordb", tenant_migration_order()[-1]))


def test_adding_a_nullable_column_or_a_default_is_not_breaking():
    migration = _migration(
        migrations.AddField("chunk", "language", models.CharField(max_length=16, null=True)),
        migrations.AlterField("conversation", "title", models.CharField(max_length=200, default="Untitled")),
    )

    assert breaking_operations(migration, _state()) == []


def test_drops_renames_and_type_changes_are_breaking():
    migration = _migration(
        migrations.RemoveField("chunk", "metadata"),
        migrations.RenameField("conversation", "title", "name"),
        migrations.AlterField("conversation", "title", models.CharField(max_length=50)),
        migrations.AlterField("message", "content", models.CharField(max_length=500)),
        migrations.DeleteModel("tenantsetting"),
    )

    assert breaking_operations(migration, _state()) == [
        "9999_test: Remove field metadata from chunk",
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


def _target(key: str, dsn: str):
    from vectordb.schema import schema_target

    return schema_target(f"{key}-{uuid.uuid4().hex[:6]}", dsn)


@pytest.mark.django_db(transaction=True)
def test_compiled_sql_creates_pgvector_first_and_once(monkeypatch):
    from vectordb.schema import compiled

    monkeypatch.setattr(compiled, "_compiled", {})  # compile now, not from an earlier test's cache

    result = compiled.compile_migrations(tenant_migration_order(), with_recorder=True)

    assert result.statements[0] == 'CREATE EXTENSION IF NOT EXISTS "vector";'
    assert sum("CREATE EXTENSION" in statement for statement in result.statements) == 1
    assert result.statements[1].startswith('CREATE TABLE "django_migrations"')
    assert result.breaking == ()


@pytest.mark.django_db(transaction=True)
def test_a_new_database_gets_the_same_schema_from_compiled_sql_as_from_djangos_executor(admin_dsn, monkeypatch):
    from vectordb.schema import compiled, tenant_database_prepare

    with _scratch_databases(admin_dsn, "compiled", "django") as (fast, django):
        version = tenant_database_prepare(_target("compiled", fast), model="all-MiniLM-L6-v2", dimensions=384)

        def not_compilable(names, with_recorder):
            raise compiled.NotCompilable(names[0])

        monkeypatch.setattr("vectordb.schema.compile_migrations", not_compilable)
        tenant_database_prepare(_target("django", django), model="all-MiniLM-L6-v2", dimensions=384)

        built_fast, built_django = _schema(fast), _schema(django)
        assert version == tenant_migration_order()[-1]
        assert built_fast == built_django
        generated = [row for row in built_fast["columns"] if row[:2] == ("embeddings", "content_search")]
        assert generated == [
            ("embeddings", "content_search", "tsvector", False, "s", "to_tsvector('english'::regconfig, content)")
        ]
        assert ("vector",) in built_fast["extensions"]
        for dsn in (fast, django):
            assert embedding_model_of(dsn) == ("all-MiniLM-L6-v2", 384)
            assert _recorded(dsn) == sorted(tenant_migration_order())


def _recorded(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute("SELECT name FROM django_migrations WHERE app = 'vectordb'").fetchall()
    return sorted(name for (name,) in rows)


@pytest.mark.django_db(transaction=True)
def test_preparing_a_database_again_changes_nothing_and_plans_nothing(admin_dsn):
    from vectordb.schema import tenant_database_migrate, tenant_database_plan, tenant_database_prepare

    with _scratch_databases(admin_dsn, "again") as (dsn,):
        target = _target("again", dsn)
        tenant_database_prepare(target, model="all-MiniLM-L6-v2", dimensions=384)
        before = _schema(dsn)

        version = tenant_database_prepare(target, model="all-MiniLM-L6-v2", dimensions=384)

        assert version == tenant_migration_order()[-1]
        assert _schema(dsn) == before
        assert _recorded(dsn) == sorted(tenant_migration_order())
        assert tenant_database_plan(target) == []
        assert tenant_database_migrate(target).applied == []


@pytest.mark.django_db(transaction=True)
def test_a_different_embedding_model_is_refused_and_nothing_changes(admin_dsn):
    from vectordb.schema import tenant_database_prepare
    from vectordb.tenant_embedding_model import EmbeddingModelMismatch

    with _scratch_databases(admin_dsn, "model") as (dsn,):
        target = _target("model", dsn)
        tenant_database_prepare(target, model="all-MiniLM-L6-v2", dimensions=384)
        before = _schema(dsn)

        with pytest.raises(EmbeddingModelMismatch, match=r"holds all-MiniLM-L6-v2 \(384 dims\) embeddings"):
            tenant_database_prepare(target, model="text-embedding-3-small", dimensions=1536)

        assert _schema(dsn) == before
        assert embedding_model_of(dsn) == ("all-MiniLM-L6-v2", 384)


@pytest.mark.django_db(transaction=True)
def test_two_migrations_of_one_database_wait_for_each_other_on_a_lock_in_the_main_database(admin_dsn, settings):
    """The migration lock lives in the main database (tenant roles may not take advisory locks)."""
    from vectordb.advisory_locks import advisory_lock_key
    from vectordb.schema import tenant_database_migrate

    main = settings.DATABASES["default"]
    main_dsn = f"postgresql://{main['USER']}:{main['PASSWORD']}@{main['HOST']}:{main['PORT']}/{main['NAME']}"
    with _scratch_databases(admin_dsn, "locked") as (dsn,):
        target = _target("locked", dsn)
        outcome: list = []
        with psycopg.connect(main_dsn, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", [advisory_lock_key(f"tenant-schema:{target.key}")])
            migrating = threading.Thread(target=lambda: outcome.append(tenant_database_migrate(target)))
            migrating.start()
            migrating.join(timeout=1.5)
            assert migrating.is_alive() and outcome == []  # waiting for the holder
            assert _tables(dsn) == []
            holder.execute("SELECT pg_advisory_unlock_all()")
            migrating.join(timeout=60)

        assert outcome[0].applied == list(tenant_migration_order())
        assert "embeddings" in _tables(dsn)


def _tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return [name for (name,) in rows]


def test_the_hnsw_parameters_are_the_ones_the_migrations_declare():
    from vectordb.models import EMBEDDING_HNSW_INDEX_NAME, EMBEDDING_HNSW_PARAMETERS

    state = _state().models["vectordb", "chunk"]
    (index,) = [index for index in state.options["indexes"] if index.name == EMBEDDING_HNSW_INDEX_NAME]

    assert {"m": index.m, "ef_construction": index.ef_construction} == EMBEDDING_HNSW_PARAMETERS


def _counting_round_trips(monkeypatch, database: str) -> list[str]:
    """Every query sent to `database` from now on: each execute is one round trip (psycopg's Connection.execute
    goes through a Cursor's too)."""
    sent: list[str] = []
    cursor_execute = psycopg.Cursor.execute

    def counted_cursor(self, query, *arguments, **options):
        if self.connection.info.dbname == database:
            sent.append(query if isinstance(query, str) else query.as_string(self.connection))
        return cursor_execute(self, query, *arguments, **options)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted_cursor)
    return sent


@pytest.mark.django_db(transaction=True)
def test_a_database_made_in_this_attempt_gets_schema_record_and_model_in_one_round_trip(admin_dsn, monkeypatch):
    from vectordb.schema import tenant_database_prepare

    with _scratch_databases(admin_dsn, "new", "general") as (new, general):
        tenant_database_prepare(_target("general", general), model="all-MiniLM-L6-v2", dimensions=384)
        sent = _counting_round_trips(monkeypatch, new.rsplit("/", 1)[1])

        version = tenant_database_prepare(
            _target("new", new), model="all-MiniLM-L6-v2", dimensions=384, new_database=True
        )

        assert len(sent) == 1
        assert 'CREATE TABLE "django_migrations"' in sent[0] and "INSERT INTO tenant_settings" in sent[0]
        assert version == tenant_migration_order()[-1]
        assert _schema(new) == _schema(general)
        assert embedding_model_of(new) == ("all-MiniLM-L6-v2", 384)
        assert _recorded(new) == sorted(tenant_migration_order())


@pytest.mark.django_db(transaction=True)
def test_a_database_said_to_be_new_that_has_the_schema_already_is_prepared_the_general_way(admin_dsn):
    from vectordb.schema import tenant_database_prepare

    with _scratch_databases(admin_dsn, "again") as (dsn,):
        tenant_database_prepare(_target("again", dsn), model="all-MiniLM-L6-v2", dimensions=384)
        before = _schema(dsn)

        version = tenant_database_prepare(
            _target("again", dsn), model="all-MiniLM-L6-v2", dimensions=384, new_database=True
        )

        assert version == tenant_migration_order()[-1]
        assert _schema(dsn) == before
        assert embedding_model_of(dsn) == ("all-MiniLM-L6-v2", 384)
        assert _recorded(dsn) == sorted(tenant_migration_order())
