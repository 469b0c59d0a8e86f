"""The document pipeline: upload -> parse -> chunk -> embed -> write, and what a tenant can do with a document.

Most tests ingest a two-page extract of a real PDF (a few seconds of embedding at most); one test drives the whole path
through a real Celery worker.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from pypdf import PdfReader, PdfWriter

from documents import services
from documents.models import Document
from documents.parsing import BlankPdf, CorruptPdf, EncryptedPdf
from tenants import services as tenant_services
from tenants.crypto import decrypt_credentials
from tenants.models import User, VectorDatabase
from tests.helpers import personal_workspace, stored_files, without_csrf_tokens
from tests.pdf_factory import image_only_pdf, text_pdf
from vectordb.chunks import chunk_id

EVAL_PDF = Path("/work/shared/eval/pdfs/clsguide.pdf")
SMALL_PDF_PAGES = 2
LOCAL_EMBEDDING_DIMENSIONS = 384
CELERY_INGEST_TIMEOUT_SECONDS = 90


# --- PDFs ---------------------------------------------------------------------------------------------------------


def _pdf_bytes(writer: PdfWriter) -> bytes:
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _extract_pages(source: Path, page_indexes: list[int]) -> bytes:
    reader = PdfReader(source)
    writer = PdfWriter()
    for index in page_indexes:
        writer.add_page(reader.pages[index])
    return _pdf_bytes(writer)


def _encrypted(pdf: bytes) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password="open sesame", owner_password="owner secret")
    return _pdf_bytes(writer)


def _blank() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    return _pdf_bytes(writer)


@dataclass(frozen=True)
class Pdfs:
    small: bytes  # pages 2-3 of a real LaTeX guide: text on both pages
    other: bytes  # page 5 of the same guide
    encrypted: bytes
    blank: bytes
    image_only: bytes
    truncated: bytes


@pytest.fixture(scope="session")
def pdfs() -> Pdfs:
    small = _extract_pages(EVAL_PDF, [1, 2])
    return Pdfs(
        small=small,
        other=_extract_pages(EVAL_PDF, [4]),
        encrypted=_encrypted(small),
        blank=_blank(),
        image_only=image_only_pdf(),
        truncated=small[: len(small) // 3],
    )


# --- fixtures and helpers -----------------------------------------------------------------------------------------


def _provision(tenant: User) -> VectorDatabase:
    row = VectorDatabase.objects.create(workspace=personal_workspace(tenant), provider="postgres")
    vector_database = tenant_services.vector_database_provision(row.id)
    assert vector_database.status == VectorDatabase.Status.READY, vector_database.last_error
    return vector_database


@pytest.fixture
def owner_database(owner):
    """The owner's own tenant database, ready; dropped afterwards."""
    vector_database = _provision(owner)
    yield vector_database
    tenant_services.vector_database_deprovision(vector_database.id)


def _tenant_dsn(vector_database: VectorDatabase) -> str:
    row = VectorDatabase.objects.get(id=vector_database.id)
    return decrypt_credentials(row.encrypted_credentials)["dsn"]


@dataclass(frozen=True)
class ChunkRow:
    id: uuid.UUID
    chunk_index: int
    first_page: int
    last_page: int
    dimensions: int
    content: str


def _chunk_rows(vector_database: VectorDatabase, document_id: int | None = None) -> list[ChunkRow]:
    """What the tenant's `embeddings` table holds (for one document, or all of it), read with the tenant's DSN."""
    query = "SELECT id, chunk_index, first_page, last_page, vector_dims(embedding), content FROM embeddings"
    params: list = []
    if document_id is not None:
        query += " WHERE document_id = %s"
        params.append(document_id)
    with psycopg.connect(_tenant_dsn(vector_database)) as connection:
        rows = connection.execute(query + " ORDER BY document_id, chunk_index", params).fetchall()
    return [ChunkRow(*row) for row in rows]


def _delete_chunk_rows(vector_database: VectorDatabase, document_id: int) -> None:
    with psycopg.connect(_tenant_dsn(vector_database)) as connection:
        connection.execute("DELETE FROM embeddings WHERE document_id = %s", [document_id])


def _upload(owner: User, name: str, content: bytes) -> Document:
    return services.document_upload(owner, SimpleUploadedFile(name, content, "application/pdf"), enqueue=False)


def _ingest(document: Document) -> Document:
    services.document_ingest(document.id)
    document.refresh_from_db()
    return document


def _post_files(client, *files: SimpleUploadedFile):
    return client.post(reverse("document_upload"), {"files": list(files)}, HTTP_ACCEPT="application/json")


# --- upload -------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_upload_through_the_view_stores_the_file_and_queues_the_document(client, owner, media_root, pdfs, settings):
    client.force_login(owner)

    response = _post_files(client, SimpleUploadedFile("LaTeX_class_guide.pdf", pdfs.small, "application/pdf"))

    assert response.status_code == 200
    document = Document.objects.get(uploaded_by=owner)
    assert response.json() == {
        "documents": [
            {
                "id": document.id,
                "title": "LaTeX class guide",
                "status": "queued",
                "label": "Queued",
                "progress": 0.0,
                "pages": None,
                "chunks": 0,
                "chunks_total": 0,
                "chunks_embedded": 0,
                "format": "pdf",
                "ocr_pages_total": 0,
                "ocr_pages_done": 0,
                "detail": "Waiting for your database to be set up; it starts by itself once it is ready.",
                "error": "",
                "busy": True,
                "created": document.created_at.isoformat(),
            }
        ],
        "errors": [],
    }
    assert document.original_filename == "LaTeX_class_guide.pdf"
    assert document.size_bytes == len(pdfs.small)
    assert document.attempts == 0
    stored = Path(document.file.path)
    assert stored_files(media_root) == [stored]
    assert stored.read_bytes() == pdfs.small
    # The user's file name never becomes a path on our disk; the workspace's region (no database yet: the default)
    # and the workspace do.
    workspace = personal_workspace(owner)
    assert stored.parent == media_root / "documents" / settings.TENANT_DEFAULT_REGION / f"workspace-{workspace.id}"
    assert "LaTeX" not in stored.name


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.pdf", b"Meeting notes, not a PDF at all.\n", "notes.pdf: this file is not a PDF."),
        ("empty.pdf", b"", "empty.pdf: this file is empty."),
        (
            "huge.pdf",
            b"%PDF-1.7\n" + b"0" * (1024 * 1024),
            "huge.pdf: this file is larger than the 1.0 MB Silo accepts.",
        ),
    ],
    ids=["not-a-pdf", "empty", "too-large"],
)
def test_upload_refuses_what_is_not_an_acceptable_pdf_and_stores_nothing(
    client, owner, settings, media_root, name, content, message
):
    settings.UPLOAD_MAX_BYTES = 1024 * 1024
    client.force_login(owner)

    response = _post_files(client, SimpleUploadedFile(name, content, "application/pdf"))

    assert response.status_code == 400
    assert response.json() == {"documents": [], "errors": [message]}
    assert Document.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.django_db
def test_upload_refuses_a_pdf_over_the_page_limit_at_once_and_stores_nothing(client, owner, settings, media_root):
    settings.UPLOAD_MAX_PAGES = 3
    client.force_login(owner)
    four_pages = text_pdf([f"Page {number} of a long report." for number in range(1, 5)])

    response = _post_files(client, SimpleUploadedFile("report.pdf", four_pages, "application/pdf"))

    assert response.status_code == 400
    assert response.json() == {"documents": [], "errors": ["report.pdf: this PDF has 4 pages; Silo accepts up to 3."]}
    assert Document.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.django_db
def test_upload_of_several_files_keeps_the_good_ones_and_reports_the_others(client, owner, media_root, pdfs):
    client.force_login(owner)

    response = client.post(
        reverse("document_upload"),
        {
            "files": [
                SimpleUploadedFile("guide.pdf", pdfs.small, "application/pdf"),
                SimpleUploadedFile("photo.pdf", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "application/pdf"),
            ]
        },
        follow=True,
    )

    assert response.redirect_chain == [(reverse("dashboard"), 302)]
    assert [str(message) for message in response.context["messages"]] == [
        "photo.pdf: this file is not a PDF.",
        "Uploaded 1 document(s); they are being processed.",
    ]
    assert list(Document.objects.values_list("title", flat=True)) == ["guide"]
    assert len(stored_files(media_root)) == 1


@pytest.mark.django_db
def test_the_same_file_uploaded_again_is_refused_with_where_the_first_copy_is(
    client, owner, stranger, media_root, pdfs
):
    client.force_login(owner)
    first = _post_files(client, SimpleUploadedFile("class_guide.pdf", pdfs.small, "application/pdf"))
    assert first.status_code == 200
    files_before = stored_files(media_root)

    again = _post_files(client, SimpleUploadedFile("renamed copy.pdf", pdfs.small, "application/pdf"))

    assert again.status_code == 400
    assert again.json() == {
        "documents": [],
        "errors": [
            "renamed copy.pdf: this workspace already has this file as “class guide”; it is being processed and will be "
            "ready shortly."
        ],
    }
    assert list(Document.objects.filter(uploaded_by=owner).values_list("title", flat=True)) == ["class guide"]
    assert stored_files(media_root) == files_before
    # Another tenant's copy is their own business, and other bytes are another document.
    assert _upload(stranger, "class_guide.pdf", pdfs.small).uploaded_by == stranger
    assert _upload(owner, "other.pdf", pdfs.other).title == "other"


@pytest.mark.django_db
def test_a_duplicate_of_a_ready_or_failed_document_says_what_to_do(owner, media_root, pdfs):
    ready = _upload(owner, "guide.pdf", pdfs.small)
    Document.objects.filter(id=ready.id).update(status=Document.Status.READY)
    failed = _upload(owner, "blank.pdf", pdfs.blank)
    Document.objects.filter(id=failed.id).update(status=Document.Status.FAILED, error_message="This PDF is blank.")

    with pytest.raises(services.DocumentRejected) as ready_copy:
        _upload(owner, "guide (1).pdf", pdfs.small)
    with pytest.raises(services.DocumentRejected) as failed_copy:
        _upload(owner, "blank again.pdf", pdfs.blank)

    assert str(ready_copy.value) == (
        "guide (1).pdf: this workspace already has this file as “guide”; it is in the documents, ready to chat with."
    )
    assert str(failed_copy.value) == (
        "blank again.pdf: this workspace already has this file as “blank”, which could not be processed (This PDF is "
        "blank.). Delete it from the documents to upload it again."
    )
    assert Document.objects.filter(uploaded_by=owner).count() == 2
    # Once the first copy is deleted, the same bytes are welcome again.
    services.document_delete(owner, failed.id)
    assert _upload(owner, "blank again.pdf", pdfs.blank).title == "blank again"


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_uploads_of_the_same_file_store_one_document(owner, media_root, pdfs):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def upload(name: str) -> str:
        try:
            return _upload(owner, name, pdfs.small).title
        except services.DocumentRejected as error:
            return str(error)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = sorted(pool.map(upload, ["a.pdf", "b.pdf"]))

    assert Document.objects.filter(uploaded_by=owner).count() == 1
    stored = Document.objects.get(uploaded_by=owner).title
    assert stored in outcomes
    assert sum("this workspace already has this file" in outcome for outcome in outcomes) == 1


# --- ingest -------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ingest_ends_ready_with_every_chunk_in_the_tenant_database(owner, owner_database, media_root, pdfs):
    document = _upload(owner, "guide.pdf", pdfs.small)
    seen: list[tuple[str, float]] = []

    report = services.document_ingest(document.id, on_progress=lambda d: seen.append((d.status, d.progress)))

    document.refresh_from_db()
    assert document.status == Document.Status.READY
    assert document.progress == 1.0
    assert document.error_message == ""
    assert document.page_count == SMALL_PDF_PAGES
    assert document.embedding_model == "all-MiniLM-L6-v2"
    assert document.attempts == 1
    assert document.ingested_at is not None
    rows = _chunk_rows(owner_database, document.id)
    assert document.chunk_count == len(rows) >= 3
    assert _chunk_rows(owner_database) == rows  # nothing else in the tenant's table
    assert [row.chunk_index for row in rows] == list(range(len(rows)))
    assert [row.id for row in rows] == [chunk_id(document.id, index) for index in range(len(rows))]
    assert all(1 <= row.first_page <= row.last_page <= SMALL_PDF_PAGES for row in rows)
    assert (rows[0].first_page, rows[-1].last_page) == (1, SMALL_PDF_PAGES)
    assert {row.dimensions for row in rows} == {LOCAL_EMBEDDING_DIMENSIONS}
    assert all(row.content.strip() for row in rows)
    # Progress passes through every stage, never goes backwards, and ends at ready.
    statuses = [status for index, (status, _) in enumerate(seen) if index == 0 or seen[index - 1][0] != status]
    assert statuses == ["parsing", "embedding", "ready"]
    assert seen[0] == ("parsing", 0.01)
    assert seen[-1] == ("ready", 1.0)
    progress = [value for _, value in seen]
    assert progress == sorted(progress)
    assert report.document.id == document.id
    assert all(seconds > 0 for seconds in (report.timings.parse, report.timings.embed, report.timings.write))


@pytest.mark.django_db
def test_embedding_progress_counts_the_chunks_embedded_out_of_the_total(
    owner, owner_database, media_root, pdfs, settings
):
    settings.EMBEDDING_BATCH_SIZE = 2
    document = _upload(owner, "guide.pdf", pdfs.small)
    seen: list[tuple[str, int, int]] = []

    services.document_ingest(
        document.id, on_progress=lambda d: seen.append((d.status, d.chunks_embedded, d.chunks_total))
    )

    document.refresh_from_db()
    total = document.chunk_count
    assert total >= 3
    # "Embedding 0/N chunks" as soon as the chunks are known, then one step a batch of two, up to N/N.
    assert [(embedded, of) for status, embedded, of in seen if status == "embedding"] == [(0, total)] + [
        (min(count, total), total) for count in range(2, total + 2, 2)
    ]
    assert (document.status, document.chunks_embedded, document.chunks_total) == (Document.Status.READY, total, total)


@pytest.mark.django_db
def test_running_ingest_again_never_duplicates_chunks(owner, owner_database, media_root, pdfs):
    document = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    before = _chunk_rows(owner_database)

    document = _ingest(document)  # a re-delivered task for a ready document does nothing
    assert document.attempts == 1
    assert _chunk_rows(owner_database) == before

    Document.objects.filter(id=document.id).update(status=Document.Status.QUEUED)
    document = _ingest(document)  # a retried task runs the whole pipeline again

    after = _chunk_rows(owner_database)
    assert document.status == Document.Status.READY
    assert document.attempts == 2
    assert [row.id for row in after] == [row.id for row in before]
    assert document.chunk_count == len(after) == len(before)


# What each kind of unreadable PDF tells its owner: one sentence they understand.
UNREADABLE = {
    "encrypted": EncryptedPdf.default_message,
    "image_only": "This PDF's pages are images in which Silo could read no text.",
    "blank": BlankPdf.default_message,
    "truncated": CorruptPdf.default_message,
}


@pytest.mark.django_db
def test_an_unreadable_pdf_fails_with_a_reason_and_leaves_other_documents_alone(
    owner, owner_database, media_root, pdfs
):
    good = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    good_rows = _chunk_rows(owner_database)

    failed = {kind: _ingest(_upload(owner, f"{kind}.pdf", getattr(pdfs, kind))) for kind in UNREADABLE}

    for kind, bad in failed.items():
        assert bad.status == Document.Status.FAILED, kind
        assert bad.error_message == UNREADABLE[kind]
        assert bad.error_message.endswith(".") and ". " not in bad.error_message and "\n" not in bad.error_message
        assert (bad.chunk_count, bad.page_count, bad.progress, bad.attempts) == (0, None, 0.0, 1), kind
        assert Path(bad.file.path).is_file(), kind  # kept, so its owner sees what they uploaded and can delete it
    good.refresh_from_db()
    assert (good.status, good.chunk_count) == (Document.Status.READY, len(good_rows))
    assert _chunk_rows(owner_database) == good_rows  # no chunk of a failed document, none of the good one lost


@pytest.mark.django_db
def test_ingest_waits_while_the_tenant_database_is_not_ready(owner, media_root, pdfs):
    document = _upload(owner, "guide.pdf", pdfs.small)
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", status=VectorDatabase.Status.PROVISIONING
    )

    with pytest.raises(tenant_services.TenantDatabaseNotReady) as raised:
        services.document_ingest(document.id)

    assert raised.value.status == "provisioning"
    document.refresh_from_db()
    assert (document.status, document.attempts, document.chunk_count) == ("queued", 0, 0)


# --- delete and re-ingest -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_delete_removes_the_chunks_the_file_and_the_row(client, owner, owner_database, media_root, pdfs):
    document = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    kept = _ingest(_upload(owner, "other.pdf", pdfs.other))
    kept_rows = _chunk_rows(owner_database, kept.id)
    path = Path(document.file.path)
    client.force_login(owner)

    response = client.post(reverse("document_delete", args=[document.id]), HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    assert response.json() == {"deleted": document.id}
    assert not Document.objects.filter(id=document.id).exists()
    assert not path.exists()
    assert _chunk_rows(owner_database, document.id) == []
    assert _chunk_rows(owner_database) == kept_rows
    assert stored_files(media_root) == [Path(kept.file.path)]


@pytest.mark.django_db
def test_reingest_rebuilds_the_chunks(client, owner, owner_database, media_root, pdfs):
    document = _ingest(_upload(owner, "guide.pdf", pdfs.small))
    rows = _chunk_rows(owner_database, document.id)
    _delete_chunk_rows(owner_database, document.id)  # say the chunks were lost
    client.force_login(owner)

    response = client.post(reverse("document_reingest", args=[document.id]), HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert response.json()["chunks"] == 0
    # The test database never commits, so the task is not enqueued: run what it would run.
    document = _ingest(document)
    assert document.status == Document.Status.READY
    assert document.attempts == 1  # counted afresh from the re-ingest: attempts bound the runs that die (issue 14)
    assert _chunk_rows(owner_database, document.id) == rows


# --- isolation between tenants ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_another_tenant_gets_404_for_a_document_and_learns_nothing(client, owner, stranger, media_root, pdfs):
    document = _upload(owner, "guide.pdf", pdfs.small)
    missing_id = document.id + 1000
    client.force_login(stranger)

    answers = {
        name: (
            getattr(client, method)(reverse(name, args=[document.id])),
            getattr(client, method)(reverse(name, args=[missing_id])),
        )
        for method, name in [("get", "document_file"), ("post", "document_delete"), ("post", "document_reingest")]
    }

    for action, (someone_elses, nonexistent) in answers.items():
        assert someone_elses.status_code == 404, action
        # The same answer as for a document that does not exist: nothing tells the stranger it does.
        assert without_csrf_tokens(someone_elses.content) == without_csrf_tokens(nonexistent.content), action
    unchanged = Document.objects.get(id=document.id)
    assert (unchanged.status, unchanged.attempts, unchanged.updated_at) == ("queued", 0, document.updated_at)
    assert Path(unchanged.file.path).read_bytes() == pdfs.small
    client.force_login(owner)
    response = client.get(reverse("document_file", args=[document.id]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert b"".join(response.streaming_content) == pdfs.small
    response.close()


@pytest.mark.django_db
def test_the_status_json_lists_only_ones_own_documents(client, owner, stranger, media_root, pdfs):
    first = _upload(owner, "first.pdf", pdfs.small)
    second = _upload(owner, "second.pdf", pdfs.other)
    theirs = _upload(stranger, "theirs.pdf", pdfs.small)

    client.force_login(owner)
    mine = client.get(reverse("documents_status")).json()
    client.force_login(stranger)
    others = client.get(reverse("documents_status")).json()

    assert [(d["id"], d["title"]) for d in mine["documents"]] == [(second.id, "second"), (first.id, "first")]
    assert [(d["id"], d["title"]) for d in others["documents"]] == [(theirs.id, "theirs")]


@pytest.mark.django_db
def test_the_status_json_needs_a_signed_in_user(client):
    response = client.get(reverse("documents_status"))

    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


# --- the whole path through a Celery worker -----------------------------------------------------------------------


def _wait_until_settled(client, document_id: int) -> dict:
    deadline = time.monotonic() + CELERY_INGEST_TIMEOUT_SECONDS
    seen = []
    while time.monotonic() < deadline:
        payload = {d["id"]: d for d in client.get(reverse("documents_status")).json()["documents"]}[document_id]
        seen.append(payload["status"])
        if not payload["busy"]:
            return payload
        time.sleep(0.2)
    raise AssertionError(f"document still busy after {CELERY_INGEST_TIMEOUT_SECONDS}s: {seen[-5:]}")


@pytest.mark.django_db(transaction=True)
def test_an_upload_is_ingested_by_a_celery_worker(client, celery_worker, owner, owner_database, pdfs):
    client.force_login(owner)

    uploaded = _post_files(client, SimpleUploadedFile("guide.pdf", pdfs.small, "application/pdf")).json()
    document_id = uploaded["documents"][0]["id"]
    try:
        payload = _wait_until_settled(client, document_id)

        rows = _chunk_rows(owner_database, document_id)
        assert payload == {
            "id": document_id,
            "title": "guide",
            "status": "ready",
            "label": "Ready",
            "progress": 1.0,
            "pages": SMALL_PDF_PAGES,
            "chunks": len(rows),
            "chunks_total": len(rows),
            "chunks_embedded": len(rows),
            "format": "pdf",
            "ocr_pages_total": 0,
            "ocr_pages_done": 0,
            "detail": "",
            "error": "",
            "busy": False,
            "created": Document.objects.get(id=document_id).created_at.isoformat(),
        }
        assert len(rows) >= 3
    finally:  # the worker writes to the real MEDIA_ROOT: leave nothing behind
        services.document_delete(owner, document_id)


# --- the `ingest` command -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_ingest_command_prints_json_and_fails_when_a_file_fails(owner, owner_database, media_root, pdfs, tmp_path):
    good = tmp_path / "class_guide.pdf"
    good.write_bytes(pdfs.small)
    blank = tmp_path / "blank.pdf"
    blank.write_bytes(pdfs.blank)
    ready_output, failed_output = io.StringIO(), io.StringIO()

    call_command("ingest", "--user", "OWNER@example.com", str(good), "--json", stdout=ready_output)
    with pytest.raises(CommandError, match=r"^1 of 1 files not ready$"):
        call_command("ingest", "--user", owner.email, str(blank), "--json", stdout=failed_output)

    good_document, blank_document = Document.objects.filter(uploaded_by=owner).order_by("id")
    assert json.loads(ready_output.getvalue()) == {
        "documents": [
            {
                "id": good_document.id,
                "title": "class guide",
                "file": str(good),
                "status": "ready",
                "format": "pdf",
                "pages": SMALL_PDF_PAGES,
                "chunks": len(_chunk_rows(owner_database, good_document.id)),
                "error": None,
            }
        ]
    }
    assert json.loads(failed_output.getvalue()) == {
        "documents": [
            {
                "id": blank_document.id,
                "title": "blank",
                "file": str(blank),
                "status": "failed",
                "format": "pdf",
                "pages": None,
                "chunks": 0,
                "error": BlankPdf.default_message,
            }
        ]
    }
    assert good_document.chunk_count >= 3


@pytest.mark.django_db
def test_the_ingest_command_reports_a_file_it_cannot_store(owner, media_root, tmp_path):
    missing = tmp_path / "missing.pdf"
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    output = io.StringIO()

    with pytest.raises(CommandError, match=r"^2 of 2 files not ready$"):
        call_command("ingest", "--user", owner.email, str(missing), str(empty), "--json", stdout=output)

    assert json.loads(output.getvalue()) == {
        "documents": [
            {
                "id": None,
                "title": "missing",
                "file": str(missing),
                "status": "failed",
                "pages": None,
                "chunks": 0,
                "error": "No such file.",
            },
            {
                "id": None,
                "title": "empty",
                "file": str(empty),
                "status": "failed",
                "pages": None,
                "chunks": 0,
                "error": "empty.pdf: this file is empty.",
            },
        ]
    }
    assert Document.objects.count() == 0
    assert stored_files(media_root) == []


@pytest.mark.django_db
def test_the_ingest_command_prints_each_files_outcome_and_why_a_file_failed(
    owner, owner_database, media_root, pdfs, tmp_path
):
    good = tmp_path / "class_guide.pdf"
    good.write_bytes(pdfs.small)
    blank = tmp_path / "blank.pdf"
    blank.write_bytes(pdfs.blank)
    copy = tmp_path / "copy.pdf"
    copy.write_bytes(pdfs.small)
    missing = tmp_path / "missing.pdf"
    output = io.StringIO()

    with pytest.raises(CommandError, match=r"^3 of 4 files not ready$"):
        call_command("ingest", "--user", owner.email, str(good), str(blank), str(copy), str(missing), stdout=output)

    document = Document.objects.get(uploaded_by=owner, title="class guide")
    outcomes = [line.rsplit("\r", 1)[-1] for line in output.getvalue().splitlines() if line.strip()]
    assert [line for line in outcomes if line.startswith(str(tmp_path))] == [
        f"{good}: ready, {SMALL_PDF_PAGES} pages, {document.chunk_count} chunks (document {document.id})",
        f"{blank}: failed: {BlankPdf.default_message}",
        f"{copy}: failed: copy.pdf: this workspace already has this file as “class guide”; it is in the documents, "
        "ready to chat with.",
        f"{missing}: failed: No such file.",
    ]


@pytest.mark.django_db
def test_the_ingest_command_refuses_an_unknown_user(tmp_path):
    with pytest.raises(CommandError, match=r"^no user with email nobody@example.com$"):
        call_command("ingest", "--user", "nobody@example.com", str(tmp_path / "guide.pdf"))

    assert Document.objects.count() == 0


# --- erasing a tenant ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_erasing_a_tenant_deletes_its_files(owner, stranger, owner_database, media_root, pdfs):
    first = _upload(owner, "first.pdf", pdfs.small)
    second = _upload(owner, "second.pdf", pdfs.other)
    theirs = _upload(stranger, "theirs.pdf", pdfs.small)
    owner_files = [Path(first.file.path), Path(second.file.path)]

    assert tenant_services.tenant_erase(owner.id) is True

    assert not any(path.exists() for path in owner_files)
    assert stored_files(media_root) == [Path(theirs.file.path)]
    assert list(Document.objects.values_list("id", flat=True)) == [theirs.id]
    assert not User.objects.filter(id=owner.id).exists()
    assert VectorDatabase.objects.get(id=owner_database.id).status == VectorDatabase.Status.DELETED
