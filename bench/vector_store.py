"""langchain-postgres PGVectorStore vs our SQL: search latency (vector, hybrid) and write throughput, same run.

One tenant database (postgres provider), ~5,000 chunks of 384-dim random unit vectors over 10 documents. Both paths
use connections from the same TenantConnectionRegistry (the store borrows them, see bench/langchain_baseline.py), and
each query runs through both paths back to back, alternating which goes first, so machine noise hits both alike.
Writes: `chunks_replace` (delete + COPY, one transaction per document) vs `add_embeddings` (the library's INSERT ..
ON CONFLICT per chunk, one connection checkout and commit each), the same chunks with the same ids.

Run alone: `python -m bench.vector_store [--quick]`.
"""

from __future__ import annotations

if __name__ == "__main__":
    from bench.framework import setup_django

    setup_django()

import random
import time

import numpy

from bench.common import create_tenants, milliseconds, percentile, progress, remove_tenants
from bench.framework import Target
from bench.langchain_baseline import document_filter, hybrid_search_config, tenant_vector_store
from tenants import services
from tenants.models import VectorDatabase
from vectordb import chunks, search
from vectordb.connections import get_registry

TARGETS: list[Target] = []  # a comparison, not a gate

PREFIX = "bench-vector-store"
DIMENSIONS = 384
DOCUMENTS, QUICK_DOCUMENTS = 10, 4
CHUNKS_PER_DOCUMENT, QUICK_CHUNKS_PER_DOCUMENT = 500, 250
QUERIES, QUICK_QUERIES = 300, 60
WARM_UP_QUERIES = 10
K = 8
HYBRID_CANDIDATES = 32
VOCABULARY = (
    "contract invoice payment clause tenant landlord deposit penalty warranty delivery shipment customs "
    "glacier penguin harbour lantern violin orbit meadow copper river engine turbine battery solar wind "
    "patient dosage clinical trial symptom therapy protein enzyme genome cell membrane neuron"
).split()


class _NoEmbeddings:
    def embed_documents(self, texts):
        raise RuntimeError("the benchmark passes vectors")

    def embed_query(self, text):
        raise RuntimeError("the benchmark passes vectors")


def _unit_vectors(rng: numpy.random.Generator, count: int) -> numpy.ndarray:
    vectors = rng.standard_normal((count, DIMENSIONS)).astype(numpy.float32)
    return vectors / numpy.linalg.norm(vectors, axis=1, keepdims=True)


def _corpus(documents: int, per_document: int) -> dict[int, list[chunks.ChunkRecord]]:
    rng = numpy.random.default_rng(42)
    words = random.Random(42)
    corpus = {}
    for document_id in range(1, documents + 1):
        vectors = _unit_vectors(rng, per_document).tolist()
        corpus[document_id] = [
            chunks.ChunkRecord(
                document_id=document_id,
                chunk_index=index,
                content=" ".join(words.choices(VOCABULARY, k=60)),
                first_page=index // 3 + 1,
                last_page=index // 3 + 1,
                embedding=vectors[index],
                metadata={"source": f"document-{document_id}.pdf"},
            )
            for index in range(per_document)
        ]
    return corpus


def run(quick: bool) -> dict:
    documents = QUICK_DOCUMENTS if quick else DOCUMENTS
    per_document = QUICK_CHUNKS_PER_DOCUMENT if quick else CHUNKS_PER_DOCUMENT
    queries = QUICK_QUERIES if quick else QUERIES
    remove_tenants(PREFIX)
    [row] = create_tenants(PREFIX, 1)
    provisioned = services.vector_database_provision(row.id)
    if provisioned.status != VectorDatabase.Status.READY:
        raise RuntimeError(f"bench tenant ended {provisioned.status}: {provisioned.last_error}")
    registry = get_registry()
    target = services.tenant_target(provisioned.workspace)
    try:
        corpus = _corpus(documents, per_document)
        result: dict = {"chunks": documents * per_document, "dimensions": DIMENSIONS, "queries": queries, "k": K}
        result.update(_construction(target))
        result.update(_writes(target, registry, corpus))
        result.update(_searches(target, registry, corpus, queries))
        return result
    finally:
        registry.close_tenant(target.key)
        progress(f"dropped {remove_tenants(PREFIX)} bench tenant database")


def _construction(target) -> dict:
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        tenant_vector_store(target, _NoEmbeddings())
        seconds.append(time.perf_counter() - started)
    return {"store_build_p50_ms": milliseconds(percentile(seconds[1:], 0.5))}


def _clear(registry, target) -> None:
    with registry.connection(target) as connection:
        connection.execute("TRUNCATE embeddings")


def _writes(target, registry, corpus: dict[int, list[chunks.ChunkRecord]]) -> dict:
    vector_store = tenant_vector_store(target, _NoEmbeddings())
    total = sum(len(records) for records in corpus.values())
    ours, theirs = [], []
    # Alternate, and end with ours so both sides search the same table built by the same path.
    for round_number in range(2):
        _clear(registry, target)
        progress(f"writes round {round_number + 1}: PGVectorStore.add_embeddings, {total} chunks")
        started = time.perf_counter()
        for document_id, records in corpus.items():
            vector_store.add_embeddings(
                [record.content for record in records],
                [list(record.embedding) for record in records],
                [
                    {
                        "document_id": document_id,
                        "chunk_index": record.chunk_index,
                        "first_page": record.first_page,
                        "last_page": record.last_page,
                        **record.metadata,
                    }
                    for record in records
                ],
                [chunks.chunk_id(document_id, record.chunk_index) for record in records],
            )
        theirs.append(time.perf_counter() - started)
        _clear(registry, target)
        progress(f"writes round {round_number + 1}: chunks_replace, {total} chunks")
        started = time.perf_counter()
        for document_id, records in corpus.items():
            with registry.connection(target) as connection:
                chunks.chunks_replace(connection, document_id, records)
        ours.append(time.perf_counter() - started)
    with registry.connection(target) as connection:
        connection.execute("ANALYZE embeddings")
        count = connection.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    if count != total:
        raise RuntimeError(f"expected {total} chunks after writing, found {count}")
    ours_rate, theirs_rate = total / min(ours), total / min(theirs)
    return {
        "write_chunks_replace_chunks_per_s": round(ours_rate),
        "write_pgvectorstore_chunks_per_s": round(theirs_rate),
        "write_speedup_ours_over_pgvectorstore": round(ours_rate / theirs_rate, 1),
    }


def _timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def _searches(target, registry, corpus: dict[int, list[chunks.ChunkRecord]], queries: int) -> dict:
    vector_store = tenant_vector_store(target, _NoEmbeddings(), ef_search=max(40, 2 * K))
    # Our hybrid_search runs its vector half with ef_search = 2 * candidates: give the store the same.
    hybrid_store = tenant_vector_store(target, _NoEmbeddings(), ef_search=max(40, 2 * HYBRID_CANDIDATES))
    document_ids = sorted(corpus)[: max(1, len(corpus) // 2)]  # half the documents are "ready"
    filter_ = document_filter(document_ids)
    rng = numpy.random.default_rng(7)
    words = random.Random(7)
    vectors = _unit_vectors(rng, queries + WARM_UP_QUERIES).tolist()
    texts = [" ".join(words.choices(VOCABULARY, k=2)) for _ in vectors]

    def ours_vector(vector, _text):
        with registry.connection(target) as connection:
            return [str(hit.chunk_id) for hit in search.vector_search(connection, vector, document_ids, K)]

    def theirs_vector(vector, _text):
        return [document.id for document in vector_store.similarity_search_by_vector(vector, k=K, filter=filter_)]

    def ours_hybrid(vector, text):
        with registry.connection(target) as connection:
            hits = search.hybrid_search(connection, vector, text, document_ids, K, candidates=HYBRID_CANDIDATES)
        return [str(hit.chunk_id) for hit in hits]

    def theirs_hybrid(vector, text):
        config = hybrid_search_config(candidates=HYBRID_CANDIDATES, fts_query=text)
        found = hybrid_store.similarity_search_by_vector(vector, k=K, filter=filter_, hybrid_search_config=config)
        return [document.id for document in found]

    result: dict = {}
    for name, ours, theirs in [("vector", ours_vector, theirs_vector), ("hybrid", ours_hybrid, theirs_hybrid)]:
        progress(f"{name} search: {queries} queries through both paths, interleaved")
        ours_seconds, theirs_seconds, same_ids, overlap = [], [], 0, []
        for number, (vector, text) in enumerate(zip(vectors, texts, strict=True)):
            if number % 2:
                theirs_time, theirs_ids = _timed(lambda: theirs(vector, text))
                ours_time, ours_ids = _timed(lambda: ours(vector, text))
            else:
                ours_time, ours_ids = _timed(lambda: ours(vector, text))
                theirs_time, theirs_ids = _timed(lambda: theirs(vector, text))
            if number < WARM_UP_QUERIES:
                continue
            ours_seconds.append(ours_time)
            theirs_seconds.append(theirs_time)
            same_ids += ours_ids == theirs_ids
            overlap.append(len(set(ours_ids) & set(theirs_ids)) / max(1, len(ours_ids)))
        ours_p50, theirs_p50 = percentile(ours_seconds, 0.5), percentile(theirs_seconds, 0.5)
        result.update(
            {
                f"{name}_ours_p50_ms": milliseconds(ours_p50),
                f"{name}_ours_p99_ms": milliseconds(percentile(ours_seconds, 0.99)),
                f"{name}_pgvectorstore_p50_ms": milliseconds(theirs_p50),
                f"{name}_pgvectorstore_p99_ms": milliseconds(percentile(theirs_seconds, 0.99)),
                f"{name}_p50_ratio_pgvectorstore_over_ours": round(theirs_p50 / ours_p50, 2),
                f"{name}_identical_top_k_fraction": round(same_ids / len(ours_seconds), 3),
                f"{name}_top_k_overlap_mean": round(sum(overlap) / len(overlap), 3),
            }
        )
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
