"""The tenant schema: tables that live in every tenant's own database, never in `default`.

One definition, versioned by this app's migrations, applied per tenant by `migrate_tenants`.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models.functions import Now
from pgvector.django import HnswIndex, VectorField

# Full-text search configuration used by the generated tsvector column and by queries: they must match.
TEXT_SEARCH_CONFIG = "english"
# The HNSW index over chunk vectors: declared here, rebuilt with the same parameters when the dimension changes
# (vectordb.tenant_embedding_model). Migration 0001 holds them as history; a test keeps the two equal.
EMBEDDING_HNSW_INDEX_NAME = "embeddings_embedding_hnsw"
EMBEDDING_HNSW_PARAMETERS = {"m": 16, "ef_construction": 64}


class Chunk(models.Model):
    """One chunk of a document: its text, page provenance and embedding."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)  # deterministic per (document, chunk) on ingest
    document_id = models.BigIntegerField()
    chunk_index = models.IntegerField()
    content = models.TextField()
    metadata = models.JSONField(default=dict)
    first_page = models.IntegerField()
    last_page = models.IntegerField()
    embedding = VectorField(dimensions=settings.EMBEDDING_DIMENSIONS)
    # Filled by PostgreSQL itself (GENERATED ALWAYS AS ... STORED), see migration 0001.
    content_search = SearchVectorField(null=True, editable=False)
    # A database default too, so writers other than Django (COPY, langchain-postgres) need not set it.
    created_at = models.DateTimeField(auto_now_add=True, db_default=Now())

    class Meta:
        db_table = "embeddings"
        indexes = [
            HnswIndex(
                name=EMBEDDING_HNSW_INDEX_NAME,
                fields=["embedding"],
                opclasses=["vector_cosine_ops"],  # we sort by cosine distance
                **EMBEDDING_HNSW_PARAMETERS,
            ),
            GinIndex(name="embeddings_content_search_gin", fields=["content_search"]),
            models.Index(name="embeddings_document_id", fields=["document_id"]),
        ]
        constraints = [
            models.UniqueConstraint(fields=["document_id", "chunk_index"], name="embeddings_document_chunk_unique")
        ]


class TenantSetting(models.Model):
    """Facts about the tenant database itself, e.g. which embedding model filled it."""

    key = models.CharField(max_length=100, primary_key=True)
    value = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tenant_settings"


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    title = models.CharField(max_length=200)
    document_id = models.BigIntegerField(null=True, blank=True)  # null: across all the workspace's documents
    # The member who started it (main database user id); null for conversations from before workspaces, which
    # belong to the workspace's owner. Private to that person unless shared with the workspace.
    started_by = models.BigIntegerField(null=True, blank=True)
    shared = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "conversations"
        indexes = [models.Index(name="conversations_updated_at", fields=["-updated_at"])]


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    id = models.BigAutoField(primary_key=True)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=20, choices=Role.choices)
    content = models.TextField()
    citations = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "messages"
        indexes = [models.Index(name="messages_conversation_created", fields=["conversation", "created_at"])]
