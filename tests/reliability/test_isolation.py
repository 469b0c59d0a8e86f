"""Tenants are isolated: asking for another tenant's object by id is a 404 that changes nothing, listings show only
one's own, a tenant's database role reaches nothing but its own database, search parameters cannot inject SQL, and
text from PDFs, titles and questions renders inert on every page and in the stream."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse
from psycopg import sql

from chat import services as chat_services
from documents import services as document_services
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import User, VectorDatabase
from tests.helpers import personal_workspace, server_sent_events, without_csrf_tokens
from tests.pdf_factory import text_pdf
from vectordb.connections import get_registry
from vectordb.search import fulltext_search, hybrid_search, vector_search

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

SCRIPT = "<script>alert(1)</script>"
HOSTILE_TITLE = f"{SCRIPT} <img src=x onerror=alert(2)>"
PAGES = [
    f"The lighthouse keeper logs the fog horn schedule. Markup in a PDF stays text: {SCRIPT} and "
    "<img src=x onerror=alert(3)> are only characters. The lamp is cleaned every morning at dawn.",
    "The second page explains the tide tables and the harbour pilot's duties during storms.",
]


@dataclass
class Tenant:
    user: User
    database: VectorDatabase
    document: Document
    conversation_id: str

    def dsn(self) -> str:
        return tenant_services.vector_database_credentials(VectorDatabase.objects.get(id=self.database.id))["dsn"]

    def rows(self, query: str) -> list[tuple]:
        with psycopg.connect(self.dsn()) as connection:
            return connection.execute(query).fetchall()

    def snapshot(self) -> dict:
        """Everything of this tenant's that a request could change."""
        return {
            "documents": sorted(
                Document.objects.filter(uploaded_by=self.user).values_list("id", "status", "title", "chunk_count")
            ),
            "file": Path(Document.objects.get(id=self.document.id).file.path).read_bytes(),
            "chunks": self.rows("SELECT id, document_id, content FROM embeddings ORDER BY id"),
            "conversations": self.rows("SELECT id, title FROM conversations ORDER BY id"),
            "messages": self.rows("SELECT id, role, content FROM messages ORDER BY id"),
            "database": VectorDatabase.objects.filter(workspace=personal_workspace(self.user))
            .values_list("status", "encrypted_credentials")
            .get(),
            "active": User.objects.get(id=self.user.id).is_active,
        }


def make_tenant(user: User, title: str) -> Tenant:
    row = VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres")
    database = tenant_services.vector_database_provision(row.id)
    assert database.status == VectorDatabase.Status.READY, database.last_error
    document = document_services.document_upload(user, ContentFile(text_pdf(PAGES), name="harbour.pdf"), enqueue=False)
    document_services.document_ingest(document.id)
    Document.objects.filter(id=document.id).update(title=title)
    document.refresh_from_db()
    assert document.status == Document.Status.READY, document.error_message
    events = list(chat_services.chat_turn(user, f"When is the lamp cleaned? {SCRIPT}"))
    assert events[-1].kind == "done", events
    return Tenant(user, database, document, events[0].data["id"])


@pytest.fixture
def two_tenants(owner, stranger, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.OPENAI_API_KEY = ""  # extractive answers: no model needed
    a = make_tenant(owner, "Owner's harbour log")
    b = make_tenant(stranger, HOSTILE_TITLE)
    yield a, b
    for tenant in (a, b):
        if VectorDatabase.objects.filter(id=tenant.database.id).exclude(status=VectorDatabase.Status.DELETED).exists():
            tenant_services.vector_database_deprovision(tenant.database.id)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def sse_events(response) -> list[tuple[str, dict]]:
    # An async stream, read synchronously as the test client can.
    return server_sent_events(b"".join(iter(response)).decode().splitlines())


# --- objects by id ---------------------------------------------------------------------------------------------------


def test_every_url_that_takes_an_id_answers_404_for_another_tenants_object_and_changes_nothing(two_tenants):
    a, b = two_tenants
    client = signed_in(a.user)
    before_a, before_b = a.snapshot(), b.snapshot()
    document, conversation = b.document.id, b.conversation_id

    requests = {
        "document file": client.get(reverse("document_file", args=[document])),
        "document chat page": client.get(reverse("document_chat", args=[document])),
        "delete": client.post(reverse("document_delete", args=[document])),
        "delete (json)": client.post(reverse("document_delete", args=[document]), HTTP_ACCEPT="application/json"),
        "reingest": client.post(reverse("document_reingest", args=[document])),
        "conversation delete": client.post(reverse("conversation_delete", args=[conversation])),
        "conversation page": client.get(reverse("chat"), {"c": conversation}),
        "conversation on own document page": client.get(
            reverse("document_chat", args=[a.document.id]), {"c": conversation}
        ),
        "chat stream about their document": client.post(
            reverse("chat_stream"), {"question": "lamp?", "document": document}
        ),
        "chat stream with a non-numeric document": client.post(
            reverse("chat_stream"), {"question": "lamp?", "document": f"{document} OR 1=1"}
        ),
        "document id that is not a number": client.get(f"/documents/{document}%20OR%201=1/file"),
    }

    assert {name: response.status_code for name, response in requests.items()} == dict.fromkeys(requests, 404)
    # Their conversation id in a chat turn: A's own database has no such conversation, so the turn ends there.
    events = sse_events(client.post(reverse("chat_stream"), {"question": "lamp?", "conversation": conversation}))
    assert events == [("error", {"message": "That conversation no longer exists."})]
    assert (a.snapshot(), b.snapshot()) == (before_a, before_b)
    # The 404 reads the same as for an id that exists nowhere: nothing to learn by probing.
    missing = client.get(reverse("document_file", args=[document + 1000]))
    assert (missing.status_code, without_csrf_tokens(missing.content)) == (
        404,
        without_csrf_tokens(requests["document file"].content),
    )


def test_listings_status_endpoints_and_the_export_hold_only_ones_own(two_tenants):
    a, b = two_tenants
    client = signed_in(a.user)

    status = client.get(reverse("documents_status")).json()
    database = client.get(reverse("database_status")).json()
    export = json.loads(client.get(reverse("account_export")).content)
    pages = {name: client.get(url).content.decode() for name, url in {
        "dashboard": reverse("dashboard"), "chat": reverse("chat"), "document chat": reverse("document_chat", args=[a.document.id]),
    }.items()}  # fmt: skip

    assert [d["id"] for d in status["documents"]] == [a.document.id]
    assert database["status"] == "ready"
    assert [d["id"] for d in export["documents"]] == [a.document.id]
    assert {c["document_id"] for c in export["chunks"]} == {a.document.id}
    assert [c["id"] for c in export["conversations"]] == [a.conversation_id]
    assert export["account"]["email"] == a.user.email
    for name, html in pages.items():
        for foreign in (b.user.email, b.conversation_id, f"/documents/{b.document.id}/", "onerror=alert(2)"):
            assert foreign not in html, (name, foreign)
    assert b.user.email not in json.dumps([status, database, export])


# --- database roles ---------------------------------------------------------------------------------------------------


def test_a_tenants_database_role_reaches_only_its_own_database(two_tenants, admin_dsn):
    a, b = two_tenants
    other_database = psycopg.conninfo.make_conninfo(a.dsn(), dbname=b.database.external_id)

    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(other_database).close()
    with psycopg.connect(a.dsn(), autocommit=True) as own:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            own.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("silo_test_escape")))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            own.execute("CREATE ROLE silo_test_escape LOGIN PASSWORD 'x'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            own.execute(f"ALTER ROLE {b.database.external_id} PASSWORD 'taken over'")
        role = own.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert role == (False, False, False, False, False)
    with psycopg.connect(admin_dsn) as admin:
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = 'silo_test_escape'").fetchone() == (0,)
    assert b.rows("SELECT count(*) FROM embeddings") == [(b.document.chunk_count,)]


def test_a_tenants_database_role_cannot_read_the_main_database(two_tenants):
    """The main database holds every tenant's (encrypted) credentials, sessions and accounts."""
    from django.db import connection

    a, _ = two_tenants
    main_database = psycopg.conninfo.make_conninfo(a.dsn(), dbname=connection.settings_dict["NAME"])
    try:
        main = psycopg.connect(main_database, autocommit=True)
    except psycopg.OperationalError as error:
        assert "permission denied for database" in str(error)
        return
    with main:  # connecting is allowed (PUBLIC keeps CONNECT on the main database); reading must not be
        for table in ("vector_databases", User._meta.db_table, "django_session", "documents", "account_emailaddress"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                main.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(table)))


# --- search parameters ----------------------------------------------------------------------------------------------


HOSTILE_QUERIES = [
    "'); DROP TABLE embeddings; --",
    "lamp' OR '1'='1",
    "lamp:* & !x | (y <-> z)",  # tsquery syntax in the text
    "\\x00 ; SELECT pg_sleep(5)",
    "$$ ) ; DELETE FROM embeddings ; --",
]


def test_search_treats_hostile_text_as_words_and_refuses_document_ids_that_are_not_numbers(two_tenants):
    a, b = two_tenants
    target = tenant_services.tenant_target(a.user)
    embedding = [0.0] * 383 + [1.0]
    with get_registry().connection(target) as connection:
        for query in HOSTILE_QUERIES:
            hits = fulltext_search(connection, query, [a.document.id], 5)
            assert {hit.document_id for hit in hits} <= {a.document.id}
            hits = hybrid_search(connection, embedding, query, [a.document.id], 5)
            assert {hit.document_id for hit in hits} <= {a.document.id}
        assert [h.document_id for h in fulltext_search(connection, "lamp cleaned dawn", [a.document.id], 5)][:1] == [
            a.document.id
        ]
        for ids in (["1) OR (1=1"], [f"{a.document.id}; DROP TABLE embeddings"], ["0 OR TRUE"]):
            with pytest.raises(psycopg.DataError):
                fulltext_search(connection, "lamp", ids, 5)
            connection.rollback()
            with pytest.raises(psycopg.DataError):
                vector_search(connection, embedding, ids, 5)
            connection.rollback()

    assert a.rows("SELECT count(*) FROM embeddings") == [(a.document.chunk_count,)]
    assert b.rows("SELECT count(*) FROM embeddings") == [(b.document.chunk_count,)]


# --- hostile text renders inert ---------------------------------------------------------------------------------------


def test_markup_in_titles_pdf_text_and_questions_is_escaped_on_pages_and_json_encoded_in_the_stream(two_tenants):
    _, b = two_tenants
    client = signed_in(b.user)

    dashboard = client.get(reverse("dashboard")).content.decode()
    history = client.get(reverse("chat"), {"c": b.conversation_id}).content.decode()
    document_page = client.get(
        reverse("document_chat", args=[b.document.id]), {"c": b.conversation_id}
    ).content.decode()
    stream = client.post(reverse("chat_stream"), {"question": f"lamp {SCRIPT}", "document": b.document.id})

    for name, html in {"dashboard": dashboard, "history": history, "document page": document_page}.items():
        assert SCRIPT not in html, name
        assert "<img src=x" not in html, name
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dashboard  # the title, shown as text
    assert history.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # the question and the quoted PDF passage
    assert stream["Content-Type"].startswith("text/event-stream")
    events = sse_events(stream)
    assert [kind for kind, _ in events][-1] == "done"
    # JSON strings carry the text as data; the page inserts it with textContent (no innerHTML anywhere).
    assert any(SCRIPT in citation["text"] for citation in events[1][1]["citations"])
    assert any(SCRIPT in citation["title"] for citation in events[1][1]["citations"])
    for path in Path("static/js").glob("*.js"):
        assert "innerHTML" not in path.read_text() and "insertAdjacentHTML" not in path.read_text(), path
