"""Reads of documents. Every lookup goes through `documents_for_user` or `document_get_for_user`, which check the
person's role in the workspace (tenants.permissions), so no view, task or command forgets it."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet
from django.http import Http404

from documents.formats import ParseLimits
from documents.models import Document
from tenants.models import Membership, VectorDatabase, Workspace
from tenants.permissions import Action, membership_require
from tenants.selectors import vector_database_for_tenant


def documents_for_user(
    user, workspace: Workspace | None = None, membership: Membership | None = None
) -> QuerySet[Document]:
    """The documents of a workspace the person may read (default: their personal workspace); WorkspaceNotFound for
    one they are not a member of. `membership`: theirs, just read by the caller (tenants.permissions.membership_require
    takes it as `checked`)."""
    workspace = workspace or Workspace.objects.personal_for(user)
    membership_require(user, workspace, Action.READ, checked=membership)
    return Document.objects.filter(workspace=workspace).order_by("-created_at")


def document_get_for_user(
    user,
    document_id: int | str,
    workspace: Workspace | None = None,
    action: Action = Action.READ,
    membership: Membership | None = None,
) -> Document:
    """The workspace's document, for a person whose role allows `action` there: 404 for a workspace they are not in
    and for a document of another workspace (the same answer whether it exists elsewhere or not at all), 403 for a
    role that lacks the action. `membership`: as for documents_for_user."""
    workspace = workspace or Workspace.objects.personal_for(user)
    membership_require(user, workspace, action, checked=membership)
    try:
        return Document.objects.select_related("workspace").get(workspace=workspace, id=int(document_id))
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
        "format": document.file_format,
        "ocr_pages_total": document.ocr_pages_total,
        "ocr_pages_done": document.ocr_pages_done,
        "detail": _status_detail(document, waiting_for),
        "error": document.error_message if document.status == Document.Status.FAILED else "",
        "busy": document.is_busy,
        "created": document.created_at.isoformat(),
    }


def parse_limits() -> ParseLimits:
    """What a parser may take on, from settings (the pipeline and the viewer read files with the same limits)."""
    return ParseLimits(max_rows=settings.SPREADSHEET_MAX_ROWS, max_unpacked_bytes=settings.OFFICE_MAX_UNPACKED_BYTES)


# The viewer shows at most this much of a document's text (a long one still opens, at its start).
VIEWER_MAX_CHARACTERS = 2_000_000


def document_text_units(document: Document) -> list[dict]:
    """The document's units as the viewer shows them: number (what citations call `page`), location and text. Read
    from the stored file again: the same parser, so the same units the chunks were cut from."""
    from documents.formats import extract_units
    from documents.storage import local_path

    units, total = [], 0
    with local_path(document.file) as path:  # a temporary copy when the file is on object storage
        extracted = extract_units(path, document.file_format, parse_limits())
    for unit in extracted:
        units.append({"number": unit.page_number, "location": unit.location, "text": unit.text, "table": unit.table})
        total += len(unit.text)
        if total > VIEWER_MAX_CHARACTERS:
            break
    return units


def document_statuses_for_user(user, workspace: Workspace | None = None) -> list[dict]:
    """Every document of the workspace with its status, and for a queued one what it waits for."""
    workspace = workspace or Workspace.objects.personal_for(user)
    documents = list(documents_for_user(user, workspace))
    waiting = _queued_reasons(workspace, documents)
    return [document_status_payload(document, waiting.get(document.id, "")) for document in documents]


def _status_detail(document: Document, waiting_for: str) -> str:
    """One line under the status badge: where a busy document is in its work, in figures."""
    Status = Document.Status
    if document.status == Status.QUEUED:
        if document.ocr_pages_total and not waiting_for.startswith("Waiting for your database"):
            pages = f"{document.ocr_pages_total:,} scanned page{'s' if document.ocr_pages_total > 1 else ''}"
            return f"Waiting for the text-recognition worker ({pages} to read)."
        return waiting_for or document.error_message or "Waiting for a free worker."
    if document.status == Status.PARSING:
        if document.ocr_pages_total:
            return f"Reading scanned pages {document.ocr_pages_done:,}/{document.ocr_pages_total:,}"
        return "Reading the pages…" if document.file_format == Document.Format.PDF else "Reading the document…"
    if document.status == Status.EMBEDDING:
        if document.chunks_total:
            return f"Embedding {document.chunks_embedded:,}/{document.chunks_total:,} chunks"
        return "Splitting into chunks…"
    return ""


def _queued_reasons(workspace: Workspace, documents: list[Document]) -> dict[int, str]:
    """Why each queued document has not started: its database, the workspace's other documents (ingested a few at a
    time, so that one workspace's bulk upload cannot hold up everyone else's), or a retry after a temporary failure."""
    Status = Document.Status
    queued = sorted((d for d in documents if d.status == Status.QUEUED), key=lambda d: (d.created_at, d.id))
    if not queued:
        return {}
    vector_database = vector_database_for_tenant(workspace)
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
