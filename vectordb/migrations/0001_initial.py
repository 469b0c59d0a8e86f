import uuid

import django.contrib.postgres.indexes
import django.contrib.postgres.search
import django.db.models.deletion
import pgvector.django.indexes
import pgvector.django.vector
from django.conf import settings
from django.db import migrations, models
from pgvector.django import VectorExtension


def embedding_columns():
    """The Embedding columns the state and the database agree on (all but content_search and created_at)."""
    return [
        ("id", models.UUIDField(default=uuid.uuid4, primary_key=True, serialize=False)),
        ("document_id", models.BigIntegerField()),
        ("chunk_index", models.IntegerField()),
        ("content", models.TextField()),
        ("metadata", models.JSONField(default=dict)),
        ("first_page", models.IntegerField()),
        ("last_page", models.IntegerField()),
        ("embedding", pgvector.django.vector.VectorField(dimensions=settings.EMBEDDING_DIMENSIONS)),
    ]


def embedding_options():
    return {
        "db_table": "embeddings",
        "indexes": [
            pgvector.django.indexes.HnswIndex(
                ef_construction=64,
                fields=["embedding"],
                m=16,
                name="embeddings_embedding_hnsw",
                opclasses=["vector_cosine_ops"],
            ),
            models.Index(fields=["document_id"], name="embeddings_document_id"),
        ],
        "constraints": [
            models.UniqueConstraint(fields=("document_id", "chunk_index"), name="embeddings_document_chunk_unique")
        ],
    }


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        VectorExtension(),
        migrations.CreateModel(
            name="TenantSetting",
            fields=[
                ("key", models.CharField(max_length=100, primary_key=True, serialize=False)),
                ("value", models.TextField()),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "db_table": "tenant_settings",
            },
        ),
        migrations.CreateModel(
            name="Conversation",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, primary_key=True, serialize=False)),
                ("title", models.CharField(max_length=200)),
                ("document_id", models.BigIntegerField(blank=True, null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "db_table": "conversations",
                "indexes": [models.Index(fields=["-updated_at"], name="conversations_updated_at")],
            },
        ),
        # The full-text column is filled by PostgreSQL itself (GENERATED ... STORED: no trigger, no app code). The
        # state keeps Django's view of it (a read-only SearchVectorField); the database gets it in CREATE TABLE
        # itself, last, as an earlier version of this migration left it (made as a plain column, then dropped and
        # added back as generated). Creating it inline spares every new tenant database a table rewrite.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Embedding",
                    fields=[
                        *embedding_columns(),
                        ("content_search", django.contrib.postgres.search.SearchVectorField(editable=False, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options=embedding_options(),
                ),
            ],
            database_operations=[
                migrations.CreateModel(
                    name="Embedding",
                    fields=[
                        *embedding_columns(),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "content_search",
                            models.GeneratedField(
                                expression=models.Func(
                                    models.F("content"), template="to_tsvector('english'::regconfig, %(expressions)s)"
                                ),
                                output_field=django.contrib.postgres.search.SearchVectorField(),
                                db_persist=True,
                            ),
                        ),
                    ],
                    options=embedding_options(),
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="embedding",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["content_search"], name="embeddings_content_search_gin"
            ),
        ),
        migrations.CreateModel(
            name="Message",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("role", models.CharField(choices=[("user", "User"), ("assistant", "Assistant")], max_length=20)),
                ("content", models.TextField()),
                ("citations", models.JSONField(default=list)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "conversation",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="messages", to="vectordb.conversation"
                    ),
                ),
            ],
            options={
                "db_table": "messages",
                "indexes": [models.Index(fields=["conversation", "created_at"], name="messages_conversation_created")],
            },
        ),
    ]
