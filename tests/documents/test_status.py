"""What the documents page says about each document: where a busy one is in its work, and what a queued one waits
for. Rows only (no ingest runs): the status line is derived from the state the pipeline leaves behind."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from documents import services
from documents.models import Document
from documents.selectors import document_statuses_for_user
from tenants.models import VectorDatabase
from tests.helpers import personal_workspace

Status = Document.Status
pytestmark = pytest.mark.django_db


def _document(owner, title: str, status: str, minutes_ago: int = 0, **fields) -> Document:
    document = Document.objects.create(
        workspace=personal_workspace(owner),
        uploaded_by=owner,
        title=title,
        original_filename=f"{title}.pdf",
        file=ContentFile(b"%PDF-1.4 test", name=f"{title}.pdf"),
        size_bytes=13,
        sha256="0" * 64,
        status=status,
        **fields,
    )
    Document.objects.filter(id=document.id).update(created_at=timezone.now() - timedelta(minutes=minutes_ago))
    return document


@pytest.fixture(autouse=True)
def _media(media_root):
    return media_root


def _details(owner) -> dict[str, tuple[str, str]]:
    return {payload["title"]: (payload["label"], payload["detail"]) for payload in document_statuses_for_user(owner)}


def test_queued_documents_wait_for_a_database_being_set_up(owner):
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", status=VectorDatabase.Status.PROVISIONING
    )
    _document(owner, "atlas", Status.QUEUED)

    assert _details(owner) == {
        "atlas": ("Queued", "Waiting for your database to be set up; it starts by itself once it is ready.")
    }


def test_queued_documents_wait_for_the_one_being_processed_and_say_how_many_are_ahead(owner, settings):
    settings.INGEST_MAX_CONCURRENT_PER_TENANT = 1
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", status=VectorDatabase.Status.READY
    )
    _document(owner, "first", Status.EMBEDDING, minutes_ago=3, chunks_total=300, chunks_embedded=128)
    _document(owner, "second", Status.QUEUED, minutes_ago=2)
    _document(owner, "third", Status.QUEUED, minutes_ago=1)
    _document(owner, "done", Status.READY, minutes_ago=9, chunk_count=12)

    assert _details(owner) == {
        "first": ("Embedding", "Embedding 128/300 chunks"),
        "second": ("Queued", "Waiting for “first” to finish: your documents are processed one at a time."),
        "third": (
            "Queued",
            "Waiting for “first” to finish, then 1 earlier upload: your documents are processed one at a time.",
        ),
        "done": ("Ready", ""),
    }


def test_a_queued_document_with_free_slots_waits_for_a_worker_and_a_retried_one_says_why(owner, settings):
    settings.INGEST_MAX_CONCURRENT_PER_TENANT = 2
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", status=VectorDatabase.Status.READY
    )
    _document(owner, "reading", Status.PARSING, minutes_ago=3)
    _document(owner, "next", Status.QUEUED, minutes_ago=2)
    _document(owner, "retried", Status.QUEUED, minutes_ago=1, error_message=services.TEMPORARY_FAILURE_MESSAGE)

    assert _details(owner) == {
        "reading": ("Parsing", "Reading the pages…"),
        "next": ("Queued", "Waiting for a free worker."),
        "retried": ("Queued", services.TEMPORARY_FAILURE_MESSAGE),
    }


def test_an_unavailable_database_is_named_as_the_reason(owner):
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", status=VectorDatabase.Status.FAILED
    )
    _document(owner, "atlas", Status.QUEUED)

    assert _details(owner)["atlas"] == (
        "Queued",
        "Waiting for your database, which is not available: see the dashboard's notice.",
    )


def test_the_status_endpoint_carries_the_details_and_shows_only_ones_own_documents(owner, stranger, client):
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", status=VectorDatabase.Status.READY
    )
    _document(owner, "mine", Status.EMBEDDING, chunks_total=10, chunks_embedded=0)
    _document(stranger, "theirs", Status.EMBEDDING, chunks_total=99, chunks_embedded=98)
    client.force_login(owner)

    payload = client.get("/documents/status").json()

    assert [(d["title"], d["label"], d["detail"], d["chunks_total"]) for d in payload["documents"]] == [
        ("mine", "Embedding", "Embedding 0/10 chunks", 10)
    ]


def test_the_dashboard_leads_with_documents_and_mentions_the_database_only_while_it_is_not_ready(owner, client):
    database = VectorDatabase.objects.create(
        workspace=personal_workspace(owner),
        provider="postgres",
        status=VectorDatabase.Status.PROVISIONING,
        embedding_model="all-MiniLM-L6-v2",
    )
    _document(owner, "atlas", Status.QUEUED)
    client.force_login(owner)

    provisioning = client.get("/dashboard/").content.decode()
    account = client.get("/account/").content.decode()
    VectorDatabase.objects.filter(id=database.id).update(status=VectorDatabase.Status.READY)
    ready = client.get("/dashboard/").content.decode()

    assert 'id="database-status" class="status status-provisioning"' in provisioning
    assert "Your private database is being set up." in provisioning
    assert 'id="database-card"' not in ready
    for page in (provisioning, ready):
        assert "all-MiniLM-L6-v2" not in page  # the database's facts are on the account page
        assert '<th scope="col">Title</th><th scope="col">Pages</th><th scope="col">Added</th>' in page
        assert 'class="document-title">atlas</span>' in page
        assert 'id="upload-files" name="files"' in page
    assert '<dd data-fact="embedding_model">all-MiniLM-L6-v2</dd>' in account
