"""Hostile files of the formats beyond PDF: each gets a clear error and loses nothing (a refused upload stores
nothing; a file refused at ingest is kept for its owner to see and delete, and writes no chunk), and nothing in a
file is ever executed or served as a page."""

from __future__ import annotations

import io

import psycopg
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from documents import services
from documents.models import Document
from tests.document_factory import docx_bytes, encrypted_docx, scanned_pdf, xlsx_with_rows, zip_bomb_xlsx
from tests.documents.test_pipeline import _tenant_dsn, owner_database  # noqa: F401 (a fixture)
from tests.helpers import stored_files
from tests.pdf_factory import text_pdf

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(240)]


def _post(client: Client, name: str, content: bytes):
    return client.post(
        reverse("document_upload"), {"files": [SimpleUploadedFile(name, content)]}, HTTP_ACCEPT="application/json"
    )


def _ingest(owner, name: str, content: bytes) -> Document:
    document = services.document_upload(owner, SimpleUploadedFile(name, content), enqueue=False)
    services.document_ingest(document.id)
    document.refresh_from_db()
    return document


def _chunks(vector_database, document_id: int) -> list[str]:
    with psycopg.connect(_tenant_dsn(vector_database)) as connection:
        rows = connection.execute(
            "SELECT content FROM embeddings WHERE document_id = %s ORDER BY chunk_index", [document_id]
        ).fetchall()
    return [row[0] for row in rows]


def test_an_encrypted_word_document_is_refused_at_upload_and_nothing_is_stored(client, owner, media_root):
    client.force_login(owner)
    locked = encrypted_docx(docx_bytes([("paragraph", "The safe's code is 1234.")]))

    response = _post(client, "salaries.docx", locked)

    assert response.status_code == 400
    assert response.json() == {
        "documents": [],
        "errors": ["salaries.docx: this document is password protected; remove the password and upload it again."],
    }
    assert Document.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_zip_bomb_disguised_as_a_spreadsheet_fails_without_being_unpacked(owner, owner_database, media_root):
    document = _ingest(owner, "figures.xlsx", zip_bomb_xlsx(unpacked_megabytes=120))

    assert document.status == "failed"
    assert document.error_message == (
        "This file unpacks to 126 MB from 0.1 MB, which no ordinary document does, so Silo does not open it. Save it "
        "again from the program that made it."
    )
    assert _chunks(owner_database, document.id) == []
    assert stored_files(media_root) == [media_root / document.file.name]  # kept for its owner to see and delete


def test_a_spreadsheet_of_a_million_rows_fails_with_the_row_limit(owner, owner_database, media_root, settings):
    settings.SPREADSHEET_MAX_ROWS = 100_000
    document = _ingest(owner, "ledger.xlsx", xlsx_with_rows(1_000_000))

    assert document.status == "failed"
    assert document.error_message == (
        "This spreadsheet has more than 100,000 rows; Silo reads up to 100,000. Split it, or keep the rows you want "
        "to ask about, and upload it again."
    )
    assert _chunks(owner_database, document.id) == []


def test_html_with_scripts_is_ingested_as_text_and_never_served_as_html(client, owner, owner_database, media_root):
    page = (
        b"<html><head><title>Notice</title><script>fetch('/accounts/export').then(r => steal(r))</script></head>"
        b"<body onload=\"alert('x')\"><h1>Harbour notice</h1><p>The ferry leaves at seven.</p>"
        b'<img src=x onerror="alert(\'y\')"><iframe src="https://example.com"></iframe></body></html>'
    )
    document = _ingest(owner, "notice.html", page)
    client.force_login(owner)

    original = client.get(reverse("document_file", args=[document.id]))
    text = client.get(reverse("document_text", args=[document.id]))

    assert document.status == "ready"
    assert _chunks(owner_database, document.id) == ["Harbour notice\nThe ferry leaves at seven."]
    assert original["Content-Type"] == "application/octet-stream"
    assert original["Content-Disposition"].startswith("attachment;")
    assert original["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert b"".join(original.streaming_content) == page  # the owner gets their file back, byte for byte
    assert text["Content-Type"] == "application/json"
    assert "script" not in text.content.decode() and "alert" not in text.content.decode()


def test_a_scan_at_1200_dpi_is_read_at_the_ocr_resolution(owner, owner_database, media_root):
    sentence = "The harbour master signs the ledger at noon."
    scan = scanned_pdf(text_pdf([sentence]), dpi=1200)
    assert len(scan) > 500_000  # a real 1,200 dpi page image, not a thumbnail

    document = _ingest(owner, "ledger-scan.pdf", scan)

    assert (document.status, document.error_message, document.ocr_pages_done) == ("ready", "", 1)
    assert _chunks(owner_database, document.id) == [sentence]


def test_a_text_file_that_is_not_utf8_is_refused_at_upload_with_how_to_fix_it(client, owner, media_root):
    client.force_login(owner)

    response = _post(client, "prices.csv", io.BytesIO("café;3,50\n".encode("cp1252")).getvalue())

    assert response.status_code == 400
    assert response.json()["errors"] == [
        "prices.csv: this file is not UTF-8 text; save it as UTF-8 (e.g. “CSV UTF-8” in Excel) and upload it again."
    ]
    assert stored_files(media_root) == []
