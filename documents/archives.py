"""The documents' share of a tenant archive (tenants.archives): their rows in the main database and their files.

A restore puts back exactly the archived documents, with the ids their chunks in the tenant database carry: documents
made since are gone (rows and files), those deleted since are back. Files are written under new names before the
switch; the old ones go only after it, so a failure half way leaves the workspace as it was.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.core.files import File
from django.utils.dateparse import parse_datetime

from documents.formats import EXTENSIONS
from documents.models import Document
from documents.storage import upload_name
from tenants.archive_files import OpenedArchive
from tenants.archives import ArchivePart, archive_part_register
from tenants.models import User, Workspace
from tenants.selectors import workspace_region
from tenants.services import tenant_target
from vectordb.chunks import chunks_delete
from vectordb.connections import get_registry

logger = logging.getLogger(__name__)

# Copied as they are; the rest (workspace, file, uploader, timestamps) is handled on its own.
_FIELDS = (
    "id", "title", "original_filename", "size_bytes", "sha256", "file_format", "status", "progress", "page_count",
    "chunk_count", "chunks_total", "chunks_embedded", "ocr_pages_total", "ocr_pages_done", "error_message",
    "embedding_model", "attempts",
)  # fmt: skip
_TIMES = ("created_at", "updated_at", "ingested_at")
BUSY = (Document.Status.QUEUED, Document.Status.PARSING, Document.Status.EMBEDDING)
INTERRUPTED = "Its processing was interrupted when the workspace was archived: re-ingest it."
NOT_YET_INGESTED = "It was not ingested yet at the moment the workspace was restored to: re-ingest it."


def _file_member(document: Document) -> str:
    return f"files/{document.id}.{EXTENSIONS.get(document.file_format, 'bin')}"


def documents_dump(workspace: Workspace, folder: Path) -> dict:
    rows = []
    for document in Document.objects.filter(workspace=workspace).select_related("uploaded_by").order_by("id"):
        row = {name: getattr(document, name) for name in _FIELDS}
        row |= {name: (value.isoformat() if (value := getattr(document, name)) else None) for name in _TIMES}
        row["uploaded_by_email"] = document.uploaded_by.email if document.uploaded_by else None
        row["file"] = None
        if document.file.name:
            member = _file_member(document)
            (folder / "files").mkdir(exist_ok=True)
            with document.file.open("rb") as source, open(folder / member, "wb") as target:
                for block in source.chunks():
                    target.write(block)
            row["file"] = member
        rows.append(row)
    return {"documents": rows}


@dataclass
class StagedDocuments:
    workspace: Workspace
    rows: list[Document]
    new_files: list[str] = field(default_factory=list)  # written by stage: removed on abort
    old_files: list[str] = field(default_factory=list)  # the replaced documents': removed after the switch
    document_ids: dict[int, int] = field(default_factory=dict)
    imported: bool = False

    def commit(self) -> None:
        if self.imported:  # made by stage, in a workspace no one sees yet
            return
        current = Document.objects.filter(workspace=self.workspace)
        self.old_files = [name for name in current.values_list("file", flat=True) if name]
        current.delete()
        # auto_now/auto_now_add stamp them with today on the way in: the archived times are the truth.
        times = {row.id: (row.created_at, row.updated_at) for row in self.rows}
        Document.objects.bulk_create(self.rows)
        for document_id, (created_at, updated_at) in times.items():
            Document.objects.filter(id=document_id).update(created_at=created_at, updated_at=updated_at)

    def finish(self) -> None:
        storage = Document._meta.get_field("file").storage
        for name in self.old_files:
            storage.delete(name)

    def abort(self) -> None:
        storage = Document._meta.get_field("file").storage
        for name in self.new_files:
            storage.delete(name)
        if self.imported:
            Document.objects.filter(workspace=self.workspace).delete()


def documents_stage(workspace: Workspace, data: dict, folder: Path, imported: bool) -> StagedDocuments:
    """Write the archived files under new names and build the rows; an import gives them new ids now (its chunks
    are renumbered to follow) and keeps no uploader but the people it can find by email."""
    storage = Document._meta.get_field("file").storage
    region = workspace_region(workspace.id)
    emails = {row.get("uploaded_by_email") for row in data.get("documents", [])} - {None}
    people = dict(User.objects.filter(email__in=emails).values_list("email", "id"))
    staged = StagedDocuments(workspace=workspace, rows=[], imported=imported)
    try:
        for row in data.get("documents", []):
            document = Document(workspace=workspace, **{name: row[name] for name in _FIELDS if name in row})
            for name in _TIMES:
                setattr(document, name, parse_datetime(row[name]) if row.get(name) else None)
            document.uploaded_by_id = people.get(row.get("uploaded_by_email"))
            if document.status in BUSY:
                document.status, document.error_message = Document.Status.FAILED, INTERRUPTED
            if row.get("file"):
                extension = EXTENSIONS.get(document.file_format, "bin")
                with open(folder / row["file"], "rb") as source:
                    name = storage.save(upload_name(region, workspace.id, uuid.uuid4().hex, extension), File(source))
                staged.new_files.append(name)
                document.file.name = name
            if imported:
                document.id = None
            staged.rows.append(document)
        if imported:  # ids now, so the tenant database's chunks can be renumbered before anyone sees them
            old_ids = [row["id"] for row in data.get("documents", [])]
            Document.objects.bulk_create(staged.rows)
            staged.document_ids = {old: row.id for old, row in zip(old_ids, staged.rows, strict=True)}
            staged.rows = []
        else:
            staged.document_ids = {row.id: row.id for row in staged.rows}
    except (OSError, KeyError, ValueError, TypeError):
        staged.abort()
        raise
    return staged


def documents_agree(workspace: Workspace, present: set[int], at: datetime, opened: OpenedArchive | None) -> None:
    """After the workspace's database was taken back to `at` on its own (Neon's point in time): documents made since
    go (rows and files); documents deleted since, whose chunks are back, come back from the newest archive before
    `at` (their chunks go when no archive has them); ready documents whose chunks the database did not hold yet are
    marked to re-ingest."""
    storage = Document._meta.get_field("file").storage
    later = list(Document.objects.filter(workspace=workspace, created_at__gt=at))
    for document in later:
        if document.file.name:
            storage.delete(document.file.name)
    Document.objects.filter(id__in=[document.id for document in later]).delete()
    missing = present - set(Document.objects.filter(workspace=workspace).values_list("id", flat=True))
    if missing and opened is not None:
        archived = [row for row in opened.main_rows()["parts"].get("documents", {}).get("documents", [])
                    if row["id"] in missing]  # fmt: skip
        staged = documents_stage(workspace, {"documents": archived}, opened.folder, False)
        times = {row.id: (row.created_at, row.updated_at) for row in staged.rows}
        Document.objects.bulk_create(staged.rows)
        for document_id, (created_at, updated_at) in times.items():
            Document.objects.filter(id=document_id).update(created_at=created_at, updated_at=updated_at)
        missing -= set(times)
    if missing:
        logger.warning("workspace %s: no archive holds documents %s; their chunks go", workspace.id, sorted(missing))
        with get_registry().connection(tenant_target(workspace)) as connection:
            for document_id in missing:
                chunks_delete(connection, document_id)
    Document.objects.filter(workspace=workspace, status=Document.Status.READY).exclude(id__in=present).update(
        status=Document.Status.FAILED, error_message=NOT_YET_INGESTED, chunk_count=0
    )


def documents_busy(workspace: Workspace) -> str:
    busy = Document.objects.filter(workspace=workspace, status__in=BUSY).count()
    if not busy:
        return ""
    return f"{busy} document(s) of this workspace are being processed; try again when they are ready."


def documents_relocate(workspace: Workspace, region: str) -> int:
    from documents.services import document_files_move_region

    return document_files_move_region(workspace, region)


archive_part_register(
    ArchivePart(
        name="documents",
        dump=documents_dump,
        stage=documents_stage,
        busy=documents_busy,
        relocate=documents_relocate,
        agree=documents_agree,
    )
)
