"""Reads of documents. Every lookup by id goes through `document_get_for_user`, so no view forgets ownership."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from documents.models import Document


def documents_for_user(user) -> QuerySet[Document]:
    return Document.objects.filter(owner=user).order_by("-created_at")


def document_get_for_user(user, document_id: int | str) -> Document:
    """The user's document, or 404 (the same answer whether it exists for someone else or not at all)."""
    try:
        return Document.objects.get(owner=user, id=int(document_id))
    except (Document.DoesNotExist, ValueError, TypeError):
        raise Http404("No such document") from None


def document_status_payload(document: Document) -> dict:
    return {
        "id": document.id,
        "title": document.title,
        "status": document.status,
        "progress": round(document.progress, 3),
        "pages": document.page_count,
        "chunks": document.chunk_count,
        "error": document.error_message if document.status == Document.Status.FAILED else "",
        "busy": document.is_busy,
    }
