"""Full-text search inside a tenant database ranks by BM25: rare words decide, repeated words count, scope holds."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tenants import services
from tenants.crypto import decrypt_credentials
from tenants.models import VectorDatabase
from tests.helpers import personal_workspace
from vectordb import chunks, search

DIMENSIONS = 384
FILLER = "The manual describes the options of the program and how to use them in a document."


def _vector(seed: int) -> list[float]:
    return [1.0 if index == seed % DIMENSIONS else 0.0 for index in range(DIMENSIONS)]


@pytest.fixture
def tenant_connection(owner):
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    services.vector_database_provision(row.id)
    row.refresh_from_db()
    with psycopg.connect(decrypt_credentials(row.encrypted_credentials)["dsn"]) as connection:
        yield connection
    services.vector_database_deprovision(row.id)


def _write(connection, document_id: int, texts: list[str]) -> None:
    chunks.chunks_replace(
        connection,
        document_id,
        [
            chunks.ChunkRecord(document_id, index, text, index + 1, index + 1, _vector(document_id * 100 + index))
            for index, text in enumerate(texts)
        ],
    )


def _found(connection, question: str, documents: list[int], k: int = 10) -> list[tuple[int, int]]:
    return [(hit.document_id, hit.chunk_index) for hit in search.fulltext_search(connection, question, documents, k)]


@pytest.mark.django_db(transaction=True)
def test_a_rare_word_outranks_a_common_one(tenant_connection):
    _write(
        tenant_connection,
        1,
        [
            f"{FILLER} Fonts, fonts, fonts, fonts and more fonts.",  # the common word, over and over
            f"{FILLER} Set the typeface with fontspec.",  # the rare word, once
            *[f"{FILLER} A font is chosen here ({number})." for number in range(8)],
        ],
    )

    found = _found(tenant_connection, "Which font is fontspec?", [1])

    assert found[0] == (1, 1)
    assert len(found) == 10  # every chunk with either word is a candidate


@pytest.mark.django_db(transaction=True)
def test_a_word_said_more_often_ranks_higher_among_chunks_of_the_same_length(tenant_connection):
    _write(
        tenant_connection,
        1,
        [
            "Encoding tables map characters. Tables are loaded once per run.",
            "Encoding tables map characters. Encoding tables encode glyph encodings.",
            "Nothing here mentions the subject at all; this line is about meadows.",
        ],
    )

    assert _found(tenant_connection, "encoding", [1]) == [(1, 1), (1, 0)]


@pytest.mark.django_db(transaction=True)
def test_only_the_given_documents_are_searched(tenant_connection):
    _write(tenant_connection, 1, ["The glacier moves slowly."])
    _write(tenant_connection, 2, ["A glacier, a glacier, a glacier: the word everywhere."])

    assert _found(tenant_connection, "glacier", [1]) == [(1, 0)]
    assert _found(tenant_connection, "glacier", []) == []


@pytest.mark.django_db(transaction=True)
def test_a_question_of_stop_words_only_finds_nothing_rather_than_everything(tenant_connection):
    _write(tenant_connection, 1, [FILLER, "The glacier moves slowly."])

    assert _found(tenant_connection, "what is the", [1]) == []
    assert _found(tenant_connection, "\x00", [1]) == []


def test_distinct_passages_keeps_the_first_of_identical_texts_in_order():
    def hit(number: int, text: str) -> search.SearchHit:
        return search.SearchHit(
            chunk_id=uuid.UUID(int=number),
            document_id=number,
            chunk_index=0,
            content=text,
            first_page=1,
            last_page=1,
            metadata={},
            score=1.0 / number,
        )

    hits = [hit(1, "Descale every\nthree months."), hit(2, "Froth the milk."), hit(3, "descale every three  months.")]

    assert [found.document_id for found in search.distinct_passages(hits)] == [1, 2]
    assert search.distinct_passages([]) == []
