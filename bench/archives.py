"""Tenant archives: backup and restore time and archive size, for an empty workspace and one of 1,000 pages.

The 1,000-page workspace holds one 1,000-page PDF (its file is in the archive) and two chunks a page with embeddings
of the configured dimension, written directly (ingesting them is the ingest section's measure, not this one's). A
backup is `archive_create` (main-database rows, `pg_dump`, encryption); a restore is `workspace_restore` from that
archive (decrypt and check, new database, `pg_restore`, migrate, check, files, switch, drop the old database).
"""

from __future__ import annotations

import random
import statistics

from django.conf import settings
from django.core.files.base import ContentFile
from django.utils import timezone

from bench.common import create_tenants, progress, remove_tenants, stopwatch
from bench.framework import Target
from documents.models import Document
from tenants import archives, services
from tenants.models import VectorDatabase
from tests.pdf_factory import text_pdf
from vectordb.chunks import ChunkRecord, chunks_replace
from vectordb.connections import get_registry

PREFIX = "bench-archive"
PAGES, QUICK_PAGES = 1000, 200
CHUNKS_PER_PAGE = 2
REPEATS, QUICK_REPEATS = 3, 1
TARGETS = [
    Target("restore_empty_seconds", at_most=3, unit=" s"),
    Target("restore_1000_pages_seconds", at_most=15, unit=" s"),
]


def run(quick: bool) -> dict:
    pages = QUICK_PAGES if quick else PAGES
    repeats = QUICK_REPEATS if quick else REPEATS
    remove_tenants(PREFIX)
    result: dict = {"pages": pages, "repeats": repeats}
    try:
        empty, full = create_tenants(PREFIX, 2)
        for row in (empty, full):
            if services.vector_database_provision(row.id).status != VectorDatabase.Status.READY:
                raise RuntimeError(f"tenant {row.tenant_key} could not be provisioned")
        progress(f"archives: filling a tenant with {pages} pages")
        _fill(full.workspace, pages)
        label = "1000_pages" if pages == PAGES else f"{pages}_pages"
        for name, row in (("empty", empty), (label, full)):
            progress(f"archives: backup and restore of the {name} tenant, {repeats} time(s)")
            result.update(_measure(name, row.workspace, repeats))
    finally:
        for row in VectorDatabase.objects.filter(workspace__owner__email__startswith=f"{PREFIX}-"):
            if row.workspace:
                archives.archives_erase(row.workspace)
                Document.objects.filter(workspace=row.workspace).delete()
        remove_tenants(PREFIX)
    if pages != PAGES:  # quick: the target's figure is scaled to the full size, marked as such
        result["restore_1000_pages_seconds"] = round(result[f"restore_{label}_seconds"] * PAGES / pages, 3)
    return result


def _fill(workspace, pages: int) -> None:
    texts = [f"Page {number}. The harbour log records tide {number % 12} and the lamp check at dawn." for number in
             range(1, pages + 1)]  # fmt: skip
    document = Document.objects.create(
        workspace=workspace,
        title="harbour log",
        file=ContentFile(text_pdf(texts), name="harbour-log.pdf"),
        original_filename="harbour-log.pdf",
        size_bytes=0,
        sha256="0" * 64,
        status=Document.Status.READY,
        progress=1.0,
        page_count=pages,
        chunk_count=pages * CHUNKS_PER_PAGE,
        embedding_model=settings.EMBEDDING_MODEL,
        ingested_at=timezone.now(),
    )
    generator = random.Random(22)
    records = [
        ChunkRecord(
            document_id=document.id,
            chunk_index=page * CHUNKS_PER_PAGE + part,
            content=f"{texts[page]} (part {part + 1})",
            first_page=page + 1,
            last_page=page + 1,
            embedding=[generator.uniform(-1, 1) for _ in range(settings.EMBEDDING_DIMENSIONS)],
        )
        for page in range(pages)
        for part in range(CHUNKS_PER_PAGE)
    ]
    with get_registry().connection(services.tenant_target(workspace)) as connection:
        chunks_replace(connection, document.id, records)


def _measure(name: str, workspace, repeats: int) -> dict:
    backups, restores, sizes = [], [], []
    for _ in range(repeats):
        with stopwatch() as watch:
            archive = archives.archive_create(workspace)
        backups.append(watch.seconds)
        sizes.append(archive.size_bytes)
        with stopwatch() as watch:
            outcome = archives.workspace_restore(workspace, archive=archive)
        restores.append(watch.seconds)
        if outcome.counts.get("embeddings", 0) != archive.chunks:
            raise RuntimeError(f"{name}: restored {outcome.counts} but archived {archive.chunks} chunks")
    return {
        f"backup_{name}_seconds": round(statistics.median(backups), 3),
        f"restore_{name}_seconds": round(statistics.median(restores), 3),
        f"archive_{name}_bytes": max(sizes),
    }
