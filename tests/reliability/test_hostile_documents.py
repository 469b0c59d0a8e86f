"""A file built to hurt costs its uploader a failed document, never a worker or other tenants' time: parsing runs in a
child process within a memory and a time limit, a document beyond the text or passage caps fails before any
embedding, a document whose runs keep dying fails after a bounded number of attempts, and each failure says why."""

from __future__ import annotations

import io
import json
import resource
import time
import zlib
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from config.settings_paths import BASE_DIR
from documents import services as document_services
from documents.bounded_process import MemoryLimitExceeded, TimeLimitExceeded, run_in_bounded_process
from documents.models import Document
from documents.parsing import NotAPdf, extract_pages, inspect_pdf
from tests.pdf_factory import text_pdf
from tests.reliability.test_abuse import provision, tenant_rows
from vectordb.embeddings import get_embedder

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

MiB = 1024 * 1024


def inflating_pdf(inflated_bytes: int) -> bytes:
    """One page whose content stream is a few hundred KB compressed and `inflated_bytes` once inflated: text shown
    over and over (a reader that inflates it in its own memory grows by that much)."""
    line = b"BT /F1 11 Tf 72 720 Td (The keeper cleans the lamp at dawn.) Tj ET\n"
    compressor = zlib.compressobj(1)  # fast to make; still about 1,000 to 1
    block = line * (MiB // len(line))
    parts = [compressor.compress(block) for _ in range(inflated_bytes // len(block))]
    stream = b"".join(parts) + compressor.flush()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
        b"/Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def peak_memory_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture
def owner_database(owner):
    from tenants import services as tenant_services

    database = provision(owner)
    yield database
    tenant_services.vector_database_deprovision(database.id)


# --- the child process ------------------------------------------------------------------------------------------------


def test_a_parser_in_the_bounded_process_returns_what_it_returns_in_process(tmp_path):
    path = tmp_path / "note.pdf"
    path.write_bytes(text_pdf(["The lamp is cleaned at dawn.", "The keeper writes the log at dusk."]))

    assert run_in_bounded_process(extract_pages, str(path), memory_limit_bytes=1024 * MiB, time_limit_seconds=60) == (
        extract_pages(path)
    )


def test_what_the_parser_raises_comes_back_as_it_was(tmp_path):
    path = tmp_path / "note.pdf"
    path.write_bytes(b"just some words, not a PDF at all\n")

    with pytest.raises(NotAPdf, match=r"^This file is not a PDF \(it looks like plain text\)\.$"):
        run_in_bounded_process(inspect_pdf, str(path), MiB, 10, memory_limit_bytes=1024 * MiB, time_limit_seconds=60)


def test_a_function_that_needs_more_memory_than_allowed_is_stopped():
    before = peak_memory_bytes()

    with pytest.raises(MemoryLimitExceeded):
        run_in_bounded_process(bytearray, 1024 * MiB, memory_limit_bytes=256 * MiB, time_limit_seconds=60)

    assert peak_memory_bytes() - before < 100 * MiB  # the gigabyte was asked for elsewhere


def test_a_function_that_runs_past_the_time_limit_is_stopped():
    started = time.monotonic()

    with pytest.raises(TimeLimitExceeded):
        run_in_bounded_process(time.sleep, 60, memory_limit_bytes=256 * MiB, time_limit_seconds=1)

    assert time.monotonic() - started < 15


# --- documents --------------------------------------------------------------------------------------------------------


def test_a_pdf_that_inflates_past_the_memory_limit_fails_with_the_limit_and_the_worker_keeps_its_memory(
    owner, owner_database, media_root, settings
):
    settings.PARSE_MEMORY_LIMIT_BYTES = 256 * MiB
    document = document_services.document_upload(
        owner, ContentFile(inflating_pdf(400 * MiB), name="bomb.pdf"), enqueue=False
    )
    get_embedder()  # loaded first: its own memory is not what this test measures
    before = peak_memory_bytes()

    document_services.document_ingest(document.id)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert document.error_message == (
        "Reading this document needed more than the 256 MiB of memory Silo allows; it may be damaged or built to "
        "inflate. Try saving it again from the program that made it."
    )
    assert (document.chunks_total, document.chunk_count) == (0, 0)
    assert tenant_rows(owner, "SELECT count(*) FROM embeddings") == [(0,)]
    assert peak_memory_bytes() - before < 150 * MiB


def test_the_ingest_command_parses_within_the_same_limits(owner, owner_database, media_root, settings, tmp_path):
    settings.PARSE_MEMORY_LIMIT_BYTES = 256 * MiB
    bomb = tmp_path / "bomb.pdf"
    bomb.write_bytes(inflating_pdf(400 * MiB))
    out = io.StringIO()

    with pytest.raises(CommandError, match="^1 of 1 files not ready$"):
        call_command("ingest", "--user", owner.email, str(bomb), "--json", stdout=out)

    [result] = json.loads(out.getvalue())["documents"]
    assert result["status"] == "failed"
    assert "more than the 256 MiB of memory Silo allows" in result["error"]


def test_a_document_over_the_text_cap_fails_while_parsing_before_any_embedding(
    owner, owner_database, media_root, settings
):
    settings.DOCUMENT_MAX_TEXT_CHARS = 100
    pages = ["The keeper cleans the lamp at dawn and writes the weather in the log. " * 2] * 2
    document = document_services.document_upload(owner, ContentFile(text_pdf(pages), name="long.pdf"), enqueue=False)

    document_services.document_ingest(document.id)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert document.error_message.startswith("This document has ")
    assert document.error_message.endswith(" characters of text; Silo accepts up to 100 per document.")
    assert (document.chunks_total, document.chunks_embedded) == (0, 0)  # embedding never began
    assert tenant_rows(owner, "SELECT count(*) FROM embeddings") == [(0,)]


def test_a_document_over_the_chunk_cap_fails_before_any_embedding(owner, owner_database, media_root, settings):
    settings.DOCUMENT_MAX_CHUNKS = 2
    settings.CHUNK_SIZE, settings.CHUNK_OVERLAP = 100, 0
    pages = [f"Page {n}: the keeper cleans the lamp at dawn and writes the weather in the log." for n in range(5)]
    document = document_services.document_upload(owner, ContentFile(text_pdf(pages), name="many.pdf"), enqueue=False)

    document_services.document_ingest(document.id)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert document.error_message.startswith("This document makes ")
    assert document.error_message.endswith(" passages; Silo accepts up to 2 per document.")
    assert (document.chunks_total, document.chunks_embedded) == (0, 0)
    assert tenant_rows(owner, "SELECT count(*) FROM embeddings") == [(0,)]


def test_a_document_whose_runs_never_finish_fails_after_the_bounded_number_of_attempts(
    owner, owner_database, media_root, settings
):
    """Each run that starts counts an attempt; a run whose worker dies never reports back. After
    INGEST_MAX_ATTEMPTS of them, the next delivery fails the document instead of dying the same way again."""
    settings.INGEST_MAX_ATTEMPTS = 3
    document = document_services.document_upload(
        owner, ContentFile(text_pdf(["The lamp is cleaned at dawn."]), name="note.pdf"), enqueue=False
    )
    Document.objects.filter(id=document.id).update(status=Document.Status.PARSING, attempts=3)

    document_services.document_ingest(document.id)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert document.error_message == (
        "Silo tried 3 times to process this document and each attempt was cut short; it may be damaged or too "
        "demanding to read. Try saving it again from the program that made it."
    )
    assert tenant_rows(owner, "SELECT count(*) FROM embeddings") == [(0,)]


def test_a_document_below_the_attempt_limit_is_ingested_and_reingest_starts_the_count_afresh(
    owner, owner_database, media_root, settings
):
    settings.INGEST_MAX_ATTEMPTS = 3
    document = document_services.document_upload(
        owner, ContentFile(text_pdf(["The lamp is cleaned at dawn."]), name="note.pdf"), enqueue=False
    )
    Document.objects.filter(id=document.id).update(attempts=2)  # two runs died before this one

    document_services.document_ingest(document.id)

    document.refresh_from_db()
    assert (document.status, document.attempts) == (Document.Status.READY, 3)
    document_services.document_reingest(owner, document.id)
    document.refresh_from_db()
    assert (document.status, document.attempts) == (Document.Status.QUEUED, 0)


def test_reingest_counts_against_the_hourly_upload_budget(owner, owner_database, media_root, settings):
    settings.UPLOAD_RATE_LIMIT_PER_HOUR = 2
    document = document_services.document_upload(
        owner, ContentFile(text_pdf(["The lamp is cleaned at dawn."]), name="note.pdf"), enqueue=False
    )
    document_services.document_ingest(document.id)
    client = Client()
    client.force_login(owner)

    first = client.post(reverse("document_reingest", args=[document.id]), HTTP_ACCEPT="application/json")
    Document.objects.filter(id=document.id).update(status=Document.Status.READY)  # as if its ingest had finished
    second = client.post(reverse("document_reingest", args=[document.id]), HTTP_ACCEPT="application/json")

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json() == {
        "error": "You have uploaded 2 documents this hour, the most Silo accepts; please try again later."
    }
    document.refresh_from_db()
    assert document.status == Document.Status.READY  # the refused re-ingest changed nothing


def test_provisioning_has_a_queue_of_its_own_that_ingest_never_uses(settings):
    from config.celery import app
    from config.run_local import provisioning_worker_command

    def queue_of(task_name: str) -> str:
        return app.amqp.router.route({}, task_name)["queue"].name

    provisioning = settings.CELERY_PROVISIONING_QUEUE
    assert provisioning != settings.CELERY_TASK_DEFAULT_QUEUE
    assert queue_of("tenants.tasks.provision_vector_database") == provisioning
    assert queue_of("documents.tasks.ingest_document") == settings.CELERY_TASK_DEFAULT_QUEUE
    # `make run` starts a worker that serves that queue alone.
    command = provisioning_worker_command("python", Path("celerybeat-schedule"))
    assert command[command.index("--queues") + 1] == provisioning
    # So does docker-compose (its queue names are the defaults: CELERY_QUEUE unset there).
    compose = (BASE_DIR / "docker-compose.yml").read_text()
    assert '"--queues", "silo-provisioning"' in compose
    assert '"--queues", "silo"]' in compose
