"""Retrieval: HNSW search latency and recall@10 on one big tenant; open connections while many tenants are queried.

Search: one tenant database (postgres provider) holding 100,000 chunks (quick: 20,000) of 384-dim vectors drawn
around 1,000 gaussian cluster centres (point = centre + noise of varying spread, unit-normalised: random unit vectors
have no neighbourhoods, so they make HNSW recall look worse and mean nothing), written as 100 documents by
`vectordb.chunks.chunks_replace` (delete + COPY). The first 3 documents go in with the HNSW index maintained on insert
(the ingest rate); the rest are loaded with the index dropped, which is then built with the migration's definition. Queries are
drawn like the data. Each query runs through the app's path (`registry.connection(target)` + `vector_search` with
every document of the tenant in the filter, as chat does) and through exact k-NN (the same SQL with index scans off:
a sequential scan and a sort, the baseline), back to back, alternating which goes first. recall@10 = share of the
exact top 10 that the HNSW search returns. An ef_search sweep shows the recall/latency trade-off.

Connections: 200 tenants (quick: 60) with a few chunks each, queried from 16 threads in random order (2,000 queries)
through a TenantConnectionRegistry built from settings (TENANT_POOL_MAX_TOTAL_CONNECTIONS). Open connections are
sampled from the registry after every acquisition and from pg_stat_activity (client backends in the tenants'
databases) by a sampler thread; neither may exceed the cap.
"""

from __future__ import annotations

import random
import threading
import time

import numpy
import psycopg
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict

from bench.common import admin_dsn, create_tenants, milliseconds, percentile, progress, remove_tenants
from bench.framework import Target, load_average
from tenants import services
from tenants.models import VectorDatabase
from vectordb import chunks, search
from vectordb.connections import TenantConnectionRegistry, get_registry
from vectordb.models import EMBEDDING_HNSW_INDEX_NAME

TARGETS = [
    Target("p50_ms", at_most=5, unit=" ms", label="p50_ms (HNSW, app path)"),
    Target("p99_ms", at_most=20, unit=" ms", label="p99_ms (HNSW, app path)"),
    Target("recall_at_10", at_least=0.95),
    Target("connections_within_cap", at_least=1, label="max open connections <= cap (1 = yes)"),
]

PREFIX = "bench-retrieval"
POOL_PREFIX = "bench-retrieval-pool"
DIMENSIONS = 384
K = 10
DOCUMENTS, QUICK_DOCUMENTS = 100, 20
CHUNKS_PER_DOCUMENT = 1_000
CLUSTERS = 1_000
# Noise norm relative to the (unit) centre, drawn per cluster: tight and loose topics, as real corpora have.
CLUSTER_SPREAD = (0.5, 1.0)
QUERIES, QUICK_QUERIES = 500, 200
WARM_UP_QUERIES = 20
EF_SEARCH_SWEEP = (40, 64, 100, 200)
SWEEP_QUERIES = 200
INDEXED_LOAD_DOCUMENTS = 3

POOL_TENANTS, QUICK_POOL_TENANTS = 200, 60
POOL_CHUNKS_PER_TENANT = 5
POOL_THREADS = 16
POOL_QUERIES = 2_000
POOL_SAMPLE_INTERVAL_SECONDS = 0.002


def run(quick: bool) -> dict:
    result: dict = {"load_average_start": load_average()}
    result.update(_search_section(quick))
    result.update(_connection_section(quick))
    result["load_average_end"] = load_average()
    return result


# --- data ------------------------------------------------------------------------------------------------------------


class _ClusteredVectors:
    def __init__(self, seed: int = 7):
        self.rng = numpy.random.default_rng(seed)
        centres = self.rng.standard_normal((CLUSTERS, DIMENSIONS)).astype(numpy.float32)
        self.centres = centres / numpy.linalg.norm(centres, axis=1, keepdims=True)
        self.spreads = self.rng.uniform(*CLUSTER_SPREAD, CLUSTERS).astype(numpy.float32)

    def draw(self, count: int) -> numpy.ndarray:
        clusters = self.rng.integers(0, CLUSTERS, count)
        noise = self.rng.standard_normal((count, DIMENSIONS)).astype(numpy.float32)
        noise *= (self.spreads[clusters] / numpy.sqrt(DIMENSIONS))[:, None]
        points = self.centres[clusters] + noise
        return points / numpy.linalg.norm(points, axis=1, keepdims=True)


def _load(registry, target, data, document_ids: list[int]) -> float:
    """Writes CHUNKS_PER_DOCUMENT drawn chunks per document with chunks_replace; seconds spent writing (not drawing)."""
    seconds = 0.0
    for document_id in document_ids:
        records = _records(document_id, data.draw(CHUNKS_PER_DOCUMENT))
        started = time.perf_counter()
        with registry.connection(target) as connection:
            chunks.chunks_replace(connection, document_id, records)
        seconds += time.perf_counter() - started
    return seconds


def _records(document_id: int, vectors: numpy.ndarray) -> list[chunks.ChunkRecord]:
    return [
        chunks.ChunkRecord(
            document_id=document_id,
            chunk_index=index,
            content=f"chunk {index} of document {document_id}",
            first_page=index // 4 + 1,
            last_page=index // 4 + 1,
            embedding=vector,
            metadata={"title": f"document {document_id}"},
        )
        for index, vector in enumerate(vectors.tolist())
    ]


def _provision(prefix: str, count: int) -> list[VectorDatabase]:
    rows = create_tenants(prefix, count)
    provisioned = []
    for row in rows:
        ready = services.vector_database_provision(row.id)
        if ready.status != VectorDatabase.Status.READY:
            raise RuntimeError(f"bench tenant ended {ready.status}: {ready.last_error}")
        provisioned.append(ready)
    return provisioned


# --- search latency and recall ---------------------------------------------------------------------------------------


def _exact_search(connection: psycopg.Connection, query: numpy.ndarray, document_ids: list[int], k: int) -> list:
    """The same SQL as vector_search, with index scans off: exact k-NN by sequential scan and sort."""
    with connection.transaction():
        connection.execute("SET LOCAL enable_indexscan = off")
        connection.execute("SET LOCAL enable_bitmapscan = off")
        return connection.execute(
            "SELECT id FROM embeddings WHERE document_id = ANY(%(documents)s) "
            "ORDER BY embedding <=> %(query)s::vector LIMIT %(k)s",
            {"query": search._vector_literal(query), "documents": document_ids, "k": k},
        ).fetchall()


def _plan_uses_hnsw(connection: psycopg.Connection, query: numpy.ndarray, document_ids: list[int]) -> bool:
    with connection.transaction():
        connection.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        plan = connection.execute(
            "EXPLAIN SELECT id FROM embeddings WHERE document_id = ANY(%(documents)s) "
            "ORDER BY embedding <=> %(query)s::vector LIMIT 10",
            {"query": search._vector_literal(query), "documents": document_ids},
        ).fetchall()
    return any(EMBEDDING_HNSW_INDEX_NAME in line[0] for line in plan)


def _search_section(quick: bool) -> dict:
    documents = QUICK_DOCUMENTS if quick else DOCUMENTS
    queries = QUICK_QUERIES if quick else QUERIES
    remove_tenants(PREFIX)
    registry = get_registry()
    [row] = _provision(PREFIX, 1)
    target = services.tenant_target(row.workspace)
    try:
        data = _ClusteredVectors()
        document_ids = list(range(1, documents + 1))
        # Inserting into a maintained HNSW index runs at a few hundred chunks a second here: measure that rate on
        # the first documents (the ingest path), then load the rest without the index and build it in one go with
        # the tenant migration's definition (what a REINDEX does; same graph algorithm, and far faster).
        with_index = document_ids[:INDEXED_LOAD_DOCUMENTS]
        progress(
            f"search: loading {len(with_index) * CHUNKS_PER_DOCUMENT:,} chunks with chunks_replace, HNSW kept on insert"
        )
        load_seconds = _load(registry, target, data, with_index)
        with registry.connection(target) as connection:
            index_definition = connection.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [EMBEDDING_HNSW_INDEX_NAME]
            ).fetchone()[0]
            connection.execute(f"DROP INDEX {EMBEDDING_HNSW_INDEX_NAME}")
        rest = document_ids[INDEXED_LOAD_DOCUMENTS:]
        progress(f"search: loading {len(rest) * CHUNKS_PER_DOCUMENT:,} chunks with chunks_replace, index dropped")
        bulk_seconds = _load(registry, target, data, rest)
        progress(f"search: building the HNSW index: {index_definition}")
        started = time.perf_counter()
        with registry.connection(target) as connection:
            connection.execute(index_definition)
        build_seconds = time.perf_counter() - started
        with registry.connection(target) as connection:
            connection.execute("ANALYZE embeddings")
            chunk_total = connection.execute("SELECT count(*) FROM embeddings").fetchone()[0]
            index_bytes = connection.execute(
                "SELECT pg_relation_size(%s::regclass)", [EMBEDDING_HNSW_INDEX_NAME]
            ).fetchone()[0]
        result: dict = {
            "chunks": chunk_total,
            "dimensions": DIMENSIONS,
            "documents": documents,
            "clusters": CLUSTERS,
            "queries": queries,
            "k": K,
            "load_chunks_per_second_hnsw_on_insert": round(len(with_index) * CHUNKS_PER_DOCUMENT / load_seconds),
            "load_chunks_per_second_without_index": round(len(rest) * CHUNKS_PER_DOCUMENT / bulk_seconds),
            "hnsw_build_seconds": round(build_seconds, 1),
            "hnsw_index_mb": round(index_bytes / 2**20, 1),
        }
        query_vectors = data.draw(WARM_UP_QUERIES + queries + SWEEP_QUERIES)
        with registry.connection(target) as connection:
            result["plan_uses_hnsw"] = _plan_uses_hnsw(connection, query_vectors[0], document_ids)
        result.update(_latency_and_recall(registry, target, document_ids, query_vectors, queries))
        result["ef_search_sweep"] = _ef_search_sweep(registry, target, document_ids, query_vectors[-SWEEP_QUERIES:])
        return result
    finally:
        registry.close_tenant(target.key)
        progress(f"search: dropped {remove_tenants(PREFIX)} bench tenant database")


def _latency_and_recall(registry, target, document_ids, query_vectors, queries) -> dict:
    for query in query_vectors[:WARM_UP_QUERIES]:
        with registry.connection(target) as connection:
            search.vector_search(connection, query, document_ids, K)
            _exact_search(connection, query, document_ids, K)
    progress(f"search: {queries} queries, HNSW (app path) and exact k-NN back to back")
    hnsw_seconds, exact_seconds, recalls, short = [], [], [], 0
    for number, query in enumerate(query_vectors[WARM_UP_QUERIES : WARM_UP_QUERIES + queries]):
        for side in (0, 1) if number % 2 == 0 else (1, 0):
            started = time.perf_counter()
            with registry.connection(target) as connection:
                if side == 0:
                    hits = search.vector_search(connection, query, document_ids, K)
                else:
                    exact = _exact_search(connection, query, document_ids, K)
            (hnsw_seconds if side == 0 else exact_seconds).append(time.perf_counter() - started)
        short += len(hits) < K
        truth = {row[0] for row in exact}
        recalls.append(len(truth & {hit.chunk_id for hit in hits}) / len(truth))
    p50, exact_p50 = percentile(hnsw_seconds, 0.5), percentile(exact_seconds, 0.5)
    return {
        "p50_ms": milliseconds(p50),
        "p99_ms": milliseconds(percentile(hnsw_seconds, 0.99)),
        "recall_at_10": round(sum(recalls) / len(recalls), 4),
        "recall_at_10_min": round(min(recalls), 2),
        "queries_short_of_k": short,
        "exact_p50_ms": milliseconds(exact_p50),
        "exact_p99_ms": milliseconds(percentile(exact_seconds, 0.99)),
        "exact_over_hnsw_p50": round(exact_p50 / p50, 1),
        "ef_search_default": int(max(40, 2 * K)),
    }


def _ef_search_sweep(registry, target, document_ids, query_vectors) -> list[dict]:
    progress(f"search: ef_search sweep {EF_SEARCH_SWEEP} over {len(query_vectors)} queries")
    with registry.connection(target) as connection:
        truths = [{row[0] for row in _exact_search(connection, query, document_ids, K)} for query in query_vectors]
    rows = []
    for ef_search in EF_SEARCH_SWEEP:
        seconds, recalls = [], []
        for query, truth in zip(query_vectors, truths, strict=True):
            started = time.perf_counter()
            with registry.connection(target) as connection:
                hits = search.vector_search(connection, query, document_ids, K, ef_search=ef_search)
            seconds.append(time.perf_counter() - started)
            recalls.append(len(truth & {hit.chunk_id for hit in hits}) / len(truth))
        rows.append(
            {
                "ef_search": ef_search,
                "p50_ms": milliseconds(percentile(seconds, 0.5)),
                "p99_ms": milliseconds(percentile(seconds, 0.99)),
                "recall_at_10": round(sum(recalls) / len(recalls), 4),
            }
        )
        progress(f"  {rows[-1]}")
    return rows


# --- connections across many tenants ---------------------------------------------------------------------------------


def _connection_section(quick: bool) -> dict:
    tenants = QUICK_POOL_TENANTS if quick else POOL_TENANTS
    remove_tenants(POOL_PREFIX)
    registry = TenantConnectionRegistry(
        max_total_connections=settings.TENANT_POOL_MAX_TOTAL_CONNECTIONS,
        max_connections_per_tenant=settings.TENANT_POOL_MAX_PER_TENANT,
        idle_seconds=settings.TENANT_POOL_IDLE_SECONDS,
    )
    cap = registry.max_total_connections
    try:
        progress(f"connections: provisioning {tenants} tenants with {POOL_CHUNKS_PER_TENANT} chunks each")
        rows = _provision(POOL_PREFIX, tenants)
        targets = [services.tenant_target(row.workspace) for row in rows]
        database_names = [conninfo_to_dict(target.resolve_dsn(False))["dbname"] for target in targets]
        rng = numpy.random.default_rng(11)
        for target in targets:
            vectors = rng.standard_normal((POOL_CHUNKS_PER_TENANT, DIMENSIONS)).astype(numpy.float32)
            vectors /= numpy.linalg.norm(vectors, axis=1, keepdims=True)
            with registry.connection(target) as connection:
                chunks.chunks_replace(connection, 1, _records(1, vectors))
        registry.close_all()

        stop = threading.Event()
        server_samples: list[int] = []
        registry_samples: list[int] = []
        errors: list[str] = []

        def sample_server() -> None:
            with psycopg.connect(admin_dsn(), autocommit=True) as admin:
                while not stop.is_set():
                    server_samples.append(
                        admin.execute(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND datname = ANY(%s)",
                            [database_names],
                        ).fetchone()[0]
                    )
                    registry_samples.append(registry.open_connection_count())
                    time.sleep(POOL_SAMPLE_INTERVAL_SECONDS)

        order = random.Random(5)
        plan = [order.randrange(tenants) for _ in range(POOL_QUERIES)]
        next_query = iter(range(POOL_QUERIES))
        plan_lock = threading.Lock()
        latencies: list[float] = []

        def worker() -> None:
            query_rng = numpy.random.default_rng(threading.get_ident() % 2**32)
            while True:
                with plan_lock:
                    number = next(next_query, None)
                if number is None:
                    return
                target = targets[plan[number]]
                query = query_rng.standard_normal(DIMENSIONS)
                started = time.perf_counter()
                try:
                    with registry.connection(target) as connection:
                        registry_samples.append(registry.open_connection_count())
                        hits = search.vector_search(connection, query, [1], 3)
                    if len(hits) != 3:
                        errors.append(f"{target.key}: {len(hits)} hits")
                except Exception as error:
                    errors.append(f"{type(error).__name__}: {error}")
                latencies.append(time.perf_counter() - started)

        sampler = threading.Thread(target=sample_server, name="bench-pg-stat-activity", daemon=True)
        sampler.start()
        time.sleep(0.05)
        progress(f"connections: {POOL_QUERIES} queries over {tenants} tenants from {POOL_THREADS} threads, cap {cap}")
        started = time.perf_counter()
        workers = [threading.Thread(target=worker, name=f"bench-query-{n}") for n in range(POOL_THREADS)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
        max_open = max(max(server_samples), max(registry_samples))
        return {
            "tenants": tenants,
            "connection_cap": cap,
            "pool_threads": POOL_THREADS,
            "pool_queries": POOL_QUERIES,
            "max_open_connections": max_open,
            "max_open_connections_registry": max(registry_samples),
            "max_open_connections_pg_stat_activity": max(server_samples),
            "pg_stat_activity_samples": len(server_samples),
            "connections_within_cap": int(max_open <= cap),
            "pool_query_errors": len(errors),
            "pool_first_error": errors[0] if errors else "",
            "pool_queries_per_second": round(POOL_QUERIES / elapsed, 1),
            "pool_query_p50_ms": milliseconds(percentile(latencies, 0.5)),
            "pool_query_p99_ms": milliseconds(percentile(latencies, 0.99)),
        }
    finally:
        registry.close_all()
        progress(f"connections: dropped {remove_tenants(POOL_PREFIX)} bench tenant databases")
