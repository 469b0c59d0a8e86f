"""langchain-postgres' PGVectorStore over a tenant's `embeddings` table: our columns, our ids, our connection cap.

A real tenant database provisioned by `tenants.services`; the store's connections are borrowed from a dedicated
TenantConnectionRegistry so the test can watch the cap.
"""

from __future__ import annotations

import random
import uuid

import psycopg
import pytest
from langchain_core.documents import Document

from bench.langchain_baseline import (
    TenantVectorStore,
    document_filter,
    hybrid_search_config,
    tenant_vector_store,
)
from tenants import services
from tenants.crypto import decrypt_credentials
from tenants.models import VectorDatabase
from tests.helpers import personal_workspace
from vectordb import search
from vectordb.chunks import chunk_id
from vectordb.connections import TenantConnectionRegistry, TenantTarget

DIMENSIONS = 384
WORDS = ["invoice", "penguin", "glacier", "contract", "harbour", "violin", "orbit", "lantern", "meadow", "copper"]


class NoEmbeddings:
    """The tests give vectors themselves; a query that would need the model is a bug."""

    def embed_documents(self, texts):
        raise AssertionError("no embedding model in these tests")

    def embed_query(self, text):
        raise AssertionError("no embedding model in these tests")


def unit_vector(rng: random.Random) -> list[float]:
    values = [rng.gauss(0.0, 1.0) for _ in range(DIMENSIONS)]
    norm = sum(value * value for value in values) ** 0.5
    return [value / norm for value in values]


@pytest.fixture
def tenant_database(owner):
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    services.vector_database_provision(row.id)
    row.refresh_from_db()
    assert row.status == VectorDatabase.Status.READY
    dsn = decrypt_credentials(row.encrypted_credentials)["dsn"]
    yield row, dsn
    services.vector_database_deprovision(row.id)


@pytest.fixture
def registry():
    registry = TenantConnectionRegistry(max_total_connections=2, max_connections_per_tenant=2, idle_seconds=60)
    yield registry
    registry.close_all(timeout=5)


@pytest.fixture
def target(tenant_database):
    row, dsn = tenant_database
    return TenantTarget(key=row.tenant_key, resolve_dsn=lambda refresh: dsn)


@pytest.fixture
def vector_store(target, registry) -> TenantVectorStore:
    return tenant_vector_store(target, NoEmbeddings(), registry=registry)


def chunks(document_id: int, count: int, seed: int) -> tuple[list[str], list[list[float]], list[dict], list[uuid.UUID]]:
    rng = random.Random(seed)
    texts = [f"chunk {index} of {document_id}: {rng.choice(WORDS)} {rng.choice(WORDS)}" for index in range(count)]
    vectors = [unit_vector(rng) for _ in range(count)]
    metadatas = [
        {
            "document_id": document_id,
            "chunk_index": index,
            "first_page": index + 1,
            "last_page": index + 2,
            "source": "test.pdf",
        }
        for index in range(count)
    ]
    ids = [chunk_id(document_id, index) for index in range(count)]
    return texts, vectors, metadatas, ids


def table_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as connection:
        return connection.execute(
            "SELECT id, document_id, chunk_index, content, metadata, first_page, last_page, created_at IS NOT NULL, "
            "content_search IS NOT NULL FROM embeddings ORDER BY document_id, chunk_index"
        ).fetchall()


@pytest.mark.django_db(transaction=True)
def test_writes_land_in_our_table_with_our_columns_and_ids(vector_store, tenant_database):
    _, dsn = tenant_database
    texts, vectors, metadatas, ids = chunks(7, 3, seed=1)

    returned = vector_store.add_embeddings(texts, vectors, metadatas, ids)

    assert returned == ids
    rows = table_rows(dsn)
    assert [row[0] for row in rows] == [chunk_id(7, index) for index in range(3)]
    assert [(row[1], row[2], row[3], row[5], row[6]) for row in rows] == [
        (7, index, texts[index], index + 1, index + 2) for index in range(3)
    ]
    # Only what has no column of its own goes to the JSON column.
    assert [row[4] for row in rows] == [{"source": "test.pdf"}] * 3
    # created_at stamped, the generated tsvector filled by PostgreSQL.
    assert [(row[7], row[8]) for row in rows] == [(True, True)] * 3


@pytest.mark.django_db(transaction=True)
def test_adding_the_same_ids_again_updates_instead_of_duplicating(vector_store, tenant_database):
    _, dsn = tenant_database
    texts, vectors, metadatas, ids = chunks(7, 4, seed=1)
    vector_store.add_embeddings(texts, vectors, metadatas, ids)

    changed = [text + " (revised)" for text in texts]
    vector_store.add_embeddings(changed, vectors, metadatas, ids)

    rows = table_rows(dsn)
    assert len(rows) == 4
    assert [row[0] for row in rows] == ids
    assert [row[3] for row in rows] == changed


@pytest.mark.django_db(transaction=True)
def test_document_filter_restricts_results_and_metadata_carries_provenance(vector_store):
    for document_id, seed in [(1, 11), (2, 12), (3, 13)]:
        vector_store.add_embeddings(*chunks(document_id, 20, seed))
    query = unit_vector(random.Random(99))

    found = vector_store.similarity_search_by_vector(query, k=10, filter=document_filter([1, 3]))

    assert len(found) == 10
    assert {document.metadata["document_id"] for document in found} <= {1, 3}
    for document in found:
        index = document.metadata["chunk_index"]
        assert document.id == str(chunk_id(document.metadata["document_id"], index))
        assert (document.metadata["first_page"], document.metadata["last_page"]) == (index + 1, index + 2)
        assert document.metadata["source"] == "test.pdf"
    only_two = vector_store.similarity_search_by_vector(query, k=50, filter=document_filter([2]))
    assert len(only_two) == 20
    assert {document.metadata["document_id"] for document in only_two} == {2}


@pytest.mark.django_db(transaction=True)
def test_results_match_our_vector_search(vector_store, target, registry):
    for document_id, seed in [(1, 21), (2, 22)]:
        vector_store.add_embeddings(*chunks(document_id, 60, seed))
    rng = random.Random(5)

    for _ in range(5):
        query = unit_vector(rng)
        theirs = vector_store.similarity_search_by_vector(query, k=8, filter=document_filter([1, 2]))
        with registry.connection(target) as connection:
            ours = search.vector_search(connection, query, [1, 2], k=8)
        # 120 rows: the HNSW graph is exact at this size, so both give the same order.
        assert [document.id for document in theirs] == [str(hit.chunk_id) for hit in ours]


@pytest.mark.django_db(transaction=True)
def test_hybrid_returns_reciprocal_rank_fusion_of_both_rankings(vector_store, target, registry):
    texts = ["the penguin crossed the glacier", "an invoice for copper", "violin lessons in the meadow"]
    rng = random.Random(3)
    vectors = [unit_vector(rng) for _ in texts]
    metadatas = [
        {"document_id": 4, "chunk_index": index, "first_page": 1, "last_page": 1} for index in range(len(texts))
    ]
    ids = [chunk_id(4, index) for index in range(len(texts))]
    vector_store.add_embeddings(texts, vectors, metadatas, ids)
    query_vector = vectors[2]  # closest: the violin chunk; by words: the penguin chunk

    fused = vector_store.similarity_search_by_vector(
        query_vector, k=3, filter=document_filter([4]), hybrid_search_config=hybrid_search_config(fts_query="penguins")
    )

    with registry.connection(target) as connection:
        ours = search.hybrid_search(connection, query_vector, "penguins", [4], k=3)
    assert [document.id for document in fused] == [str(hit.chunk_id) for hit in ours]
    # The word match (rank 1 by text, 2 or 3 by vector) outranks the vector-only neighbours below it.
    assert fused[0].id in {str(ids[0]), str(ids[2])}
    assert {document.id for document in fused} == {str(chunk) for chunk in ids}
    assert all(isinstance(document, Document) for document in fused)


@pytest.mark.django_db(transaction=True)
def test_every_connection_is_borrowed_from_the_registry(vector_store, registry, tenant_database):
    _, dsn = tenant_database
    vector_store.add_embeddings(*chunks(1, 5, seed=1))
    vector_store.similarity_search_by_vector(unit_vector(random.Random(1)), k=3, filter=document_filter([1]))

    # Borrowed connections went back to the registry's pool: at most its cap, none held by the store.
    assert registry.open_connection_count() <= 2
    database = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn) as observer:
        [(backends,)] = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [database]
        ).fetchall()
    assert backends == registry.open_connection_count()
    registry.close_all(timeout=5)
    assert registry.open_connection_count() == 0
