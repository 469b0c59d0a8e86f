"""Reads for the chat pages: conversations with their documents, starter questions."""

from __future__ import annotations

import json
import logging

import psycopg
from django.core.cache import cache

from chat.services import answer_split_stopped
from chat.starters import LeadingChunk, starter_questions
from documents.models import Document
from documents.selectors import documents_for_user
from tenants.models import Workspace
from tenants.services import TenantDatabaseNotReady, tenant_target
from vectordb.chunks import chunks_leading
from vectordb.connections import ConnectionCapacityExhausted, get_registry

logger = logging.getLogger(__name__)

STARTER_QUESTIONS = 4
# Headings and terms sit near the start of a document; a dozen chunks is about four pages.
STARTER_CHUNKS_PER_DOCUMENT = 12
STARTER_DOCUMENTS = 6  # the most recent ready documents take part in the all-documents chat


def starter_questions_for_user(user, document_id: int | None = None, workspace: Workspace | None = None) -> list[str]:
    """A few questions drawn from the workspace's ready documents (or one of them). Cached until a document changes;
    [] when the documents or the tenant database cannot be read right now (the chat works without them)."""
    workspace = workspace or Workspace.objects.personal_for(user)
    ready = documents_for_user(user, workspace).filter(status=Document.Status.READY)
    if document_id is not None:
        ready = ready.filter(id=document_id)
    documents = list(ready.values("id", "title", "ingested_at")[:STARTER_DOCUMENTS])
    if not documents:
        return []
    key = "starters:" + ",".join(
        f"{d['id']}@{d['ingested_at'].timestamp() if d['ingested_at'] else 0}" for d in documents
    )
    cached = cache.get(f"{key}:{workspace.id}")
    if cached is not None:
        return cached
    try:
        with get_registry().connection(tenant_target(workspace)) as connection:
            rows = chunks_leading(connection, [d["id"] for d in documents], STARTER_CHUNKS_PER_DOCUMENT)
    except (TenantDatabaseNotReady, psycopg.OperationalError, ConnectionCapacityExhausted) as error:
        logger.info("no starter questions for now: %s", type(error).__name__)
        return []
    questions = starter_questions(
        [LeadingChunk(**row) for row in rows], {d["id"]: d["title"] for d in documents}, limit=STARTER_QUESTIONS
    )
    cache.set(f"{key}:{workspace.id}", questions, timeout=24 * 3600)
    return questions


def document_titles_for_user(user, workspace: Workspace | None = None) -> dict[int, str]:
    """Titles of the workspace's documents that still exist, by id: conversations and citations name their document,
    and say so when it was deleted."""
    return dict(documents_for_user(user, workspace).values_list("id", "title"))


def conversation_listing(
    conversation, titles: dict[int, str], viewer_id: int | None = None, owner: bool = False
) -> dict:
    """A conversation as the pages show it: its title, when it was last used, and which document it is about."""
    document_id = conversation.document_id
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "updated_at": conversation.updated_at,
        "document_id": document_id,
        "document_title": titles.get(document_id, "") if document_id else "",
        "document_deleted": bool(document_id) and document_id not in titles,
        "shared": conversation.shared,
        # Another member's shared conversation: readable, not continued or deleted by this person.
        "mine": viewer_id is None or conversation.started_by_person(viewer_id, owner),
    }


def message_for_display(message, titles: dict[int, str]) -> dict:
    """A stored message with its citations marked when their document has been deleted since, and an answer the
    reader stopped without its stop mark (the page shows it as the live chat did)."""
    citations = [
        {**citation, "deleted": citation.get("document_id") not in titles} for citation in (message.citations or [])
    ]
    content, stopped = (
        answer_split_stopped(message.content) if message.role == "assistant" else (message.content, False)
    )
    return {
        "role": message.role,
        "content": content,
        "stopped": stopped,
        "citations": citations,
        "citations_json": json.dumps(citations),
        "created_at": message.created_at,
    }
