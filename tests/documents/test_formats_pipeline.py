"""Office files, text files and scans through the whole pipeline: upload, parse (OCR on its own queue), chunk, embed,
write; citations carry the location a person understands; the viewer gets the text, never the file as a page."""

from __future__ import annotations

import io
import json
import time

import psycopg
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from chat.services import chunks_retrieve
from config.celery import app as celery_app
from documents import services
from documents.models import Document
from tests.document_factory import docx_bytes, mixed_pdf, pptx_bytes
from tests.documents.test_formats import FERRY, HARBOUR_DOCX
from tests.documents.test_pipeline import _post_files, _tenant_dsn, owner_database  # noqa: F401 (a fixture)
from tests.helpers import stored_files

CELERY_OCR_TIMEOUT_SECONDS = 120
HARBOUR_TEXT = "The harbour lamp is cleaned at dawn by the keeper, who writes the tide times in a ledger."
LENS_TEXT = "The lighthouse lens has brass fittings that the keeper polishes every week."


def _upload(owner, name: str, content: bytes) -> Document:
    return services.document_upload(owner, SimpleUploadedFile(name, content), enqueue=False)


def _chunk_metadata(vector_database, document_id: int) -> list[tuple[int, int, dict]]:
    with psycopg.connect(_tenant_dsn(vector_database)) as connection:
        return connection.execute(
            "SELECT first_page, last_page, metadata FROM embeddings WHERE document_id = %s ORDER BY chunk_index",
            [document_id],
        ).fetchall()


@pytest.mark.django_db
def test_a_word_document_is_ingested_and_its_passages_are_cited_by_heading(client, owner, owner_database, media_root):
    document = _upload(owner, "Harbour_rules.docx", docx_bytes(HARBOUR_DOCX))
    assert document.file_format == "docx"
    assert document.file.name.endswith(".docx")

    services.document_ingest(document.id)

    document.refresh_from_db()
    assert (document.status, document.error_message) == ("ready", "")
    rows = _chunk_metadata(owner_database, document.id)
    assert [(first, last, metadata["location"]) for first, last, metadata in rows] == [
        (1, 1, "Beginning"),
        (2, 2, "Lighthouse"),
        (3, 3, "Lighthouse > Tides"),
        (4, 4, "Lighthouse > Tides"),
    ]
    citations = chunks_retrieve(owner, "When is high water on Tuesday?", k=1)
    assert [(c.title, c.location, c.page, c.ocr) for c in citations] == [
        ("Harbour rules", "Lighthouse > Tides", 3, False)
    ]
    assert "Tuesday | 06:55 | 13:05" in citations[0].text


@pytest.mark.django_db
def test_the_viewer_gets_a_documents_text_units_and_the_file_only_downloads(client, owner, stranger, owner_database):
    document = _upload(owner, "deck.pptx", pptx_bytes([{"title": "Harbour duties", "bullets": ["Clean the lamp"]}]))
    services.document_ingest(document.id)
    client.force_login(owner)

    text = client.get(reverse("document_text", args=[document.id]))
    original = client.get(reverse("document_file", args=[document.id]))

    assert text.status_code == 200
    assert text.json() == {
        "format": "pptx",
        "units": [{"number": 1, "location": "Slide 1", "text": "Harbour duties\n\nClean the lamp", "table": False}],
    }
    assert original["Content-Type"] == "application/octet-stream"
    assert original["Content-Disposition"] == f'attachment; filename="document-{document.id}.pptx"'
    assert original["X-Content-Type-Options"] == "nosniff"
    client.force_login(stranger)
    assert client.get(reverse("document_text", args=[document.id])).status_code == 404


@pytest.mark.django_db
def test_a_file_of_an_unreadable_kind_is_refused_at_upload_with_the_formats_silo_reads(client, owner, media_root):
    client.force_login(owner)

    response = _post_files(client, SimpleUploadedFile("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(64)))

    assert response.status_code == 400
    assert response.json()["errors"] == [
        "photo.png: this file is a PNG image; Silo reads scanned pages inside PDFs: save or print the image as a PDF."
    ]
    assert Document.objects.count() == 0
    assert stored_files(media_root) == []


# -- scanned pages ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_main_queue_worker_hands_a_scan_to_the_ocr_queue_which_reads_only_its_scanned_pages(
    owner, owner_database, media_root
):
    scan = mixed_pdf([(HARBOUR_TEXT, False), (FERRY, True), (LENS_TEXT, True)])
    document = _upload(owner, "scan.pdf", scan)

    with pytest.raises(services.NeedsOcr):
        services.document_ingest(document.id, allow_ocr=False)
    document.refresh_from_db()
    payload = {"status": document.status, "ocr_pages_total": document.ocr_pages_total}
    assert payload == {"status": "queued", "ocr_pages_total": 2}
    assert _chunk_metadata(owner_database, document.id) == []

    seen: list[tuple[str, int, int]] = []
    services.document_ingest(
        document.id, on_progress=lambda d: seen.append((d.status, d.ocr_pages_done, d.ocr_pages_total))
    )

    document.refresh_from_db()
    assert (document.status, document.page_count, document.ocr_pages_done) == ("ready", 3, 2)
    assert [entry for entry in seen if entry[1]][:2] == [("parsing", 1, 2), ("parsing", 2, 2)]
    rows = _chunk_metadata(owner_database, document.id)
    assert [(first, last, metadata.get("ocr", False)) for first, last, metadata in rows] == [(1, 3, True)]
    citations = chunks_retrieve(owner, "When does the ferry leave the north pier?", k=1)
    assert citations[0].ocr is True and FERRY in citations[0].text and "location" not in rows[0][2]


@pytest.mark.django_db
def test_a_scan_over_the_ocr_page_limit_fails_with_the_limit_and_writes_nothing(
    owner, owner_database, media_root, settings
):
    settings.OCR_MAX_PAGES = 1
    document = _upload(owner, "scan.pdf", mixed_pdf([(FERRY, True), (LENS_TEXT, True)]))

    services.document_ingest(document.id, allow_ocr=False)  # refused before it is handed to the OCR queue

    document.refresh_from_db()
    assert document.status == "failed"
    assert document.error_message == (
        "This PDF has 2 scanned pages; Silo reads up to 1 scanned pages in one document. Split it into smaller PDFs "
        "and upload them."
    )
    assert _chunk_metadata(owner_database, document.id) == []


def test_scans_are_routed_to_their_own_queue_and_text_documents_to_the_main_one(settings):
    router = celery_app.amqp.router
    ocr_route = router.route({}, "documents.tasks.ingest_scanned_document", args=(1,), kwargs={})
    main_route = router.route({}, "documents.tasks.ingest_document", args=(1,), kwargs={})

    assert settings.CELERY_OCR_QUEUE == f"{settings.CELERY_TASK_DEFAULT_QUEUE}-ocr"
    assert ocr_route["queue"].name == settings.CELERY_OCR_QUEUE
    assert main_route["queue"].name == settings.CELERY_TASK_DEFAULT_QUEUE


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_an_uploaded_scan_is_read_by_the_ocr_worker_and_cited_at_its_page(client, celery_worker, owner, owner_database):
    client.force_login(owner)
    scan = mixed_pdf([(HARBOUR_TEXT, False), (FERRY, True)])

    uploaded = _post_files(client, SimpleUploadedFile("ferry.pdf", scan)).json()
    document_id = uploaded["documents"][0]["id"]
    try:
        deadline = time.monotonic() + CELERY_OCR_TIMEOUT_SECONDS
        details = set()
        while time.monotonic() < deadline:
            payload = {d["id"]: d for d in client.get(reverse("documents_status")).json()["documents"]}[document_id]
            details.add(payload["detail"])
            if not payload["busy"]:
                break
            time.sleep(0.2)
        assert (payload["status"], payload["ocr_pages_total"], payload["ocr_pages_done"]) == ("ready", 1, 1)
        rows = _chunk_metadata(owner_database, document_id)
        assert [(first, last, metadata.get("ocr")) for first, last, metadata in rows] == [(1, 2, True)]
    finally:
        services.document_delete(owner, document_id)


@pytest.mark.django_db
def test_the_ingest_command_takes_office_files_and_ocrs_scans_in_process(owner, owner_database, media_root, tmp_path):
    word = tmp_path / "harbour_rules.docx"
    word.write_bytes(docx_bytes(HARBOUR_DOCX))
    scan = tmp_path / "ferry.pdf"
    scan.write_bytes(mixed_pdf([(FERRY, True)]))
    output = io.StringIO()

    call_command("ingest", "--user", owner.email, str(word), str(scan), "--json", stdout=output)

    word_document, scan_document = Document.objects.filter(uploaded_by=owner).order_by("id")
    printed = json.loads(output.getvalue())["documents"]
    assert [(d["id"], d["status"], d["format"], d["pages"], d["chunks"]) for d in printed] == [
        (word_document.id, "ready", "docx", 4, 4),
        (scan_document.id, "ready", "pdf", 1, 1),
    ]
    assert (scan_document.ocr_pages_total, scan_document.ocr_pages_done) == (1, 1)
