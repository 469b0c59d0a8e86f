"""Changing the embedding model: ingest never mixes two models' vectors, and `reembed` switches a tenant over.

A model change is simulated with the OpenAI emulator: the tenant database is provisioned and filled with the local
all-MiniLM-L6-v2 (384 dimensions), then the settings name text-embedding-3-small (1,536 dimensions) served by the
emulator. The embedder cache is keyed by the settings, so each test gets the model its settings name.
"""

from __future__ import annotations

import io

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from documents import services
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import VectorDatabase
from tests.documents.test_pipeline import (  # noqa: F401  (fixtures are used by name)
    _chunk_rows,
    _ingest,
    _provision,
    _tenant_dsn,
    _upload,
    owner_database,
    pdfs,
)
from tests.emulators.openai import OpenAIEmulator
from tests.helpers import embedding_model_of
from vectordb.chunks import chunk_id
from vectordb.tenant_embedding_model import embedding_dimension_change

API_KEY = "sk-test-reembed"
LOCAL_MODEL = ("all-MiniLM-L6-v2", 384)
OPENAI_MODEL = ("text-embedding-3-small", 1536)


@pytest.fixture(scope="module")
def running_emulator():
    emulator = OpenAIEmulator(api_key=API_KEY).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator(running_emulator: OpenAIEmulator) -> OpenAIEmulator:
    running_emulator.reset()
    return running_emulator


@pytest.fixture
def switch_to_openai(settings, emulator):
    """Returns a function that changes the configured model to text-embedding-3-small (served by the emulator)."""

    def switch() -> None:
        settings.OPENAI_API_KEY = API_KEY
        settings.OPENAI_BASE_URL = emulator.base_url
        settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSIONS = OPENAI_MODEL

    return switch


def _column_and_index(vector_database: VectorDatabase) -> tuple[str, str]:
    with psycopg.connect(_tenant_dsn(vector_database)) as connection:
        column = connection.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'embeddings'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
        index = connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'embeddings' AND indexname = 'embeddings_embedding_hnsw'"
        ).fetchone()[0]
    return column, index


def _reembed(*arguments: str) -> tuple[str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("reembed", *arguments, stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


def _registry_model(vector_database: VectorDatabase) -> tuple[str, int]:
    row = VectorDatabase.objects.get(id=vector_database.id)
    return row.embedding_model, row.embedding_dimensions


# --- ingest never mixes models ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ingest_refuses_to_mix_models_until_reembed_runs(
    owner, owner_database, media_root, pdfs, switch_to_openai, emulator
):
    earlier = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    earlier_rows = _chunk_rows(owner_database)
    switch_to_openai()

    later = _ingest(_upload(owner, "other.pdf", pdfs.other))

    assert later.status == Document.Status.FAILED
    assert later.error_message == (
        "Silo's embedding model changed from all-MiniLM-L6-v2 to text-embedding-3-small, so this document cannot be "
        "processed until an operator runs `manage.py reembed --workspace owner@example.com`."
    )
    assert (later.chunk_count, later.page_count, later.progress) == (0, None, 0.0)
    assert emulator.inputs_embedded == 0  # refused before anything was embedded
    assert _chunk_rows(owner_database) == earlier_rows  # the 384-dimension chunks are untouched
    assert embedding_model_of(_tenant_dsn(owner_database)) == LOCAL_MODEL
    earlier.refresh_from_db()
    assert (earlier.status, earlier.embedding_model) == (Document.Status.READY, LOCAL_MODEL[0])

    stdout, _ = _reembed("--user", owner.email)

    later.refresh_from_db()
    assert (later.status, later.error_message, later.embedding_model) == ("ready", "", OPENAI_MODEL[0])
    assert later.chunk_count == len(_chunk_rows(owner_database, later.id)) >= 1
    assert stdout.endswith("2 ready, 0 failed\n")


# --- reembed ------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_reembed_switches_the_tenant_database_to_the_configured_model(
    owner, owner_database, media_root, pdfs, switch_to_openai, emulator
):
    ready = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    failed = _upload(owner, "other.pdf", pdfs.other)
    Document.objects.filter(id=failed.id).update(status="failed", error_message=services.TEMPORARY_FAILURE_MESSAGE)
    busy = _upload(owner, "busy.pdf", pdfs.other + b"\n% a copy\n")  # queued: its task will ingest it
    old_chunks = len(_chunk_rows(owner_database))
    switch_to_openai()

    stdout, stderr = _reembed("--user", owner.email)

    ready.refresh_from_db()
    failed.refresh_from_db()
    busy.refresh_from_db()
    assert embedding_model_of(_tenant_dsn(owner_database)) == OPENAI_MODEL
    assert _registry_model(owner_database) == OPENAI_MODEL
    column, index = _column_and_index(owner_database)
    assert column == "vector(1536)"
    assert "USING hnsw (embedding vector_cosine_ops)" in index
    rows = _chunk_rows(owner_database)
    assert {row.dimensions for row in rows} == {1536}
    for document in (ready, failed):
        assert (document.status, document.error_message, document.embedding_model) == ("ready", "", OPENAI_MODEL[0])
        document_rows = _chunk_rows(owner_database, document.id)
        assert [row.id for row in document_rows] == [chunk_id(document.id, i) for i in range(document.chunk_count)]
        assert document.chunk_count >= 1
    assert len(rows) == ready.chunk_count + failed.chunk_count  # the old model's chunks are all gone
    assert emulator.inputs_embedded == len(rows)
    assert (busy.status, busy.attempts, busy.chunk_count) == ("queued", 0, 0)
    assert stdout == (
        f"  ready   guide ({ready.chunk_count} chunks)\n"
        f"  ready   other ({failed.chunk_count} chunks)\n"
        f"owner@example.com: switched from all-MiniLM-L6-v2 (384 dims) to text-embedding-3-small (1536 dims), "
        f"{old_chunks} chunks deleted; 2 ready, 0 failed\n"
    )
    assert stderr == ""


@pytest.mark.django_db
def test_reembed_with_the_same_model_rebuilds_chunks_in_place(owner, owner_database, media_root, pdfs):
    document = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    before = _chunk_rows(owner_database)

    stdout, _ = _reembed("--user", owner.email)

    document.refresh_from_db()
    # Re-embedding queues it afresh: one run of this request (attempts bound the runs that die, issue 14).
    assert (document.status, document.attempts) == ("ready", 1)
    assert _chunk_rows(owner_database) == before  # same ids, same 384-dimension vectors, nothing duplicated
    assert _column_and_index(owner_database)[0] == "vector(384)"
    assert embedding_model_of(_tenant_dsn(owner_database)) == LOCAL_MODEL
    assert stdout.splitlines()[-1] == "owner@example.com: already on all-MiniLM-L6-v2 (384 dims); 1 ready, 0 failed"


@pytest.mark.django_db
def test_reembed_repairs_a_column_of_the_wrong_dimension(owner, owner_database, media_root, pdfs):
    # What a database cloned from a template made under another EMBEDDING_DIMENSIONS looks like: the model recorded
    # is the configured one, but the column is not.
    with psycopg.connect(_tenant_dsn(owner_database)) as connection:
        connection.execute("ALTER TABLE embeddings ALTER COLUMN embedding TYPE vector(3)")
    document = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    # Refused by the database: the document fails with a reason, it does not stay "embedding" for ever.
    assert (document.status, document.error_message) == ("failed", services.STORAGE_FAILURE_MESSAGE)
    assert _chunk_rows(owner_database) == []

    stdout, _ = _reembed("--user", owner.email)

    document.refresh_from_db()
    assert (document.status, document.error_message) == ("ready", "")
    assert _column_and_index(owner_database)[0] == "vector(384)"
    assert len(_chunk_rows(owner_database, document.id)) == document.chunk_count >= 1
    assert stdout.splitlines()[-1] == (
        "owner@example.com: embedding column rebuilt for all-MiniLM-L6-v2 (384 dims), 0 chunks deleted; 1 ready, "
        "0 failed"
    )


@pytest.mark.django_db
def test_reembed_all_switches_every_ready_tenant_and_reports_failures(
    owner, stranger, django_user_model, owner_database, media_root, pdfs, switch_to_openai
):
    stranger_database = _provision(stranger)
    django_user_model.objects.create_user(email="pending@example.net", password="not provisioned yet")
    blank = _ingest(_upload(owner, "blank.pdf", pdfs.blank))
    switch_to_openai()

    try:
        with pytest.raises(CommandError, match=r"^0 of 2 tenants not re-embedded, 1 documents failed$"):
            call_command("reembed", "--all", stdout=(stdout := io.StringIO()))

        for vector_database in (owner_database, stranger_database):
            assert embedding_model_of(_tenant_dsn(vector_database)) == OPENAI_MODEL
            assert _registry_model(vector_database) == OPENAI_MODEL
            assert _column_and_index(vector_database)[0] == "vector(1536)"
        blank.refresh_from_db()
        assert (blank.status, blank.attempts) == ("failed", 1)  # one run since re-embedding queued it
        assert stdout.getvalue() == (
            "  failed  blank (0 chunks): This PDF has no text on any of its pages.\n"
            "owner@example.com: switched from all-MiniLM-L6-v2 (384 dims) to text-embedding-3-small (1536 dims), "
            "0 chunks deleted; 0 ready, 1 failed\n"
            "stranger@example.org: switched from all-MiniLM-L6-v2 (384 dims) to text-embedding-3-small (1536 dims), "
            "0 chunks deleted; 0 ready, 0 failed\n"
        )
    finally:
        tenant_services.vector_database_deprovision(stranger_database.id)


@pytest.mark.django_db
def test_reembed_refuses_what_it_cannot_do(owner):
    with pytest.raises(CommandError, match=r"one of the arguments --workspace --user --all is required"):
        call_command("reembed")
    with pytest.raises(CommandError, match=r"^no user with email nobody@example.com$"):
        call_command("reembed", "--user", "nobody@example.com")

    stderr = io.StringIO()
    with pytest.raises(CommandError, match=r"^1 of 1 tenants not re-embedded, 0 documents failed$"):
        call_command("reembed", "--user", owner.email, stdout=io.StringIO(), stderr=stderr)

    assert stderr.getvalue() == "owner@example.com: database is missing; nothing re-embedded\n"


@pytest.mark.django_db
def test_a_dimension_the_index_cannot_take_is_refused_and_nothing_changes(owner, owner_database):
    with psycopg.connect(_tenant_dsn(owner_database)) as connection:
        refused = r"^embeddings of 3072 dimensions cannot be indexed \(HNSW takes 1 to 2000\)$"
        with pytest.raises(ValueError, match=refused):
            embedding_dimension_change(connection, 3072)

    assert _column_and_index(owner_database)[0] == "vector(384)"
    assert embedding_model_of(_tenant_dsn(owner_database)) == LOCAL_MODEL
