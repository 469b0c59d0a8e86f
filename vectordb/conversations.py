"""Conversations and messages, stored in the tenant's own database (its content never leaves it).

A conversation is private to the member who started it (`started_by`, a main-database user id) unless it is shared
with the workspace. Conversations from before workspaces have no `started_by`: they are the workspace owner's.
"""

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
    started_by: int | None = None
    shared: bool = False

    def visible_to(self, user_id: int, workspace_owner: bool) -> bool:
        return self.shared or self.started_by == user_id or (self.started_by is None and workspace_owner)

    def started_by_person(self, user_id: int, workspace_owner: bool) -> bool:
        return self.started_by == user_id or (self.started_by is None and workspace_owner)


@dataclass(frozen=True)
class MessageRecord:
    id: int
    role: str
    content: str
    citations: list = field(default_factory=list)
    created_at: datetime | None = None


_CONVERSATION_COLUMNS = "id, title, document_id, created_at, updated_at, started_by, shared"
# Who may see a conversation: the person who started it, everyone when it is shared (see the module's docstring).
_VISIBLE = "(shared OR started_by = %(user_id)s OR (started_by IS NULL AND %(workspace_owner)s))"


def conversation_create(
    connection: psycopg.Connection, title: str, document_id: int | None, started_by: int | None = None
) -> ConversationRecord:
    with connection.cursor(row_factory=class_row(ConversationRecord)) as cursor:
        created = cursor.execute(
            f"INSERT INTO conversations (id, title, document_id, started_by, shared, created_at, updated_at) "
            f"VALUES (%s, %s, %s, %s, false, now(), now()) RETURNING {_CONVERSATION_COLUMNS}",
            [uuid.uuid4(), title[:200], document_id, started_by],
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
    connection: psycopg.Connection,
    document_id: int | None = None,
    limit: int = 100,
    *,
    visible_to: int | None,
    workspace_owner: bool = False,
) -> list[ConversationRecord]:
    """The conversations the person `visible_to` may see (None: every one, for operators and erasure)."""
    conditions, parameters = [], {"limit": limit, "user_id": visible_to, "workspace_owner": workspace_owner}
    if visible_to is not None:
        conditions.append(_VISIBLE)
    if document_id is not None:
        conditions.append("document_id = %(document_id)s")
        parameters["document_id"] = document_id
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    with connection.cursor(row_factory=class_row(ConversationRecord)) as cursor:
        return cursor.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations {where}ORDER BY updated_at DESC LIMIT %(limit)s",
            parameters,
        ).fetchall()


def conversation_share(connection: psycopg.Connection, conversation_id: uuid.UUID, shared: bool) -> None:
    connection.execute("UPDATE conversations SET shared = %s WHERE id = %s", [shared, conversation_id])


def conversations_delete_private(connection: psycopg.Connection, started_by: int) -> int:
    """A departing person's private conversations (their shared ones stay with the workspace)."""
    with connection.transaction():
        private = "SELECT id FROM conversations WHERE started_by = %s AND NOT shared"
        connection.execute(f"DELETE FROM messages WHERE conversation_id IN ({private})", [started_by])
        return connection.execute(
            "DELETE FROM conversations WHERE started_by = %s AND NOT shared", [started_by]
        ).rowcount


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
