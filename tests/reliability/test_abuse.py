"""Limits hold against a user who pushes: upload size, pages and rate, question length, CSRF on every form and
endpoint that changes something, login throttling, and per-tenant fairness in the ingest queue. Each refusal says
why, and nothing is stored or changed."""

from __future__ import annotations

import re
import time
import uuid

import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from documents import services as document_services
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import User, VectorDatabase
from tests.helpers import personal_workspace, stored_files
from tests.reliability.test_isolation import sse_events, text_pdf

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

ONE_PAGE = text_pdf(["A short note about the harbour: the lamp is cleaned at dawn by the keeper."])


def signed_in(user: User, **options) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


def post_pdfs(client: Client, *files: tuple[str, bytes]):
    uploads = [SimpleUploadedFile(name, content, "application/pdf") for name, content in files]
    return client.post(reverse("document_upload"), {"files": uploads}, HTTP_ACCEPT="application/json")


def provision(user: User) -> VectorDatabase:
    row = VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres")
    database = tenant_services.vector_database_provision(row.id)
    assert database.status == VectorDatabase.Status.READY, database.last_error
    return database


@pytest.fixture
def databases():
    created: list[VectorDatabase] = []

    def make(user: User) -> VectorDatabase:
        created.append(provision(user))
        return created[-1]

    yield make
    for database in created:
        if VectorDatabase.objects.filter(id=database.id).exclude(status=VectorDatabase.Status.DELETED).exists():
            tenant_services.vector_database_deprovision(database.id)


def tenant_rows(user: User, query: str) -> list[tuple]:
    row = VectorDatabase.objects.get(workspace=personal_workspace(user))
    with psycopg.connect(tenant_services.vector_database_credentials(row)["dsn"]) as connection:
        return connection.execute(query).fetchall()


# --- upload limits ----------------------------------------------------------------------------------------------------


def test_an_upload_over_the_size_limit_is_refused_with_the_limit_and_nothing_is_stored(
    client, owner, media_root, settings
):
    settings.UPLOAD_MAX_BYTES = 1024 * 1024
    client.force_login(owner)
    too_big = b"%PDF-1.4\n" + b"0" * (1024 * 1024)

    response = post_pdfs(client, ("atlas.pdf", too_big))

    assert response.status_code == 400
    payload = response.json()
    assert payload["documents"] == []
    assert len(payload["errors"]) == 1
    assert re.fullmatch(r"atlas\.pdf: this file is larger than the 1(\.0)? MB Silo accepts\.", payload["errors"][0])
    assert Document.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_pdf_over_the_page_limit_is_refused_at_upload_with_the_limit_and_nothing_is_stored(
    owner, media_root, settings
):
    settings.UPLOAD_MAX_PAGES = 2

    refused = r"^long\.pdf: this PDF has 3 pages; Silo accepts up to 2\.$"
    with pytest.raises(document_services.DocumentRejected, match=refused):
        document_services.document_upload(owner, ContentFile(text_pdf(["one", "two", "three"]), name="long.pdf"))

    assert Document.objects.count() == 0
    assert stored_files(media_root) == []


def test_a_pdf_over_the_page_limit_at_ingest_ends_failed_with_the_limit_and_no_chunks(
    owner, databases, media_root, settings
):
    """Ingest checks again (the limit may have been lowered since the upload, or PDFium could not count the pages):
    the upload is kept, ingest refuses it with a reason, and the tenant database receives nothing."""
    databases(owner)
    document = document_services.document_upload(
        owner, ContentFile(text_pdf(["one", "two", "three"]), name="long.pdf"), enqueue=False
    )
    settings.UPLOAD_MAX_PAGES = 2

    document_services.document_ingest(document.id)

    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert "page" in document.error_message.lower() and "2" in document.error_message, document.error_message
    assert tenant_rows(owner, "SELECT count(*) FROM embeddings") == [(0,)]


def test_uploads_over_the_hourly_rate_are_refused_per_user_with_the_limit_and_nothing_is_stored(
    owner, stranger, media_root, settings
):
    settings.UPLOAD_RATE_LIMIT_PER_HOUR = 3
    client = signed_in(owner)

    # Other bytes each time: the same file twice is refused for another reason.
    accepted = post_pdfs(client, *[(f"note{n}.pdf", ONE_PAGE + f"\n% copy {n}\n".encode()) for n in range(3)])
    refused = post_pdfs(client, ("one-more.pdf", ONE_PAGE + b"\n% one more\n"))
    others = post_pdfs(signed_in(stranger), ("theirs.pdf", ONE_PAGE))  # the limit is per user

    assert (accepted.status_code, len(accepted.json()["documents"])) == (200, 3)
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        "You have uploaded 3 documents this hour, the most Silo accepts; please try again later."
    ]
    assert others.status_code == 200
    workspace_folder = f"workspace-{personal_workspace(owner).id}"
    assert len([path for path in stored_files(media_root / "documents") if path.parent.name == workspace_folder]) == 3


def test_an_over_long_question_is_refused_with_the_limit_and_nothing_is_stored(owner, databases, settings):
    settings.CHAT_MAX_QUESTION_CHARS = 50
    databases(owner)

    events = sse_events(signed_in(owner).post(reverse("chat_stream"), {"question": "why " * 13}))

    assert events == [("error", {"message": "Your question is 51 characters long; Silo accepts up to 50."})]
    assert tenant_rows(owner, "SELECT (SELECT count(*) FROM conversations), (SELECT count(*) FROM messages)") == [
        (0, 0)
    ]


# --- CSRF -------------------------------------------------------------------------------------------------------------


def test_every_post_endpoint_refuses_a_request_without_a_csrf_token_and_changes_nothing(owner, media_root):
    document = document_services.document_upload(owner, ContentFile(ONE_PAGE, name="note.pdf"), enqueue=False)
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", status=VectorDatabase.Status.FAILED
    )
    client = signed_in(owner, enforce_csrf_checks=True)

    def state():
        return (
            list(Document.objects.values_list("id", "status", "title")),
            list(VectorDatabase.objects.values_list("id", "status")),
            list(User.objects.values_list("id", "is_active")),
            stored_files(media_root),
        )

    before = state()
    posts = {
        "upload": (reverse("document_upload"), {"files": [SimpleUploadedFile("x.pdf", ONE_PAGE, "application/pdf")]}),
        "delete": (reverse("document_delete", args=[document.id]), {}),
        "reingest": (reverse("document_reingest", args=[document.id]), {}),
        "database retry": (reverse("database_retry"), {}),
        "account delete": (reverse("account_delete"), {"confirm_email": owner.email}),
        "chat stream": (reverse("chat_stream"), {"question": "lamp?"}),
        "conversation delete": (reverse("conversation_delete", args=[str(uuid.uuid4())]), {}),
        "logout": (reverse("account_logout"), {}),
    }

    statuses = {name: client.post(url, data).status_code for name, (url, data) in posts.items()}

    assert statuses == dict.fromkeys(posts, 403)
    assert state() == before
    assert client.get(reverse("dashboard")).status_code == 200  # still signed in: the logout was refused too


# --- login throttling -------------------------------------------------------------------------------------------------


def test_repeated_failed_logins_lock_the_account_out_even_for_the_right_password_in_another_session(owner):
    # allauth's default: 5 failures per account in 5 minutes (and 10 a minute per IP), counted in the cache.
    assert django_settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    login = reverse("account_login")
    attacker = Client()
    for _ in range(5):
        assert attacker.post(login, {"login": owner.email, "password": "guess"}).status_code == 200

    refused = Client().post(login, {"login": owner.email, "password": "correct horse battery"})

    assert refused.status_code == 200  # the form again, not the redirect of a successful login
    assert "Too many failed login attempts. Try again later." in refused.content.decode()
    assert "_auth_user_id" not in refused.wsgi_request.session
    # The counter is in Redis, shared by every web process (not in one process's memory).
    from django.core.cache import cache

    assert any("login_failed" in key.decode() for key in cache._cache.get_client().scan_iter("*rl*"))


# --- fairness ---------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_flood_of_uploads_from_one_tenant_does_not_starve_another(
    celery_worker, owner, stranger, databases, django_user_model
):
    databases(owner)
    databases(stranger)
    flood = [
        document_services.document_upload(owner, ContentFile(ONE_PAGE + f"\n% {n}\n".encode(), name=f"flood{n}.pdf"))
        for n in range(20)
    ]
    single = document_services.document_upload(stranger, ContentFile(ONE_PAGE, name="single.pdf"))
    try:
        deadline = time.monotonic() + 180
        flood_ready_when_single_ready = None
        while time.monotonic() < deadline:
            statuses = dict(Document.objects.values_list("id", "status"))
            ready = sum(statuses[d.id] == Document.Status.READY for d in flood)
            if flood_ready_when_single_ready is None and statuses[single.id] == Document.Status.READY:
                flood_ready_when_single_ready = ready
            if ready == len(flood) and flood_ready_when_single_ready is not None:
                break
            time.sleep(0.2)

        assert flood_ready_when_single_ready is not None, "the single document never became ready"
        assert flood_ready_when_single_ready < len(flood) // 2, flood_ready_when_single_ready
        statuses = dict(Document.objects.values_list("id", "status"))
        assert [statuses[d.id] for d in flood] == [Document.Status.READY] * len(flood)  # the flood drains, all of it
        chunk_counts = dict(Document.objects.values_list("id", "chunk_count"))
        expected = sum(chunk_counts[d.id] for d in flood)
        assert tenant_rows(owner, "SELECT count(*), count(DISTINCT id) FROM embeddings") == [(expected, expected)]
    finally:  # the session's worker writes to the real MEDIA_ROOT: leave nothing behind
        for document in [*flood, single]:
            document.file.delete(save=False)
