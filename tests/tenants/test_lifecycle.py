"""A tenant's database follows the account: provisioned on sign-up, erased with the account."""

import threading
import time

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from tenants import services
from tenants.crypto import decrypt_credentials
from tenants.models import User, VectorDatabase
from tenants.provisioners import get_provisioner
from tests.helpers import embedding_model_of, personal_workspace, wait_for_database_status
from vectordb.schema import latest_schema_version

Status = VectorDatabase.Status


def _database_exists(admin_dsn: str, name: str) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        return bool(admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


@pytest.fixture
def erase_tenants_afterwards():
    yield
    for vector_database in VectorDatabase.objects.exclude(status=Status.DELETED):
        services.vector_database_deprovision(vector_database.id)


@pytest.mark.django_db(transaction=True)
def test_sign_up_provisions_a_dedicated_database_through_a_celery_worker(
    client, celery_worker, admin_dsn, erase_tenants_afterwards
):
    client.post(
        reverse("account_signup"),
        {"email": "ada@example.com", "password1": "analytical engine 1843", "password2": "analytical engine 1843"},
    )

    payload = wait_for_database_status(client, {"ready", "failed"})

    assert payload["status"] == "ready", payload
    assert payload["schema_version"] == latest_schema_version()
    vector_database = VectorDatabase.objects.get(workspace__owner__email="ada@example.com")
    assert vector_database.attempts == 1
    credentials = decrypt_credentials(vector_database.encrypted_credentials)
    with psycopg.connect(credentials["dsn"]) as tenant:
        role = tenant.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert role == (False,)  # tenant traffic never runs as a superuser
    assert embedding_model_of(credentials["dsn"]) == (vector_database.embedding_model, 384)
    # Credentials are encrypted at rest and never reach the browser.
    assert credentials["dsn"].split("@")[0].split(":")[-1] not in vector_database.encrypted_credentials
    assert "postgresql://" not in str(payload)
    account = client.get(reverse("account")).content.decode()  # the database's facts are on the account page
    assert "<dt>Size</dt><dd>7." in account or "<dt>Size</dt><dd>8." in account  # ~7.9 MB, pgvector included


@pytest.mark.django_db(transaction=True)
def test_dashboard_shows_the_database_status(client, owner, erase_tenants_afterwards):
    client.force_login(owner)
    VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres", status=Status.PROVISIONING)

    page = client.get(reverse("dashboard"))

    assert page.status_code == 200
    assert b'id="database-status"' in page.content
    assert b"Provisioning" in page.content
    assert client.get(reverse("database_status")).json()["busy"] is True


@pytest.mark.django_db(transaction=True)
def test_provisioning_the_same_tenant_from_two_workers_at_once_yields_one_database(
    owner, admin_dsn, erase_tenants_afterwards
):
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    results, errors = [], []

    def provision():
        from django.db import connection

        try:
            results.append(services.vector_database_provision(vector_database.id).status)
        except Exception as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=provision) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert results == ["ready", "ready"]
    vector_database.refresh_from_db()
    assert vector_database.attempts == 1
    assert [name for _, name in get_provisioner().list_databases()].count(vector_database.external_id) == 1


@pytest.mark.django_db(transaction=True)
def test_a_failed_provisioning_is_reported_and_can_be_retried(client, owner, settings, erase_tenants_afterwards):
    vector_database = VectorDatabase.objects.create(
        workspace=personal_workspace(owner), provider="postgres", region="mars-1"
    )

    with pytest.raises(services.ProvisioningFailed):
        services.vector_database_provision(vector_database.id)

    vector_database.refresh_from_db()
    assert vector_database.status == Status.FAILED
    client.force_login(owner)
    payload = client.get(reverse("database_status")).json()
    assert payload["can_retry"] is True
    assert payload["error"] == services.USER_FACING_PROVISIONING_ERROR
    assert "mars-1" not in payload["error"]  # internal details stay in the logs

    VectorDatabase.objects.filter(id=vector_database.id).update(region="local")
    response = client.post(reverse("database_retry"))

    assert response.status_code == 302
    vector_database.refresh_from_db()
    assert vector_database.status == Status.PENDING
    assert services.vector_database_provision(vector_database.id).status == Status.READY


@pytest.mark.django_db(transaction=True)
def test_deleting_the_account_erases_the_database_and_the_user(client, celery_worker, admin_dsn):
    client.post(
        reverse("account_signup"),
        {"email": "grace@example.com", "password1": "compiler pioneer 1952", "password2": "compiler pioneer 1952"},
    )
    wait_for_database_status(client, {"ready"})
    vector_database = VectorDatabase.objects.get(workspace__owner__email="grace@example.com")
    assert _database_exists(admin_dsn, vector_database.external_id)

    wrong = client.post(reverse("account_delete"), {"confirm_email": "someone@else.com"})
    assert wrong.status_code == 302
    assert User.objects.filter(email="grace@example.com", is_active=True).exists()

    client.post(reverse("account_delete"), {"confirm_email": "grace@example.com"})

    deadline = time.monotonic() + 60
    while User.objects.filter(email="grace@example.com").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not User.objects.filter(email="grace@example.com").exists()
    vector_database.refresh_from_db()
    assert vector_database.status == Status.DELETED
    assert vector_database.workspace is None
    assert vector_database.encrypted_credentials == ""
    assert not _database_exists(admin_dsn, vector_database.external_id)
    # Erasing twice is harmless.
    assert services.tenant_erase(999_999) is False


@pytest.mark.django_db(transaction=True)
def test_tenants_command_adds_shows_and_removes_a_tenant(capsys, admin_dsn):
    call_command("tenants", "add", "ops@example.com", "--region", "local")
    vector_database = VectorDatabase.objects.get(workspace__owner__email="ops@example.com")
    assert vector_database.status == Status.READY
    assert "ops@example.com: ready" in capsys.readouterr().out

    call_command("tenants", "show", "ops@example.com", "--json")
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "ready"
    assert shown["region"] == "local"
    assert shown["external_id"] == vector_database.external_id
    assert shown["schema_version"] == latest_schema_version()
    assert shown["size_bytes"] > 1_000_000
    assert "dsn" not in shown and "password" not in json.dumps(shown)

    call_command("tenants", "dsn", "ops@example.com")
    dsn = capsys.readouterr().out.strip()
    with psycopg.connect(dsn) as tenant:
        assert tenant.execute("SELECT current_database()").fetchone() == (vector_database.external_id,)

    call_command("tenants", "list")
    header, *rows, _count = capsys.readouterr().out.splitlines()
    listed = next(row for row in rows if "ops@example.com" in row)
    # Columns line up under their headers, however long the schema name ("0004_conversation_started_by_shared").
    assert listed.index("postgres") == header.index("provider")
    assert listed.index(latest_schema_version()) == header.index("schema")

    call_command("tenants", "remove", "ops@example.com")
    assert not User.objects.filter(email="ops@example.com").exists()
    assert not _database_exists(admin_dsn, vector_database.external_id)

    with pytest.raises(CommandError, match="no user with email"):
        call_command("tenants", "show", "ops@example.com")


@pytest.mark.django_db(transaction=True)
def test_reconcile_reports_orphans_and_missing_databases_then_fixes_them(owner, capsys, erase_tenants_afterwards):
    provisioner = get_provisioner()
    orphan = provisioner.create("orphan" + owner.email[:3], "local")
    tracked = services.vector_database_provision(
        VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres").id
    )
    provisioner.delete(tracked.external_id, tracked.server)  # gone behind the registry's back

    with pytest.raises(CommandError, match="disagree"):
        call_command("tenants", "reconcile")
    report = capsys.readouterr().out
    assert f"orphan: {orphan.external_id}" in report
    assert f"missing: tenant {tracked.tenant_key}" in report

    call_command("tenants", "reconcile", "--apply")
    assert orphan.external_id not in [name for _, name in provisioner.list_databases()]
    tracked.refresh_from_db()
    # Queued for provisioning again (a running worker may already have picked it up).
    assert tracked.status in {Status.PENDING, Status.PROVISIONING, Status.READY}
    assert services.vector_database_provision(tracked.id).status == Status.READY
    call_command("tenants", "reconcile")
    assert "registry and provider agree" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_erasing_a_tenant_whose_provisioning_died_before_recording_its_database_drops_that_database(owner, admin_dsn):
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    VectorDatabase.objects.filter(id=vector_database.id).update(status=Status.PROVISIONING, attempts=1)
    made = get_provisioner("postgres").create(vector_database.tenant_key)  # then the worker died
    assert _database_exists(admin_dsn, made.external_id)

    assert services.tenant_erase(owner.id) is True

    assert not _database_exists(admin_dsn, made.external_id)
    vector_database.refresh_from_db()
    assert vector_database.status == Status.DELETED
