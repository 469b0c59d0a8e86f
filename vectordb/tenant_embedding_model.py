"""Which embedding model fills a tenant database, and the column that holds its vectors.

Vectors of two models are never comparable: the model and its dimension are recorded in the tenant database
(`tenant_settings`), a different one is refused unless the caller is re-embedding, and the `embeddings.embedding`
column is declared at the model's dimension. Every function works in the caller's open transaction on a connection
from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from vectordb.models import EMBEDDING_HNSW_INDEX_NAME, EMBEDDING_HNSW_PARAMETERS

EMBEDDING_MODEL_KEY = "embedding_model"
EMBEDDING_DIMENSIONS_KEY = "embedding_dimensions"
# pgvector's HNSW index takes `vector` columns of at most 2,000 dimensions.
HNSW_MAX_DIMENSIONS = 2000


class EmbeddingModelMismatch(Exception):
    """The tenant database holds embeddings from another model than the one configured: never mix them."""

    def __init__(self, recorded: EmbeddingModel, configured: EmbeddingModel):
        self.recorded, self.configured = recorded, configured
        super().__init__(
            f"tenant database holds {recorded.name} ({recorded.dimensions} dims) embeddings; configured model is "
            f"{configured.name} ({configured.dimensions} dims): re-embed the tenant's documents to switch"
        )


@dataclass(frozen=True)
class EmbeddingModel:
    name: str
    dimensions: int


@dataclass(frozen=True)
class _EmbeddingState:
    """What the checks read in one query: the recorded model, the column's dimension, whether it holds chunks."""

    recorded_name: str | None
    recorded_dimensions: str | None
    column_dimensions: int
    has_chunks: bool

    @property
    def recorded(self) -> EmbeddingModel | None:
        if self.recorded_name is None:
            return None
        return EmbeddingModel(self.recorded_name, int(self.recorded_dimensions or 0))


_STATE_QUERY = sql.SQL(
    "SELECT (SELECT value FROM tenant_settings WHERE key = {model}) AS recorded_name, "
    "(SELECT value FROM tenant_settings WHERE key = {dimensions}) AS recorded_dimensions, "
    "(SELECT atttypmod FROM pg_attribute WHERE attrelid = 'embeddings'::regclass AND attname = 'embedding') "
    "AS column_dimensions, EXISTS (SELECT 1 FROM embeddings) AS has_chunks"
).format(model=EMBEDDING_MODEL_KEY, dimensions=EMBEDDING_DIMENSIONS_KEY)


def _state(connection: psycopg.Connection) -> _EmbeddingState:
    with connection.cursor(row_factory=class_row(_EmbeddingState)) as cursor:
        state = cursor.execute(_STATE_QUERY).fetchone()
    assert state is not None  # a query without FROM always returns its one row
    return state


def embedding_model_recorded(connection: psycopg.Connection) -> EmbeddingModel | None:
    """The model recorded in the tenant database, if any."""
    return _state(connection).recorded


def embedding_column_dimensions(connection: psycopg.Connection) -> int | None:
    """The dimension the `embeddings.embedding` column is declared with (None when it has no fixed dimension)."""
    dimensions = _state(connection).column_dimensions
    return dimensions if dimensions and dimensions > 0 else None


def embedding_model_settle(
    connection: psycopg.Connection, model: EmbeddingModel, *, after: sql.Composable | None = None
) -> None:
    """For a database being provisioned: record `model` unless one is recorded, refuse a different one, and match
    the vector column to its dimension while it holds no chunks (a template migrated under another model).
    `after`: statements (no parameters) sent first, in the same round trip (a new database's schema)."""
    record = sql.SQL(
        "INSERT INTO tenant_settings (key, value, updated_at) VALUES ({}, {}, now()), ({}, {}, now()) "
        "ON CONFLICT (key) DO NOTHING"  # rather than a table lock: settles a race with another recorder
    ).format(EMBEDDING_MODEL_KEY, model.name, EMBEDDING_DIMENSIONS_KEY, str(model.dimensions))
    with connection.cursor(row_factory=class_row(_EmbeddingState)) as cursor:
        # Without parameters it all goes as one simple query: one round trip, the state in the last result.
        cursor.execute(sql.SQL("; ").join([*([after] if after is not None else []), record, _STATE_QUERY]))
        while cursor.nextset():
            pass
        state = cursor.fetchone()
    assert state is not None
    if state.recorded != model:
        raise EmbeddingModelMismatch(state.recorded or EmbeddingModel("", 0), model)
    if state.column_dimensions != model.dimensions and not state.has_chunks:
        embedding_dimension_change(connection, model.dimensions)


def embedding_model_record(connection: psycopg.Connection, model: EmbeddingModel, *, replace: bool = False) -> None:
    """Record which model fills this database. Refuses a different model unless `replace` (re-embedding)."""
    connection.execute("LOCK TABLE tenant_settings IN SHARE ROW EXCLUSIVE MODE")
    recorded = _state(connection).recorded
    if recorded is not None and recorded != model and not replace:
        raise EmbeddingModelMismatch(recorded, model)
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO tenant_settings (key, value, updated_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            [(EMBEDDING_MODEL_KEY, model.name), (EMBEDDING_DIMENSIONS_KEY, str(model.dimensions))],
        )


def embedding_dimension_change(connection: psycopg.Connection, dimensions: int) -> int:
    """Empty the `embeddings` table and make its column hold `dimensions`-dimensional vectors, in one transaction.

    Vectors of two models are never comparable, so every chunk goes: the caller re-embeds the documents afterwards.
    The HNSW index is dropped before the type change and made again after it, as the model declares it (cosine
    opclass: search sorts by cosine distance). Returns how many chunks were deleted.
    """
    if not 1 <= dimensions <= HNSW_MAX_DIMENSIONS:
        raise ValueError(
            f"embeddings of {dimensions} dimensions cannot be indexed (HNSW takes 1 to {HNSW_MAX_DIMENSIONS})"
        )
    index = sql.Identifier(EMBEDDING_HNSW_INDEX_NAME)
    with connection.transaction():
        # Taken first, so a concurrent chunk writer waits here rather than failing half-way through the change.
        connection.execute("LOCK TABLE embeddings IN ACCESS EXCLUSIVE MODE")
        deleted = connection.execute("DELETE FROM embeddings").rowcount
        connection.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(index))
        connection.execute(
            sql.SQL("ALTER TABLE embeddings ALTER COLUMN embedding TYPE vector({})").format(sql.Literal(dimensions))
        )
        connection.execute(
            sql.SQL(
                "CREATE INDEX {} ON embeddings USING hnsw (embedding vector_cosine_ops) "
                "WITH (m = {}, ef_construction = {})"
            ).format(
                index,
                sql.Literal(EMBEDDING_HNSW_PARAMETERS["m"]),
                sql.Literal(EMBEDDING_HNSW_PARAMETERS["ef_construction"]),
            )
        )
    return deleted
