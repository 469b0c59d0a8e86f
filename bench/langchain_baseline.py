"""The benchmark's baseline: langchain-postgres' v2 `PGVectorStore` over a tenant's own `embeddings` table, with our
column names, which `bench/vector_store.py` measures our own write and search paths against.

It is the LangChain-facing interface to a tenant's chunks (`as_retriever()`, `add_texts`, `similarity_search`...);
the app does not use it: its hot paths (`vectordb.chunks.chunks_replace`, `vectordb.search`) stay plain SQL, faster
on writes and matching any of a question's words rather than all (see bench/vector_store.py and the README).

Connections. PGEngine needs a SQLAlchemy AsyncEngine; our `TenantConnectionRegistry` hands out sync psycopg
connections and is the only thing allowed to open tenant connections (it enforces the cap across tenants). So the
engine here has no pool of its own (NullPool) and its `async_creator` *borrows* a registry connection: it enters
`registry.connection(target)` in a worker thread (acquiring may wait for a slot, and resolving credentials uses the
ORM: neither may block the event loop), then wraps the borrowed connection's libpq handle in a psycopg
`AsyncConnection`. Closing that wrapper (SQLAlchemy does, when the block ends) gives the connection back to the
registry instead of closing it. Every connection the vector store uses is therefore one of the registry's: counted
under its cap, reused warm from its per-tenant pool, evicted LRU like any other.

Two facts of our schema the library does not handle by itself, dealt with here:
- `content_search` is GENERATED ALWAYS: a store built with a HybridSearchConfig naming it would INSERT into it (and
  fail). The store is built without one; hybrid searches pass a fresh config per call (`hybrid_search_config(...)`).
  A fresh one every time also matters because the library writes the query text into the config it is given.
- `created_at` is NOT NULL without a database default (Django's auto_now_add is set by the ORM): the library's INSERT
  would leave it NULL. Until a tenant migration gives it `DEFAULT now()`, `created_at` is mapped as a metadata column
  and `TenantVectorStore` stamps it on every write (so it also shows in each Document's metadata).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from typing import Any, cast

import psycopg
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_postgres.v2.engine import PGEngine
from langchain_postgres.v2.hybrid_search_config import HybridSearchConfig, reciprocal_rank_fusion
from langchain_postgres.v2.indexes import DistanceStrategy, QueryOptions
from langchain_postgres.v2.vectorstores import PGVectorStore
from psycopg.adapt import AdaptersMap
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from vectordb.connections import TenantConnectionRegistry, TenantTarget, get_registry
from vectordb.models import TEXT_SEARCH_CONFIG
from vectordb.search import RRF_K

TABLE_NAME = "embeddings"
ID_COLUMN = "id"
CONTENT_COLUMN = "content"
EMBEDDING_COLUMN = "embedding"
METADATA_COLUMNS = ["document_id", "chunk_index", "first_page", "last_page"]
METADATA_JSON_COLUMN = "metadata"
TSV_COLUMN = "content_search"
CREATED_AT_COLUMN = "created_at"
# Engines hold no connections (NullPool), only SQLAlchemy's per-engine dialect state: a bound keeps memory flat.
MAX_CACHED_ENGINES = 256


class HnswIterativeQueryOptions(QueryOptions):
    """The HNSW settings `vectordb.search.vector_search` uses, as the library's per-query options (SET LOCAL)."""

    def __init__(self, ef_search: int = 40, iterative_scan: str = "relaxed_order"):
        self.ef_search = int(ef_search)
        self.iterative_scan = iterative_scan

    def to_parameter(self) -> list[str]:
        return [f"hnsw.ef_search = {self.ef_search}", f"hnsw.iterative_scan = {self.iterative_scan}"]

    def to_string(self) -> str:
        return ", ".join(self.to_parameter())


class _RegistryAsyncConnection(psycopg.AsyncConnection):
    """An AsyncConnection over the libpq handle of a connection borrowed from the registry; close() gives it back."""

    _lease: ExitStack | None
    _saved_handlers: tuple[Any, Any]

    @classmethod
    async def borrow(
        cls, registry: TenantConnectionRegistry, target: TenantTarget, adapters: AdaptersMap | None
    ) -> _RegistryAsyncConnection:
        lease = ExitStack()
        borrowed: psycopg.Connection = await asyncio.to_thread(lease.enter_context, registry.connection(target))
        pgconn = borrowed.pgconn
        saved_handlers = (pgconn.notice_handler, pgconn.notify_handler)
        try:
            connection = cls(pgconn)
        except BaseException:
            await asyncio.to_thread(lease.close)
            raise
        connection._lease = lease
        connection._saved_handlers = saved_handlers
        # Marks it as pooled for psycopg: no "deleted while still open" warning, the registry owns its life.
        connection._pool = None
        if adapters is not None:
            connection._adapters = AdaptersMap(adapters)
        # Never prepare: the borrowed sync Connection shares this server session and numbers its own prepared
        # statements from the same names (_pg3_0, ...).
        connection.prepare_threshold = None
        return connection

    async def close(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        pgconn = self.pgconn
        if not self.broken and pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            # The registry commits on a clean exit: whatever this wrapper left open must not be committed there.
            try:
                await self.rollback()
            except psycopg.Error:
                pass
        pgconn.notice_handler, pgconn.notify_handler = self._saved_handlers
        await asyncio.to_thread(lease.close)

    @property
    def closed(self) -> bool:
        return self._lease is None or super().closed


class _BackgroundLoop:
    """One event loop thread for the sync PGVectorStore API (the library runs its coroutines there)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="vector-store-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def forget(self) -> None:
        # After fork() the thread is gone: the child starts its own on first use.
        self._lock = threading.Lock()
        self._loop = None


_background_loop = _BackgroundLoop()
_engines: OrderedDict[tuple[int, str], PGEngine] = OrderedDict()
_engines_lock = threading.Lock()


def _forget_in_child() -> None:
    global _engines_lock
    _background_loop.forget()
    _engines.clear()
    _engines_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def tenant_async_engine(target: TenantTarget, registry: TenantConnectionRegistry | None = None) -> AsyncEngine:
    """A SQLAlchemy AsyncEngine whose every connection is borrowed from the registry (no pool of its own)."""
    registry = registry or get_registry()
    engine: AsyncEngine | None = None

    async def borrow() -> psycopg.AsyncConnection:
        adapters = engine.sync_engine.dialect._psycopg_adapters_map if engine is not None else None  # type: ignore[attr-defined]
        return await _RegistryAsyncConnection.borrow(registry, target, adapters)

    engine = create_async_engine("postgresql+psycopg://", async_creator=borrow, poolclass=NullPool)
    return engine


def tenant_pg_engine(target: TenantTarget, registry: TenantConnectionRegistry | None = None) -> PGEngine:
    """The tenant's PGEngine (cached per registry and tenant; it holds no connection while idle)."""
    registry = registry or get_registry()
    key = (id(registry), target.key)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None:
            _engines.move_to_end(key)
            return engine
    engine = PGEngine.from_engine(tenant_async_engine(target, registry), loop=_background_loop.get())
    with _engines_lock:
        engine = _engines.setdefault(key, engine)
        _engines.move_to_end(key)
        while len(_engines) > MAX_CACHED_ENGINES:
            _engines.popitem(last=False)  # NullPool: nothing to close
    return engine


def hybrid_search_config(candidates: int = 20, rrf_k: int = RRF_K, fts_query: str = "") -> HybridSearchConfig:
    """A new config for one hybrid search: our generated tsvector column, reciprocal rank fusion.

    New every call: the library writes the query text (and the final k) into the config object it is handed.
    """
    return HybridSearchConfig(
        tsv_column=TSV_COLUMN,
        tsv_lang=TEXT_SEARCH_CONFIG,  # must be the generated column's configuration
        fts_query=fts_query,
        fusion_function=reciprocal_rank_fusion,
        fusion_function_parameters={"rrf_k": rrf_k},
        primary_top_k=candidates,
        secondary_top_k=candidates,
        index_name="embeddings_content_search_gin",
    )


class EmbedderEmbeddings(Embeddings):
    """Our embedder (vectordb.embeddings.get_embedder(), loaded on first use) as a LangChain Embeddings."""

    def __init__(self, embedder: Any = None):
        self._embedder = embedder

    def _get(self) -> Any:
        if self._embedder is None:
            from vectordb.embeddings import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._get().embed_documents(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self._get().embed_query(text)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class TenantVectorStore(PGVectorStore):
    """PGVectorStore that stamps `created_at` on writes when the table has no default for it."""

    _stamps_created_at: bool = False

    def _stamped(self, metadatas: Sequence[dict] | None, count: int) -> list[dict] | None:
        if not self._stamps_created_at:
            return list(metadatas) if metadatas is not None else None
        now = _now()
        source = list(metadatas) if metadatas else [{} for _ in range(count)]
        return [{CREATED_AT_COLUMN: now, **metadata} for metadata in source]

    def _stamped_documents(self, documents: list[Document]) -> list[Document]:
        if not self._stamps_created_at:
            return documents
        now = _now()
        return [
            document.model_copy(update={"metadata": {CREATED_AT_COLUMN: now, **document.metadata}})
            for document in documents
        ]

    def add_embeddings(
        self,
        texts: Iterable[str],
        embeddings: list[list[float]],
        metadatas: list[dict] | None = None,
        ids: list | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        return super().add_embeddings(texts, embeddings, self._stamped(metadatas, len(texts)), ids, **kwargs)

    async def aadd_embeddings(
        self,
        texts: Iterable[str],
        embeddings: list[list[float]],
        metadatas: list[dict] | None = None,
        ids: list | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        return await super().aadd_embeddings(texts, embeddings, self._stamped(metadatas, len(texts)), ids, **kwargs)

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, ids: list | None = None, **kwargs: Any
    ) -> list[str]:
        texts = list(texts)
        return super().add_texts(texts, self._stamped(metadatas, len(texts)), ids, **kwargs)

    async def aadd_texts(
        self, texts: Iterable[str], metadatas: list[dict] | None = None, ids: list | None = None, **kwargs: Any
    ) -> list[str]:
        texts = list(texts)
        return await super().aadd_texts(texts, self._stamped(metadatas, len(texts)), ids, **kwargs)

    def add_documents(self, documents: list[Document], ids: list | None = None, **kwargs: Any) -> list[str]:
        return super().add_documents(self._stamped_documents(documents), ids, **kwargs)

    async def aadd_documents(self, documents: list[Document], ids: list | None = None, **kwargs: Any) -> list[str]:
        return await super().aadd_documents(self._stamped_documents(documents), ids, **kwargs)


async def _created_at_needs_stamp(engine: PGEngine) -> bool:
    async with engine._pool.connect() as connection:
        row = (
            await connection.execute(
                text(
                    "SELECT column_default IS NULL AND is_nullable = 'NO' FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = :table AND column_name = :column"
                ),
                {"table": TABLE_NAME, "column": CREATED_AT_COLUMN},
            )
        ).first()
    return bool(row and row[0])


def tenant_vector_store(
    target: TenantTarget,
    embedding_service: Embeddings | None = None,
    *,
    registry: TenantConnectionRegistry | None = None,
    k: int = 4,
    ef_search: int = 40,
) -> TenantVectorStore:
    """A PGVectorStore over the tenant's `embeddings` table. Build it once per tenant and unit of work: building
    reads the table's columns (one round trip). Hybrid search: pass `hybrid_search_config=hybrid_search_config()`
    to `similarity_search` (or in a retriever's search_kwargs)."""
    engine = tenant_pg_engine(target, registry)
    return engine._run_as_sync(_acreate(engine, embedding_service, k, ef_search))


async def atenant_vector_store(
    target: TenantTarget,
    embedding_service: Embeddings | None = None,
    *,
    registry: TenantConnectionRegistry | None = None,
    k: int = 4,
    ef_search: int = 40,
) -> TenantVectorStore:
    """tenant_vector_store for async callers (ASGI views)."""
    engine = await asyncio.to_thread(tenant_pg_engine, target, registry)
    return await engine._run_as_async(_acreate(engine, embedding_service, k, ef_search))


async def _acreate(engine: PGEngine, embedding_service: Embeddings | None, k: int, ef_search: int) -> TenantVectorStore:
    stamps_created_at = await _created_at_needs_stamp(engine)
    metadata_columns = METADATA_COLUMNS + ([CREATED_AT_COLUMN] if stamps_created_at else [])
    store = await TenantVectorStore.create(
        engine,
        embedding_service or EmbedderEmbeddings(),
        TABLE_NAME,
        id_column=ID_COLUMN,
        content_column=CONTENT_COLUMN,
        embedding_column=EMBEDDING_COLUMN,
        metadata_columns=metadata_columns,
        metadata_json_column=METADATA_JSON_COLUMN,
        distance_strategy=DistanceStrategy.COSINE_DISTANCE,  # the HNSW index's opclass is vector_cosine_ops
        k=k,
        index_query_options=HnswIterativeQueryOptions(ef_search=ef_search),
    )
    store._stamps_created_at = stamps_created_at  # type: ignore[attr-defined]
    return cast(TenantVectorStore, store)


def document_filter(document_ids: Sequence[int]) -> dict:
    """The library's filter for "only these documents"."""
    return {"document_id": {"$in": [int(document_id) for document_id in document_ids]}}
