"""Upload, ingest (parse -> chunk -> embed -> write), delete and re-ingest documents.

The pipeline runs in a Celery task or in-process (the `ingest` command); both call `document_ingest`.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import psycopg
from django.conf import settings
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config.celery import enqueue
from documents import formats
from documents.bounded_process import (
    BoundedProcessFailed,
    MemoryLimitExceeded,
    TimeLimitExceeded,
    run_in_bounded_process,
)
from documents.chunking import Chunk, chunk_pages
from documents.formats import UnreadableDocument, detect_format, extract_units
from documents.models import Document
from documents.ocr import OcrOptions, TooManyScannedPages, ocr_pages, scanned_page_numbers, with_ocr_text
from documents.parsing import (
    BlankPdf,
    NoTextLayer,
    TextUnit,
    UnreadablePdf,
    extract_pages,
    inspect_pdf,
    page_count,
)
from documents.pdf_tables import split_tables
from documents.selectors import document_get_for_user, parse_limits
from documents.storage import local_path, region_of, with_region
from tenants import plans, usage
from tenants.models import Workspace
from tenants.permissions import Action, membership_require, workspace_writable_require
from tenants.plans import LimitReached
from tenants.selectors import vector_database_embedding_model
from tenants.services import (
    Tenant,
    TenantDatabaseNotReady,
    tenant_target,
    tenant_workspace,
    vector_database_embedding_model_switch,
)
from vectordb.advisory_locks import advisory_lock
from vectordb.chunks import ChunkRecord, chunks_delete, chunks_replace
from vectordb.connections import ConnectionCapacityExhausted, get_registry
from vectordb.embeddings import get_embedder
from vectordb.tenant_embedding_model import EmbeddingModel

logger = logging.getLogger(__name__)
Status = Document.Status

# Progress milestones within the pipeline (0..1); embedding takes the lion's share of the time.
PROGRESS_PARSED = 0.10
PROGRESS_EMBEDDED = 0.95
TEMPORARY_FAILURE_MESSAGE = "Silo could not process this document right now; it will try again shortly."
STORAGE_FAILURE_MESSAGE = "Silo could not store this document; we have logged the problem and will look into it."


class DocumentRejected(Exception):
    """An upload refused before it is stored; `str(error)` is the message for the user."""


class DocumentTooBig(UnreadablePdf):
    """Over one of the per-document caps (text, chunks, memory or time to parse); the message names the cap."""


class TransientIngestError(Exception):
    """Ingest failed for a reason a retry may fix (database restarting, connections exhausted)."""


class NeedsOcr(Exception):
    """The PDF has scanned pages and this worker does not OCR: the task hands the document to the OCR queue."""

    def __init__(self, scanned_pages: int):
        self.scanned_pages = scanned_pages
        super().__init__(f"{scanned_pages} scanned pages")


@dataclass
class StageTimings:
    parse: float = 0.0
    chunk: float = 0.0
    embed: float = 0.0
    write: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"parse": self.parse, "chunk": self.chunk, "embed": self.embed, "write": self.write}


@dataclass
class IngestReport:
    document: Document
    timings: StageTimings = field(default_factory=StageTimings)


# --- upload -------------------------------------------------------------------------------------------------------


def _title_from_filename(filename: str) -> str:
    stem = Path(filename).stem.replace("_", " ").strip()
    return (stem or "Untitled document")[:255]


def document_upload(
    uploader, uploaded_file: UploadedFile | File, enqueue: bool = True, workspace: Workspace | None = None
) -> Document:
    """Store a document uploaded to the workspace (default: the uploader's personal one) and queue its ingestion
    (unless the caller ingests in-process). Refuses a role that cannot upload, and what is plainly not an acceptable
    document (a format Silo does not read, a PDF over the page limit)."""
    workspace = workspace or Workspace.objects.personal_for(uploader)
    membership_require(uploader, workspace, Action.EDIT_DOCUMENTS)
    workspace_writable_require(workspace)  # not while a restore or move runs
    # Django's uploads and the commands' files always have them (the types allow None).
    assert uploaded_file.name is not None and uploaded_file.size is not None and uploaded_file.file is not None
    if uploaded_file.size == 0:
        raise DocumentRejected(f"{uploaded_file.name}: this file is empty.")
    if uploaded_file.size > settings.UPLOAD_MAX_BYTES:
        limit = settings.UPLOAD_MAX_BYTES / (1024 * 1024)
        shown = f"{limit:.0f} MB" if limit >= 10 else f"{limit:.1f} MB"
        raise DocumentRejected(f"{uploaded_file.name}: this file is larger than the {shown} Silo accepts.")
    uploaded_file.seek(0)
    try:
        file_format = detect_format(cast(BinaryIO, uploaded_file.file), uploaded_file.name)
    except UnreadableDocument as error:
        raise DocumentRejected(f"{uploaded_file.name}: {_sentence_inside(str(error))}") from None
    # milliseconds, and the user hears now rather than after the queue
    pages = page_count(cast(BinaryIO, uploaded_file.file)) if file_format == formats.PDF else None
    if pages is not None and pages > settings.UPLOAD_MAX_PAGES:
        raise DocumentRejected(
            f"{uploaded_file.name}: this PDF has {pages:,} pages; Silo accepts up to {settings.UPLOAD_MAX_PAGES:,}."
        )
    digest = hashlib.sha256()
    uploaded_file.seek(0)
    for block in uploaded_file.chunks():
        digest.update(block)
    uploaded_file.seek(0)
    _refuse_duplicate(workspace, uploaded_file.name, digest.hexdigest())
    _count_upload(uploader)  # only uploads that would be stored count against the hourly limit
    with transaction.atomic():
        # The workspace's row lock orders concurrent uploads of the same bytes: the second one sees the first.
        Workspace.objects.select_for_update().filter(id=workspace.id).exists()
        _refuse_duplicate(workspace, uploaded_file.name, digest.hexdigest())
        metered = _metered_pages(file_format, uploaded_file, pages)
        try:
            usage.upload_admit(workspace, metered)  # refused whole, before anything is stored; pages reserved
        except LimitReached as error:
            raise DocumentRejected(f"{uploaded_file.name}: {_sentence_inside(str(error))}") from None
        document = Document.objects.create(
            workspace=workspace,
            uploaded_by=uploader,
            file_format=file_format,
            title=_title_from_filename(uploaded_file.name),
            original_filename=Path(uploaded_file.name).name[:255],
            file=uploaded_file,
            size_bytes=uploaded_file.size,
            sha256=digest.hexdigest(),
            pages_metered=metered,
        )
        if enqueue:
            _enqueue_ingest(document)
    return document


def _metered_pages(file_format: str, uploaded_file: UploadedFile | File, pdf_pages: int | None) -> int:
    """The pages a document counts against the monthly allowance, known at upload: a PDF's pages, a deck's slides,
    and for other formats one page per 3,000 characters (an office file's text estimated from its XML; ingest
    corrects the figure once the text is parsed)."""
    if pdf_pages is not None:
        return pdf_pages
    uploaded_file.seek(0)
    try:
        if file_format == formats.PPTX:
            with zipfile.ZipFile(cast(BinaryIO, uploaded_file.file)) as package:
                return max(1, sum(1 for name in package.namelist() if _SLIDE_PART.fullmatch(name)))
        if file_format in {formats.DOCX, formats.XLSX}:
            # The sizes the archive declares first: a zip bomb is never unpacked, here in the web process least of all.
            formats.check_archive(cast(BinaryIO, uploaded_file.file), parse_limits())
            with zipfile.ZipFile(cast(BinaryIO, uploaded_file.file)) as package:
                characters = sum(
                    _xml_text_length(package, info)
                    for info in package.infolist()
                    if info.filename.endswith(".xml") and _TEXT_PARTS.match(info.filename)
                )
            return usage.pages_of_text(characters)
        characters = 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for block in uploaded_file.chunks():
            characters += len(decoder.decode(block))
        return usage.pages_of_text(characters)
    except (zipfile.BadZipFile, OSError, KeyError, UnreadableDocument):
        return 1  # the parser will give the reason; the upload counts a page meanwhile
    finally:
        uploaded_file.seek(0)


_SLIDE_PART = re.compile(r"ppt/slides/slide\d+\.xml")
_TEXT_PARTS = re.compile(r"(word/document|xl/sharedStrings|xl/worksheets/sheet\d+)\.xml$")
_XML_TAG = re.compile(rb"<[^>]*>")


def _xml_text_length(package: zipfile.ZipFile, member: zipfile.ZipInfo, block_size: int = 1 << 20) -> int:
    """About how many characters of text a part holds, read a block at a time (a tag cut by a block's edge counts a
    few characters too many: this is an estimate, and ingest measures the text itself)."""
    characters = 0
    with package.open(member) as part:
        while block := part.read(block_size):
            characters += len(_XML_TAG.sub(b"", block).decode("utf-8", errors="replace").strip())
    return characters


def _sentence_inside(message: str) -> str:
    """A parser's sentence after "name: ": "This file..." becomes "this file...", names ("Silo") stay as they are."""
    return "t" + message[1:] if message.startswith("This ") else message


def _refuse_duplicate(workspace: Workspace, filename: str, sha256: str) -> None:
    """The same bytes twice would only repeat every passage in the answers: say where the first copy is."""
    existing = Document.objects.filter(workspace=workspace, sha256=sha256).order_by("created_at").first()
    if existing is None:
        return
    already = f"{Path(filename).name}: this workspace already has this file as “{existing.title}”"
    if existing.status == Status.FAILED:
        raise DocumentRejected(
            f"{already}, which could not be processed ({existing.error_message or 'no reason recorded'}). "
            "Delete it from the documents to upload it again."
        )
    if existing.is_busy:
        raise DocumentRejected(f"{already}; it is being processed and will be ready shortly.")
    raise DocumentRejected(f"{already}; it is in the documents, ready to chat with.")


def _count_upload(owner) -> None:
    """At most UPLOAD_RATE_LIMIT_PER_HOUR uploads per user in each clock hour."""
    from django.core.cache import cache

    key = f"uploads:{owner.id}:{timezone.now():%Y%m%d%H}"
    cache.add(key, 0, timeout=3600)
    if cache.incr(key) > settings.UPLOAD_RATE_LIMIT_PER_HOUR:
        raise DocumentRejected(
            f"You have uploaded {settings.UPLOAD_RATE_LIMIT_PER_HOUR} documents this hour, the most Silo accepts; "
            "please try again later."
        )


def _enqueue_ingest(document: Document) -> None:
    document_id = document.id
    transaction.on_commit(lambda: enqueue("documents.tasks.ingest_document", document_id))


# --- ingest -------------------------------------------------------------------------------------------------------


def _document_lock(document_id: int):
    """One pipeline per document at a time; a worker that dies loses the lock, and the re-delivered task takes over."""
    return advisory_lock(f"document-ingest:{document_id}", wait=False)


def _update(document: Document, **fields) -> None:
    fields["updated_at"] = timezone.now()
    Document.objects.filter(id=document.id).update(**fields)
    for name, value in fields.items():
        if not hasattr(value, "resolve_expression"):
            setattr(document, name, value)


def _records(document: Document, chunks: list[Chunk], vectors: list[list[float]]) -> list[ChunkRecord]:
    return [
        ChunkRecord(
            document_id=document.id,
            chunk_index=chunk.index,
            content=chunk.text,
            first_page=chunk.first_page,
            last_page=chunk.last_page,
            embedding=vector,
            metadata=_chunk_metadata(document, chunk),
        )
        for chunk, vector in zip(chunks, vectors, strict=True)
    ]


def _chunk_metadata(document: Document, chunk: Chunk) -> dict:
    metadata: dict = {"title": document.title, "section": chunk.section}
    if chunk.location:
        metadata["location"] = chunk.location
    if chunk.ocr:
        metadata["ocr"] = True  # read from a scanned page: the citation says so
    return metadata


def document_ingest(
    document_id: int, on_progress: Callable[[Document], None] | None = None, allow_ocr: bool = True
) -> IngestReport:
    """Run the whole pipeline for one document. Idempotent: a re-run replaces the document's chunks atomically.

    Raises TenantDatabaseNotReady (try later) and TransientIngestError (retry); a bad file ends `failed` with a
    reason. With `allow_ocr` False (the main queue's workers), a PDF with scanned pages raises NeedsOcr and goes back
    to `queued`, for the OCR queue.
    """
    report = IngestReport(document=Document.objects.select_related("workspace").get(id=document_id))
    document = report.document
    with _document_lock(document_id) as acquired:
        if not acquired:
            logger.info("document %s is being ingested by another worker", document_id)
            return report
        document.refresh_from_db()
        if document.status == Status.READY:
            return report
        target = tenant_target(document.workspace)  # TenantDatabaseNotReady propagates: the task waits for it
        if document.attempts >= settings.INGEST_MAX_ATTEMPTS:
            # Every earlier run started and never reported back: its worker died (killed for memory, or the
            # machine went away). Another delivery would only do the same again.
            _update(document, status=Status.FAILED, error_message=_attempts_exhausted_message(), progress=0.0)
            logger.error("document %s failed: %s runs never finished", document_id, document.attempts)
            _notify(on_progress, document)
            return report
        _update(
            document,
            status=Status.PARSING,
            progress=0.01,
            error_message="",
            chunks_total=0,
            chunks_embedded=0,
            ocr_pages_total=0,
            ocr_pages_done=0,
            attempts=F("attempts") + 1,
        )
        _notify(on_progress, document)
        try:
            _run_pipeline(document, target, report.timings, on_progress, allow_ocr)
        except NeedsOcr as needs:
            _update(document, status=Status.QUEUED, progress=0.0, ocr_pages_total=needs.scanned_pages)
            raise
        except UnreadablePdf as error:
            _update(document, status=Status.FAILED, error_message=str(error), progress=0.0)
            logger.info("document %s rejected: %s", document_id, type(error).__name__)
        except (psycopg.OperationalError, ConnectionCapacityExhausted) as error:
            # An interruption we saw and handled is no lost attempt: only runs that never report back count.
            _update(document, status=Status.QUEUED, error_message=TEMPORARY_FAILURE_MESSAGE, attempts=F("attempts") - 1)
            logger.warning("ingest of document %s interrupted: %s", document_id, type(error).__name__)
            raise TransientIngestError(str(error)) from error
        except psycopg.Error:  # the tenant database refused the chunks (schema, dimension): no retry fixes that
            _update(document, status=Status.FAILED, error_message=STORAGE_FAILURE_MESSAGE, progress=0.0)
            logger.exception("ingest of document %s failed in tenant database %s", document_id, target.key)
        _notify(on_progress, document)
    return report


def _notify(on_progress, document) -> None:
    if on_progress:
        on_progress(document)


def _run_pipeline(document, target, timings: StageTimings, on_progress, allow_ocr: bool = True) -> None:
    embedder = get_embedder()
    mismatch = _embedding_model_mismatch(document.workspace, embedder)
    if mismatch:
        # An operator's job, not the user's: vectors of two models in one table would make search return nonsense.
        _update(document, status=Status.FAILED, error_message=mismatch, progress=0.0)
        logger.error("document %s not ingested: %s", document.id, mismatch)
        return
    started = time.perf_counter()
    with local_path(document.file) as path:  # a temporary copy when the file is on object storage
        pages = _parse(document, path, allow_ocr, on_progress)
    text_chars = sum(len(page.text) for page in pages)
    limits = plans.workspace_limits(document.workspace_id)  # the plan's caps (the settings' by default)
    max_text_chars = limits["document_max_text_chars"]
    if max_text_chars is not None and text_chars > max_text_chars:
        raise DocumentTooBig(
            f"This document has {text_chars:,} characters of text; Silo accepts up to {max_text_chars:,} per document."
        )
    if document.file_format not in {formats.PDF, formats.PPTX}:
        try:  # its pages were estimated at upload: now the text is known (before any embedding)
            _pages_remeasure(document, usage.pages_of_text(text_chars))
        except LimitReached as error:
            raise DocumentTooBig(str(error)) from None
    timings.parse = time.perf_counter() - started
    # A PDF page with a table is several units: the count is of pages (and of units for other formats).
    _update(document, page_count=len({page.page_number for page in pages}), progress=PROGRESS_PARSED)
    _notify(on_progress, document)

    started = time.perf_counter()
    chunks = chunk_pages(pages, settings.CHUNK_SIZE, settings.CHUNK_OVERLAP)
    timings.chunk = time.perf_counter() - started
    max_chunks = limits["document_max_chunks"]
    if max_chunks is not None and len(chunks) > max_chunks:  # checked before any embedding: the cost lies there
        raise DocumentTooBig(
            f"This document makes {len(chunks):,} passages; Silo accepts up to {max_chunks:,} per document."
        )

    _update(document, status=Status.EMBEDDING, chunks_total=len(chunks), chunks_embedded=0)
    _notify(on_progress, document)
    vectors: list[list[float]] = []
    batch_size = settings.EMBEDDING_BATCH_SIZE or embedder.pipeline_batch_size
    started = time.perf_counter()
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        vectors += embedder.embed_documents([chunk.text for chunk in batch])
        done = len(vectors) / len(chunks)
        _update(
            document,
            progress=PROGRESS_PARSED + (PROGRESS_EMBEDDED - PROGRESS_PARSED) * done,
            chunks_embedded=len(vectors),
        )
        _notify(on_progress, document)
    timings.embed = time.perf_counter() - started

    started = time.perf_counter()
    with get_registry().connection(target) as tenant_connection:
        chunks_replace(tenant_connection, document.id, _records(document, chunks, vectors))
        if not Document.objects.filter(id=document.id).exists():  # deleted while we worked: leave nothing behind
            chunks_delete(tenant_connection, document.id)
            return
    timings.write = time.perf_counter() - started
    _update(
        document,
        status=Status.READY,
        progress=1.0,
        chunk_count=len(chunks),
        embedding_model=embedder.model_name,
        ingested_at=timezone.now(),
        error_message="",
    )


def _pages_remeasure(document: Document, measured: int) -> None:
    """The pages the upload reserved, corrected to the parsed text's: under the document's row lock and conditional
    on its recorded figure, so a rerun after a crash counts nothing twice."""
    if document.pages_metered == measured:  # the common case (as loaded when the run started): nothing to lock
        return
    with transaction.atomic():
        reserved = Document.objects.select_for_update().filter(id=document.id).values_list("pages_metered", flat=True)
        if not reserved or reserved[0] == measured:
            return
        usage.pages_change(document.workspace_id, measured - reserved[0], measured)
        Document.objects.filter(id=document.id).update(pages_metered=measured)
        document.pages_metered = measured


def parse_in_bounded_process(parse: Callable[..., list[TextUnit]], *arguments: Any) -> list[TextUnit]:
    """`parse(*arguments)` in a child process within PARSE_MEMORY_LIMIT_BYTES and PARSE_TIME_LIMIT_SECONDS, so that a file
    built to inflate or to spin costs a failed document, not a worker. Any parser of a file into located text units fits."""
    memory_limit = settings.PARSE_MEMORY_LIMIT_BYTES
    time_limit = settings.PARSE_TIME_LIMIT_SECONDS
    try:
        return run_in_bounded_process(parse, *arguments, memory_limit_bytes=memory_limit, time_limit_seconds=time_limit)
    except TimeLimitExceeded:
        raise DocumentTooBig(
            f"Reading this document took longer than {time_limit:g} seconds, the most Silo allows; it may be damaged "
            "or built to be slow to read. Try saving it again from the program that made it."
        ) from None
    except (MemoryLimitExceeded, BoundedProcessFailed) as error:
        if not isinstance(error, MemoryLimitExceeded):
            logger.warning("parser child process died: %s", error)
        raise DocumentTooBig(
            f"Reading this document needed more than the {_size(memory_limit)} of memory Silo allows; it may be "
            "damaged or built to inflate. Try saving it again from the program that made it."
        ) from None


def _size(size_bytes: int) -> str:
    gibibytes = size_bytes / 1024**3
    return f"{gibibytes:g} GiB" if gibibytes >= 1 else f"{size_bytes / 1024**2:,.0f} MiB"


def _attempts_exhausted_message() -> str:
    return (
        f"Silo tried {settings.INGEST_MAX_ATTEMPTS} times to process this document and each attempt was cut short; "
        "it may be damaged or too demanding to read. Try saving it again from the program that made it."
    )


def ocr_options() -> OcrOptions:
    return OcrOptions(
        dpi=settings.OCR_DPI, language=settings.OCR_LANGUAGE, page_segmentation=settings.OCR_PAGE_SEGMENTATION
    )


def _parse(document: Document, path: str, allow_ocr: bool, on_progress) -> list[TextUnit]:
    """The document's located text units; scanned PDF pages OCR'd (NeedsOcr when this worker may not)."""
    if document.file_format != formats.PDF:
        return parse_in_bounded_process(extract_units, path, document.file_format, parse_limits())
    inspect_pdf(path, max_bytes=settings.UPLOAD_MAX_BYTES, max_pages=settings.UPLOAD_MAX_PAGES)
    pages = parse_in_bounded_process(extract_pages, path, False)
    scanned = scanned_page_numbers(path, pages)
    if not scanned:
        if not any(page.text for page in pages):
            raise BlankPdf()
        return split_tables(path, pages)
    if len(scanned) > settings.OCR_MAX_PAGES:
        raise TooManyScannedPages(
            f"This PDF has {len(scanned):,} scanned pages; Silo reads up to {settings.OCR_MAX_PAGES:,} scanned "
            "pages in one document. Split it into smaller PDFs and upload them."
        )
    if not allow_ocr:
        raise NeedsOcr(len(scanned))

    def page_done(done: int, total: int) -> None:
        _update(document, ocr_pages_done=done, progress=0.01 + (PROGRESS_PARSED - 0.01) * done / total)
        _notify(on_progress, document)

    _update(document, ocr_pages_total=len(scanned), ocr_pages_done=0)
    _notify(on_progress, document)
    pages = with_ocr_text(pages, ocr_pages(path, scanned, ocr_options(), on_page=page_done))
    if not any(page.text for page in pages):
        raise NoTextLayer("This PDF's pages are images in which Silo could read no text.")
    return split_tables(path, pages)  # the pages with a text layer


def document_mark_failed(document_id: int, message: str) -> None:
    Document.objects.filter(id=document_id).exclude(status=Status.READY).update(
        status=Status.FAILED, error_message=message, updated_at=timezone.now()
    )


# --- delete and re-ingest -------------------------------------------------------------------------------------------


def document_delete(user, document_id: int | str, workspace: Workspace | None = None) -> None:
    """Remove the document's chunks from the workspace's database, its file, then its row (editors and above)."""
    document = document_get_for_user(user, document_id, workspace, Action.EDIT_DOCUMENTS)
    workspace_writable_require(document.workspace_id)
    try:
        target = tenant_target(document.workspace)
    except TenantDatabaseNotReady:
        target = None  # no database, so no chunks to remove
    if target is not None:
        with get_registry().connection(target) as tenant_connection:
            chunks_delete(tenant_connection, document.id)
    document.file.delete(save=False)
    document.delete()


def document_reingest(user, document_id: int | str, workspace: Workspace | None = None) -> Document:
    """Rebuild a document's chunks (e.g. after the embedding model changed); editors and above."""
    document = document_get_for_user(user, document_id, workspace, Action.EDIT_DOCUMENTS)
    workspace_writable_require(document.workspace_id)
    if document.is_busy:
        return document
    _count_upload(user)  # the same work as an upload, and the same budget: DocumentRejected past it
    with transaction.atomic():
        _update(
            document,
            status=Status.QUEUED,
            progress=0.0,
            error_message="",
            chunk_count=0,
            chunks_total=0,
            chunks_embedded=0,
            attempts=0,
        )
        _enqueue_ingest(document)
    return document


def document_files_move_region(tenant: Tenant, region: str) -> int:
    """Move the workspace's files to `region` (its bucket when uploads are on object storage), when the workspace
    moves there. Copy, switch the row, then delete the old copy: a reader sees one file or the other, never none; a run
    that stops half way is finished by the next. Returns how many files moved."""
    moved = 0
    workspace = tenant_workspace(tenant)
    for document in Document.objects.filter(workspace=workspace).order_by("id"):
        old_name = document.file.name or ""
        if not old_name or region_of(old_name) == region:
            continue
        storage = document.file.storage
        with storage.open(old_name, "rb") as source:
            new_name = storage.save(with_region(old_name, region), source)
        if Document.objects.filter(id=document.id, file=old_name).update(file=new_name):
            storage.delete(old_name)
            moved += 1
        else:  # the document changed meanwhile (deleted): the copy is the one to drop
            storage.delete(new_name)
    logger.info("moved %d file(s) of workspace %s to region %s", moved, workspace.id, region)
    return moved


def documents_erase_for_workspace(workspace: Workspace) -> int:
    """Called while a workspace is erased (its database is already gone): delete every file and row."""
    documents = list(Document.objects.filter(workspace=workspace))
    for document in documents:
        document.file.delete(save=False)
    Document.objects.filter(workspace=workspace).delete()
    return len(documents)


# --- changing the embedding model -----------------------------------------------------------------------------------


def _embedding_model_mismatch(workspace: Workspace, embedder) -> str:
    """Why this tenant's documents cannot be embedded with `embedder` now ("" when they can).

    The registry records the model the tenant database was filled with; vectors of two models are never comparable,
    so ingest stops rather than mixing them. An empty record (a row from before models were recorded) is no evidence
    of a mismatch.
    """
    model, dimensions = vector_database_embedding_model(workspace)
    if not model or (model == embedder.model_name and dimensions in (None, embedder.dimensions)):
        return ""
    return (
        f"Silo's embedding model changed from {model} to {embedder.model_name}, so this document cannot be processed "
        f"until an operator runs `manage.py reembed --workspace {workspace.label}`."
    )


@dataclass
class ReembedReport:
    workspace: Workspace
    previous_model: EmbeddingModel | None  # what the tenant database recorded before the run
    model: EmbeddingModel  # the configured model and dimension, recorded now
    model_changed: bool
    chunks_deleted: int = 0
    ready: list[int] = field(default_factory=list)  # document ids
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # being ingested by a worker, or deleted, meanwhile


def documents_reembed(tenant: Tenant, on_document: Callable[[Document], None] | None = None) -> ReembedReport:
    """Re-ingest every ready or failed document of the workspace with the configured embedding model.

    When the tenant database holds another model's embeddings (or its column has another dimension), every chunk is
    deleted, the column changed to the configured dimension and the new model recorded before anything is re-embedded:
    two models' vectors are never mixed. Documents a worker is ingesting right now are left to it. Running it again
    finishes an interrupted run. Raises TenantDatabaseNotReady when the tenant has no ready database.
    """
    get_embedder()  # a model that cannot be loaded (no API key) fails here, before anything is changed
    # Only after this may ingest use the configured model (see _embedding_model_mismatch).
    workspace = tenant_workspace(tenant)
    switch = vector_database_embedding_model_switch(workspace)
    changed = switch.changed
    report = ReembedReport(
        workspace=workspace,
        previous_model=switch.previous,
        model=EmbeddingModel(settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSIONS),
        model_changed=changed,
        chunks_deleted=switch.chunks_deleted,
    )
    settled = [Status.READY, Status.FAILED]
    reset = {"chunk_count": 0} if changed else {}  # after a change the old chunks are gone
    document_ids = (
        Document.objects.filter(workspace=workspace, status__in=settled).order_by("id").values_list("id", flat=True)
    )
    for document_id in list(document_ids):
        claimed = Document.objects.filter(id=document_id, status__in=settled).update(
            status=Status.QUEUED, progress=0.0, error_message="", attempts=0, updated_at=timezone.now(), **reset
        )
        if not claimed:
            report.skipped.append(document_id)
            continue
        try:
            document_ingest(document_id)
        except TransientIngestError:
            document_mark_failed(document_id, TEMPORARY_FAILURE_MESSAGE)  # the next run picks it up again
        except Document.DoesNotExist:
            report.skipped.append(document_id)
            continue
        document = Document.objects.filter(id=document_id).first()
        if document is None:
            report.skipped.append(document_id)
            continue
        {Status.READY: report.ready, Status.FAILED: report.failed}.get(Status(document.status), report.skipped).append(
            document_id
        )
        _notify(on_document, document)
    return report
