"""Search inside one tenant database: vector similarity, full-text, and their reciprocal rank fusion.

Every function takes an open connection to the tenant's database (from `vectordb.connections`) and the ids of the
documents that may be searched; callers pass only documents that are ready, so half-ingested ones never answer.
"""

from __future__ import annotations

import re
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
    score: float  # the ranking's own score: cosine similarity, BM25, or the fused reciprocal rank
    # Cosine similarity of the chunk to the query when the vector search found it (None when only the words did):
    # unlike a fused rank it is comparable between queries, so a relevance floor can be set on it.
    similarity: float | None = None


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
        # Both settings in one round trip (a simple-protocol query may hold several statements).
        connection.execute(
            f"SET LOCAL hnsw.ef_search = {int(ef_search or max(64, 2 * k))}; "
            "SET LOCAL hnsw.iterative_scan = relaxed_order"
        )
        rows = connection.execute(
            f"SELECT {_COLUMNS}, 1 - (embedding <=> %(query)s::vector) AS score FROM embeddings "
            "WHERE document_id = ANY(%(documents)s) ORDER BY embedding <=> %(query)s::vector LIMIT %(k)s",
            {"query": _vector_literal(query_embedding), "documents": list(document_ids), "k": k},
        ).fetchall()
    return [replace(_hit(row, row[7]), similarity=float(row[7])) for row in rows]


# Okapi BM25's constants, as Robertson and Lucene use them: term-frequency saturation and length normalisation.
BM25_K1 = 1.2
BM25_B = 0.75

# BM25 over the chunks of the given documents. ts_rank_cd has no notion of how rare a word is, so with an OR query the
# chunks that repeat the question's commonest words ("font", "use") won; BM25 weighs each word by its inverse document
# frequency among the searched chunks, so a distinctive term (a command, an option name) decides. A chunk's length is
# its size in bytes (proportional to its words, and read without unnesting or decompressing them; on the dev set it
# ranked as well as counting word positions), normalised by the average over the matching chunks (no scan of the
# whole tenant).
_BM25_SQL = f"""
WITH terms AS (
    SELECT DISTINCT t.lexeme FROM unnest(to_tsvector(%(config)s::regconfig, %(text)s)) AS t(lexeme, positions, weights)
),
scope AS (
    SELECT count(*)::float8 AS chunks FROM embeddings WHERE document_id = ANY(%(documents)s)
),
matched AS (
    -- The chunks with any of the question's words, keeping only those words and their positions: weight them A and
    -- keep the A's (in C; unnesting every word of every matching chunk into rows was most of the time on big tenants).
    SELECT e.id,
           ts_filter(setweight(e.content_search, 'A', (SELECT array_agg(lexeme) FROM terms)), '{{a}}') AS hits,
           greatest(1, octet_length(e.content)) AS length
    FROM embeddings e
    WHERE e.document_id = ANY(%(documents)s)
      AND e.content_search @@ (
          SELECT to_tsquery(%(config)s::regconfig, string_agg(quote_literal(lexeme), ' | ')) FROM terms
      )
),
frequencies AS (
    SELECT m.id, m.length, p.lexeme, coalesce(array_length(p.positions, 1), 1) AS frequency
    FROM matched m CROSS JOIN LATERAL unnest(m.hits) p
),
-- A word's document frequency is the number of matching chunks that hold it: no second pass over the table.
rarity AS (
    SELECT f.lexeme, ln(1 + (scope.chunks - count(*) + 0.5) / (count(*) + 0.5)) AS idf
    FROM frequencies f CROSS JOIN scope
    GROUP BY f.lexeme, scope.chunks
),
average AS (SELECT avg(length) AS length FROM matched),
scored AS (
    SELECT f.id,
           sum(r.idf * f.frequency * (%(k1)s + 1)
               / (f.frequency + %(k1)s * (1 - %(b)s + %(b)s * f.length / average.length))) AS score
    FROM frequencies f JOIN rarity r ON r.lexeme = f.lexeme CROSS JOIN average
    GROUP BY f.id
)
SELECT {", ".join(f"e.{column}" for column in _COLUMNS.split(", "))}, scored.score
FROM scored JOIN embeddings e ON e.id = scored.id
ORDER BY scored.score DESC, e.id
LIMIT %(k)s
"""


def fulltext_search(
    connection: psycopg.Connection, query_text: str, document_ids: Sequence[int], k: int
) -> list[SearchHit]:
    """The k chunks that best match the query's words by BM25 (any of the words: questions rarely repeat a passage
    verbatim, and the rare words they share with it count most)."""
    query_text = query_text.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    if not document_ids or k < 1 or not query_text.strip():
        return []
    rows = connection.execute(
        _BM25_SQL,
        {
            "config": TEXT_SEARCH_CONFIG,
            "text": query_text,
            "documents": list(document_ids),
            "k": k,
            "k1": BM25_K1,
            "b": BM25_B,
        },
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


def _passage_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def distinct_passages(hits: Sequence[SearchHit]) -> list[SearchHit]:
    """The hits in order without repeats of a passage already listed: the same text twice (a PDF uploaded twice, a
    page repeated in two documents) would fill the top k with copies and say nothing more."""
    seen: set[str] = set()
    distinct = []
    for hit in hits:
        key = _passage_key(hit.content)
        if key not in seen:
            seen.add(key)
            distinct.append(hit)
    return distinct


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
