"""Writing and deleting a document's chunks in the tenant's `embeddings` table.

A document's chunks are replaced in one transaction (delete, then COPY): a retried or re-delivered ingest never
duplicates a chunk and never leaves half of a document behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# Chunk ids derive from (document, index), so the same chunk always has the same id in every run.
CHUNK_ID_NAMESPACE = uuid.UUID("5b0f7f2e-7a52-4a8e-9d7e-2f1c3f0c5a10")


def chunk_id(document_id: int, chunk_index: int) -> uuid.UUID:
    return uuid.uuid5(CHUNK_ID_NAMESPACE, f"{document_id}:{chunk_index}")


@dataclass(frozen=True)
class ChunkRecord:
    document_id: int
    chunk_index: int
    content: str
    first_page: int
    last_page: int
    embedding: Sequence[float]
    metadata: dict = field(default_factory=dict)


# COPY in binary: 1,536 floats a row cost far more to format and parse as text than to send as 6 KB of float4s.
_COPY_COLUMNS = "id, document_id, chunk_index, content, metadata, first_page, last_page, embedding, created_at"
_COPY_TYPES = ["uuid", "int8", "int4", "text", "jsonb", "int4", "int4", "vector", "timestamptz"]


def chunks_replace(connection: psycopg.Connection, document_id: int, records: Sequence[ChunkRecord]) -> int:
    """Make `records` the document's only chunks, atomically. Returns how many were written."""
    import numpy
    from pgvector.psycopg import register_vector

    with connection.transaction():
        connection.execute("DELETE FROM embeddings WHERE document_id = %s", [document_id])
        register_vector(connection)  # cheap when already registered; binary COPY needs the vector dumper
        (created_at,) = connection.execute("SELECT now()").fetchone() or (None,)
        with (
            connection.cursor() as cursor,
            cursor.copy(f"COPY embeddings ({_COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(_COPY_TYPES)
            for record in records:
                copy.write_row(
                    (
                        chunk_id(document_id, record.chunk_index),
                        document_id,
                        record.chunk_index,
                        record.content.replace("\x00", ""),
                        Jsonb(record.metadata),
                        record.first_page,
                        record.last_page,
                        numpy.asarray(record.embedding, dtype=numpy.float32),
                        created_at,
                    )
                )
    return len(records)


def chunks_delete(connection: psycopg.Connection, document_id: int) -> int:
    with connection.transaction():
        return connection.execute("DELETE FROM embeddings WHERE document_id = %s", [document_id]).rowcount


def chunks_export(connection: psycopg.Connection, document_ids: Sequence[int]) -> list[dict]:
    """Every chunk of these documents, for a tenant's data export (text and provenance; vectors are derived data)."""
    with connection.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            "SELECT document_id, chunk_index, first_page, last_page, content, metadata FROM embeddings "
            "WHERE document_id = ANY(%s) ORDER BY document_id, chunk_index",
            [list(document_ids)],
        ).fetchall()


def chunks_leading(connection: psycopg.Connection, document_ids: Sequence[int], per_document: int) -> list[dict]:
    """The first `per_document` chunks of each document (text and section), in document order: where headings and
    the document's own vocabulary are, for starter questions."""
    with connection.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            "SELECT document_id, chunk_index, coalesce(metadata->>'section', '') AS section, content FROM embeddings "
            "WHERE document_id = ANY(%s) AND chunk_index < %s ORDER BY document_id, chunk_index",
            [list(document_ids), per_document],
        ).fetchall()
