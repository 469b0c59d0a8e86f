"""Reads of documents. Every lookup by id goes through `document_get_for_user`, so no view forgets ownership."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404

from documents.models import Document
from tenants.models import VectorDatabase
from tenants.selectors import vector_database_for_tenant


def documents_for_user(user) -> QuerySet[Document]:
    return Document.objects.filter(owner=user).order_by("-created_at")


def document_get_for_user(user, document_id: int | str) -> Document:
    """The user's document, or 404 (the same answer whether it exists for someone else or not at all)."""
    try:
        return Document.objects.get(owner=user, id=int(document_id))
    except (Document.DoesNotExist, ValueError, TypeError):
        raise Http404("No such document") from None


def document_status_payload(document: Document, waiting_for: str = "") -> dict:
    return {
        "id": document.id,
        "title": document.title,
        "status": document.status,
        "label": document.get_status_display(),
        "progress": round(document.progress, 3),
        "pages": document.page_count,
        "chunks": document.chunk_count,
        "chunks_total": document.chunks_total,
        "chunks_embedded": document.chunks_embedded,
        "detail": _status_detail(document, waiting_for),
        "error": document.error_message if document.status == Document.Status.FAILED else "",
        "busy": document.is_busy,
        "created": document.created_at.isoformat(),
    }


def document_statuses_for_user(user) -> list[dict]:
    """Every document of the user with its status, and for a queued one what it waits for."""
    documents = list(documents_for_user(user))
    waiting = _queued_reasons(user, documents)
    return [document_status_payload(document, waiting.get(document.id, "")) for document in documents]


def _status_detail(document: Document, waiting_for: str) -> str:
    """One line under the status badge: where a busy document is in its work, in figures."""
    Status = Document.Status
    if document.status == Status.QUEUED:
        return waiting_for or document.error_message or "Waiting for a free worker."
    if document.status == Status.PARSING:
        return "Reading the pages…"
    if document.status == Status.EMBEDDING:
        if document.chunks_total:
            return f"Embedding {document.chunks_embedded:,}/{document.chunks_total:,} chunks"
        return "Splitting into chunks…"
    return ""


def _queued_reasons(user, documents: list[Document]) -> dict[int, str]:
    """Why each queued document has not started: its database, the user's other documents (ingested a few at a time,
    so that one person's bulk upload cannot hold up everyone else's), or a retry after a temporary failure."""
    Status = Document.Status
    queued = sorted((d for d in documents if d.status == Status.QUEUED), key=lambda d: (d.created_at, d.id))
    if not queued:
        return {}
    vector_database = vector_database_for_tenant(user)
    if vector_database is None or vector_database.status in {
        VectorDatabase.Status.PENDING,
        VectorDatabase.Status.PROVISIONING,
    }:
        return {d.id: "Waiting for your database to be set up; it starts by itself once it is ready." for d in queued}
    if vector_database.status != VectorDatabase.Status.READY:
        return {d.id: "Waiting for your database, which is not available: see the dashboard's notice." for d in queued}
    working = [d for d in documents if d.status in {Status.PARSING, Status.EMBEDDING}]
    reasons = {}
    for position, document in enumerate(queued):
        if document.error_message:
            reasons[document.id] = document.error_message  # a temporary failure: it is retried by itself
        elif len(working) >= settings.INGEST_MAX_CONCURRENT_PER_TENANT:
            ahead = f", then {position} earlier upload{'s' if position > 1 else ''}" if position else ""
            at_once = settings.INGEST_MAX_CONCURRENT_PER_TENANT
            reasons[document.id] = (
                f"Waiting for “{working[0].title}” to finish{ahead}: your documents are processed "
                f"{'one' if at_once == 1 else at_once} at a time."
            )
        else:
            reasons[document.id] = "Waiting for a free worker."
    return reasons
