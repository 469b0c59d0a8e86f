"""Tenant credentials stay secret: the passwords in the registry's (decrypted) DSNs never appear in logs (provisioning,
ingest in-process and in a worker, chat, migrate_tenants, reconcile), error pages, any page or JSON of the app
(including the admin), or the repr() of the objects that carry them."""

from __future__ import annotations

import io
import json
import logging
import time

import psycopg
import pytest
from django.contrib import admin
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from chat import services as chat_services
from documents import services as document_services
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import VectorDatabase
from tenants.provisioners import ProvisionedDatabase
from tests.helpers import personal_workspace
from tests.reliability.test_isolation import text_pdf
from vectordb.connections import TenantTarget, get_registry
from vectordb.fleet import FleetMember
from vectordb.schema import schema_target

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

PAGES = ["The keeper's log: the lamp is cleaned at dawn, the fog horn sounds every thirty seconds in fog."]


def secrets_of(database: VectorDatabase) -> list[str]:
    credentials = tenant_services.vector_database_credentials(VectorDatabase.objects.get(id=database.id))
    found = [conninfo_to_dict(dsn).get("password", "") for dsn in (credentials["dsn"], credentials["migration_dsn"])]
    assert all(len(password) >= 16 for password in found)  # real, random passwords: a substring match is meaningful
    return sorted(set(found))


def assert_free_of(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a tenant password appears in {where}"


@pytest.fixture
def tenant(owner, settings, tmp_path, caplog):
    """The owner with a provisioned database, a ready document and a conversation; all of it logged at DEBUG."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.OPENAI_API_KEY = ""
    caplog.set_level(logging.DEBUG)
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    database = tenant_services.vector_database_provision(row.id)
    assert database.status == VectorDatabase.Status.READY, database.last_error
    document = document_services.document_upload(owner, ContentFile(text_pdf(PAGES), name="log.pdf"), enqueue=False)
    document_services.document_ingest(document.id)
    events = list(chat_services.chat_turn(owner, "When is the lamp cleaned?"))
    assert events[-1].kind == "done", events
    yield database, document, events[0].data["id"]
    if VectorDatabase.objects.filter(id=database.id).exclude(status=VectorDatabase.Status.DELETED).exists():
        tenant_services.vector_database_deprovision(database.id)


@pytest.mark.timeout(300)  # includes a round trip through the session's worker (model load on a cold worker)
def test_no_log_line_carries_a_tenant_password(tenant, owner, caplog, celery_worker):
    database, _, _ = tenant
    secrets = secrets_of(database)
    # A login the server refuses is logged (with the DSN, redacted) before fresh credentials are fetched.
    get_registry().close_all()
    with psycopg.connect(tenant_services.vector_database_credentials(database)["migration_dsn"], autocommit=True) as c:
        c.execute(
            sql.SQL("ALTER ROLE {} PASSWORD 'rotated-by-the-test-0123456789'").format(
                sql.Identifier(database.external_id)
            )
        )
    assert list(chat_services.chat_turn(owner, "And the fog horn?"))[-1].kind == "done"
    secrets = sorted({*secrets, *secrets_of(database), "rotated-by-the-test-0123456789"})
    out = io.StringIO()
    call_command("migrate_tenants", stdout=out, stderr=out)
    report = tenant_services.tenants_reconcile()
    call_command("tenants", "list", stdout=out)
    call_command("tenants", "show", owner.email, stdout=out)
    # And through a real worker, whose log file is read back.
    log_file = celery_worker.log_path
    offset = log_file.stat().st_size
    queued = document_services.document_upload(owner, ContentFile(text_pdf([*PAGES, "Logbook."]), name="worker.pdf"))
    deadline = time.monotonic() + 120
    while Document.objects.get(id=queued.id).is_busy:
        assert time.monotonic() < deadline, "the worker never ingested the document"
        time.sleep(0.2)
    queued.file.delete(save=False)

    assert any("login refused" in record.getMessage() for record in caplog.records)
    assert_free_of(caplog.text, secrets, "the captured logs")
    assert_free_of(out.getvalue(), secrets, "command output")
    assert_free_of(repr(report), secrets, "the reconcile report")
    assert_free_of(log_file.read_bytes()[offset:].decode(errors="replace"), secrets, "the worker's log")


def test_an_error_page_with_debug_off_shows_no_credentials(tenant, owner, admin_dsn, settings, caplog):
    database, _, _ = tenant
    secrets = secrets_of(database)
    settings.DEBUG = False
    get_registry().close_all()  # no pooled connection to fall back on
    identifier = sql.Identifier(database.external_id)
    with psycopg.connect(admin_dsn, autocommit=True) as server:
        server.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(identifier))
        try:
            client = Client(raise_request_exception=False)
            client.force_login(owner)
            page = client.get(reverse("chat"))
            export = client.get(reverse("account_export"))
        finally:
            server.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(identifier))

    # Issue 14: both now say the database cannot be reached (the chat page in place, the export on the account page).
    assert (page.status_code, export.status_code) == (200, 302)
    for response in (page, export):
        body = response.content.decode()
        assert_free_of(body, secrets, "an error page")
        assert "Traceback" not in body and database.external_id not in body
    assert_free_of(caplog.text, secrets, "the error's log record")


def test_no_page_or_json_of_the_app_or_the_admin_shows_a_tenant_password(tenant, owner, django_user_model):
    database, document, conversation_id = tenant
    secrets = secrets_of(database)
    client = Client()
    client.force_login(owner)
    urls = [
        reverse("dashboard"), reverse("chat"), f"{reverse('chat')}?c={conversation_id}",
        reverse("document_chat", args=[document.id]), reverse("documents_status"), reverse("database_status"),
        reverse("account"), reverse("account_export"),
    ]  # fmt: skip
    pages = {url: client.get(url) for url in urls}
    superuser = django_user_model.objects.create_superuser(email="root@example.com", password="root password here")
    staff = Client()
    staff.force_login(superuser)
    admin_urls = [reverse("admin:index")]
    for model in admin.site._registry:
        info = model._meta.app_label, model._meta.model_name
        admin_urls.append(reverse("admin:%s_%s_changelist" % info))
        admin_urls += [
            reverse("admin:%s_%s_change" % info, args=[pk]) for pk in model.objects.values_list("pk", flat=True)
        ]
    pages.update({url: staff.get(url) for url in admin_urls})

    assert {url: response.status_code for url, response in pages.items()} == dict.fromkeys(pages, 200)
    assert VectorDatabase in admin.site._registry  # the registry is in the admin, credentials excluded
    assert reverse("admin:tenants_vectordatabase_change", args=[database.id]) in pages
    for url, response in pages.items():
        assert_free_of(response.content.decode(), secrets, url)
        assert "encrypted_credentials" not in response.content.decode(), url
    export = json.loads(pages[reverse("account_export")].content)
    assert set(export["database"]) == {"provider", "region", "status"}


def test_the_objects_that_carry_credentials_keep_them_out_of_their_repr(tenant, owner):
    database, _, _ = tenant
    secrets = secrets_of(database)
    credentials = tenant_services.vector_database_credentials(database)
    placed = ProvisionedDatabase(
        external_id=database.external_id, region="local", server="embedded",
        dsn=credentials["dsn"], migration_dsn=credentials["migration_dsn"],
    )  # fmt: skip
    target = tenant_services.tenant_target(owner)
    members = tenant_services.fleet_members()

    assert target.resolve_dsn(False) == credentials["dsn"]
    assert any(member.target.resolve_dsn(False) == credentials["migration_dsn"] for member in members)
    for thing in (
        placed, target, TenantTarget(key="k", resolve_dsn=lambda refresh: credentials["dsn"]), *members,
        FleetMember(label="l", target=schema_target("k", credentials["migration_dsn"])), database, VectorDatabase.objects.get(id=database.id),
    ):  # fmt: skip
        assert_free_of(repr(thing), secrets, f"repr of {type(thing).__name__}")
        assert_free_of(str(thing), secrets, f"str of {type(thing).__name__}")
