"""Conversations and messages, stored in the tenant's own database (its content never leaves it)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb


@dataclass(frozen=True)
class ConversationRecord:
    id: uuid.UUID
    title: str
    document_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MessageRecord:
    id: int
    role: str
    content: str
    citations: list = field(default_factory=list)
    created_at: datetime | None = None


_CONVERSATION_COLUMNS = "id, title, document_id, created_at, updated_at"


def conversation_create(connection: psycopg.Connection, title: str, document_id: int | None) -> ConversationRecord:
    with connection.cursor(row_factory=class_row(ConversationRecord)) as cursor:
        created = cursor.execute(
            f"INSERT INTO conversations (id, title, document_id, created_at, updated_at) "
            f"VALUES (%s, %s, %s, now(), now()) RETURNING {_CONVERSATION_COLUMNS}",
            [uuid.uuid4(), title[:200], document_id],
        ).fetchone()
    assert created is not None  # INSERT ... RETURNING returns the row it inserted
    return created


def conversation_get(connection: psycopg.Connection, conversation_id: uuid.UUID | str) -> ConversationRecord | None:
    try:
        conversation_id = uuid.UUID(str(conversation_id))
    except ValueError:
        return None
    with connection.cursor(row_factory=class_row(ConversationRecord)) as cursor:
        return cursor.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = %s", [conversation_id]
        ).fetchone()


def conversations_list(
    connection: psycopg.Connection, document_id: int | None = None, limit: int = 100
) -> list[ConversationRecord]:
    with connection.cursor(row_factory=class_row(ConversationRecord)) as cursor:
        if document_id is None:
            return cursor.execute(
                f"SELECT {_CONVERSATION_COLUMNS} FROM conversations ORDER BY updated_at DESC LIMIT %s", [limit]
            ).fetchall()
        return cursor.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE document_id = %s "
            "ORDER BY updated_at DESC LIMIT %s",
            [document_id, limit],
        ).fetchall()


def conversation_delete(connection: psycopg.Connection, conversation_id: uuid.UUID) -> bool:
    with connection.transaction():
        connection.execute("DELETE FROM messages WHERE conversation_id = %s", [conversation_id])
        return connection.execute("DELETE FROM conversations WHERE id = %s", [conversation_id]).rowcount == 1


def messages_list(connection: psycopg.Connection, conversation_id: uuid.UUID, limit: int = 200) -> list[MessageRecord]:
    with connection.cursor(row_factory=class_row(MessageRecord)) as cursor:
        return cursor.execute(
            "SELECT id, role, content, citations, created_at FROM messages WHERE conversation_id = %s "
            "ORDER BY created_at, id LIMIT %s",
            [conversation_id, limit],
        ).fetchall()


def message_add(
    connection: psycopg.Connection, conversation_id: uuid.UUID, role: str, content: str, citations: list | None = None
) -> int:
    with connection.transaction():
        (message_id,) = connection.execute(
            "INSERT INTO messages (conversation_id, role, content, citations, created_at) "
            "VALUES (%s, %s, %s, %s, now()) RETURNING id",
            [conversation_id, role, content, Jsonb(citations or [])],
        ).fetchone() or (0,)
        connection.execute("UPDATE conversations SET updated_at = now() WHERE id = %s", [conversation_id])
    return message_id
