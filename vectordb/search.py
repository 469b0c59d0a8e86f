"""Search inside one tenant database: vector similarity, full-text, and their reciprocal rank fusion.

Every function takes an open connection to the tenant's database (from `vectordb.connections`) and the ids of the
documents that may be searched; callers pass only documents that are ready, so half-ingested ones never answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import psycopg

from vectordb.models import TEXT_SEARCH_CONFIG

# Reciprocal rank fusion's constant: ranks deeper than this contribute little (Cormack et al. use 60).
RRF_K = 60


@dataclass(frozen=True)
class SearchHit:
    chunk_id: uuid.UUID
    document_id: int
    chunk_index: int
    content: str
    first_page: int
    last_page: int
    metadata: dict
    score: float


_COLUMNS = "id, document_id, chunk_index, content, first_page, last_page, metadata"


def _hit(row, score: float) -> SearchHit:
    return SearchHit(
        chunk_id=row[0],
        document_id=row[1],
        chunk_index=row[2],
        content=row[3],
        first_page=row[4],
        last_page=row[5],
        metadata=row[6] or {},
        score=float(score),
    )


def _vector_literal(values: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(value):.7g}" for value in values) + "]"


def vector_search(
    connection: psycopg.Connection,
    query_embedding: Sequence[float],
    document_ids: Sequence[int],
    k: int,
    ef_search: int | None = None,
) -> list[SearchHit]:
    """The k chunks closest to the query by cosine distance (HNSW), among the given documents."""
    if not document_ids or k < 1:
        return []
    with connection.transaction():
        # A filtered HNSW scan may find fewer than k rows in the first candidates: pgvector 0.8's iterative scan
        # keeps looking. ef_search bounds the candidate list (recall vs latency).
        connection.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search or max(40, 2 * k))}")
        connection.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        rows = connection.execute(
            f"SELECT {_COLUMNS}, 1 - (embedding <=> %(query)s::vector) AS score FROM embeddings "
            "WHERE document_id = ANY(%(documents)s) ORDER BY embedding <=> %(query)s::vector LIMIT %(k)s",
            {"query": _vector_literal(query_embedding), "documents": list(document_ids), "k": k},
        ).fetchall()
    return [_hit(row, row[7]) for row in rows]


def fulltext_search(
    connection: psycopg.Connection, query_text: str, document_ids: Sequence[int], k: int
) -> list[SearchHit]:
    """The k chunks that best match the query's words (any of them: questions rarely repeat a passage verbatim)."""
    if not document_ids or k < 1 or not query_text.strip():
        return []
    rows = connection.execute(
        f"""
        WITH query AS (
            SELECT to_tsquery(%(config)s::regconfig, string_agg(quote_literal(lexeme), ' | ')) AS q
            FROM unnest(to_tsvector(%(config)s::regconfig, %(text)s)) AS t(lexeme, positions, weights)
        )
        SELECT {_COLUMNS}, ts_rank_cd(content_search, query.q, 32) AS score
        FROM embeddings, query
        WHERE query.q IS NOT NULL AND content_search @@ query.q AND document_id = ANY(%(documents)s)
        ORDER BY score DESC, id LIMIT %(k)s
        """,
        {"config": TEXT_SEARCH_CONFIG, "text": query_text, "documents": list(document_ids), "k": k},
    ).fetchall()
    return [_hit(row, row[7]) for row in rows]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[SearchHit]], k: int, rrf_k: int = RRF_K) -> list[SearchHit]:
    """Fuse ranked lists: each hit scores the sum of 1 / (rrf_k + rank) over the lists it appears in."""
    scores: dict[uuid.UUID, float] = {}
    hits: dict[uuid.UUID, SearchHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (rrf_k + rank)
            hits.setdefault(hit.chunk_id, hit)
    ordered = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], str(chunk_id)))
    return [replace(hits[chunk_id], score=scores[chunk_id]) for chunk_id in ordered[:k]]


def hybrid_search(
    connection: psycopg.Connection,
    query_embedding: Sequence[float],
    query_text: str,
    document_ids: Sequence[int],
    k: int,
    candidates: int | None = None,
) -> list[SearchHit]:
    """Vector and full-text candidates fused by reciprocal rank."""
    candidates = candidates or max(20, 4 * k)
    by_vector = vector_search(connection, query_embedding, document_ids, candidates)
    by_words = fulltext_search(connection, query_text, document_ids, candidates)
    return reciprocal_rank_fusion([by_vector, by_words], k)
