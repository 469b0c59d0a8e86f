"""The tenant lifecycle with TENANT_PROVIDER=neon, against the Neon API emulator: one Neon project per tenant."""

from __future__ import annotations

import time
import uuid

import httpx
import psycopg
import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from tenants import services
from tenants.crypto import decrypt_credentials
from tenants.models import User, VectorDatabase
from tenants.provisioners import get_provisioner
from tenants.tasks import provision_vector_database
from tests.conftest import WORKER_READY_TIMEOUT_SECONDS, CeleryWorker
from tests.emulators.neon import NeonEmulator
from tests.helpers import embedding_model_of, neon_settings_for, personal_workspace, wait_for_database_status
from vectordb.schema import latest_schema_version

Status = VectorDatabase.Status
REGION = "aws-us-east-2"  # not the NEON_REGION default, so the test sees the setting reach the registry


@pytest.fixture
def neon(admin_dsn):
    emulator = NeonEmulator(admin_dsn, operation_delay_seconds=0.2, retry_after_seconds=0)
    emulator.start()
    yield emulator
    emulator.stop()  # drops every project's database and role that a test left behind


@pytest.fixture
def neon_settings(neon, settings):
    for name, value in neon_settings_for(neon, NEON_REGION=REGION).items():
        setattr(settings, name, value)
    return settings


@pytest.fixture(autouse=True)
def task_queue():
    """Tasks enqueued here go to a queue of their own: the session's worker is set up for the postgres provider."""
    from config.celery import app

    name = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-neon-{uuid.uuid4().hex[:8]}"
    default_queue = app.conf.task_default_queue
    app.conf.task_default_queue = name
    yield name
    app.conf.task_default_queue = default_queue
    with app.connection_for_write() as connection:
        # Tasks nobody was meant to run (e.g. reconcile's).
        connection.default_channel.queue_delete(name)
        connection.default_channel.queue_delete(f"{name}-provisioning")


class NeonCeleryWorker(CeleryWorker):
    """The conftest worker on `queue` only; it takes the neon settings from the environment it is spawned with."""

    def __init__(self, database_name: str, log_path, queue: str):
        super().__init__(database_name, log_path)
        self.queue = queue

    def wait_ready(self) -> None:
        # Any worker answers a ping (the session's may be running too): wait for one that consumes our queue.
        from config.celery import app

        deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited; see {self.log_path}")
            replies = app.control.inspect(timeout=0.5).active_queues() or {}
            if any(queue["name"] == self.queue for queues in replies.values() for queue in queues):
                return
        raise RuntimeError(f"celery worker not ready after {WORKER_READY_TIMEOUT_SECONDS}s; see {self.log_path}")


@pytest.fixture
def neon_worker(neon, neon_settings, task_queue, monkeypatch, transactional_db):
    from django.db import connection

    for name, value in neon_settings_for(neon, NEON_REGION=REGION).items():
        monkeypatch.setenv(name, str(value))
    neon_settings.CELERY_TASK_DEFAULT_QUEUE = task_queue  # CeleryWorker.start reads its queue from settings
    worker = NeonCeleryWorker(
        connection.settings_dict["NAME"], django_settings.DATA_DIR / "logs" / "celery-neon-worker.log", task_queue
    )
    worker.start()
    yield worker
    worker.stop()


def _provision(tenant: User) -> VectorDatabase:
    return services.vector_database_provision(
        VectorDatabase.objects.create(workspace=personal_workspace(tenant), provider="neon").id
    )


def _assert_tenant_schema(dsn: str) -> None:
    with psycopg.connect(dsn, connect_timeout=5) as tenant:
        assert tenant.execute("SELECT to_regclass('embeddings') IS NOT NULL").fetchone() == (True,)
        role = tenant.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert role == (False,)  # tenant traffic never runs as a superuser
    assert embedding_model_of(dsn) == (django_settings.EMBEDDING_MODEL, django_settings.EMBEDDING_DIMENSIONS)


@pytest.mark.django_db(transaction=True)
def test_provisioning_makes_a_ready_neon_project_and_records_it_in_the_registry(owner, neon, neon_settings):
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="neon")

    provisioned = services.vector_database_provision(vector_database.id)

    assert provisioned.status == Status.READY
    assert neon.project_names() == [f"silo-{provisioned.tenant_key}"]
    assert (provisioned.provider, provisioned.server, provisioned.external_id) == ("neon", "neon", neon.project_ids[0])
    assert provisioned.region == REGION
    assert provisioned.schema_version == latest_schema_version()
    assert (provisioned.attempts, provisioned.last_error) == (1, "")
    credentials = decrypt_credentials(provisioned.encrypted_credentials)
    assert set(credentials) == {"dsn", "migration_dsn", "branch_id"}  # the branch: for a claim's password reset
    password = psycopg.conninfo.conninfo_to_dict(credentials["dsn"])["password"]
    assert password not in provisioned.encrypted_credentials  # encrypted at rest
    assert "postgresql://" not in provisioned.encrypted_credentials
    with psycopg.connect(credentials["dsn"], connect_timeout=5) as tenant:
        database = tenant.execute("SELECT current_database()").fetchone()[0]
    assert database == neon.physical_database_name(provisioned.external_id)
    _assert_tenant_schema(credentials["dsn"])
    assert len(neon.requests_matching("POST", "/projects")) == 1
    # A first attempt's key is new (random, never reused): no project can have its name, so nothing is searched.
    assert neon.requests_matching("GET", "/projects?") == []


@pytest.mark.django_db(transaction=True)
def test_a_provisioning_retried_after_its_worker_died_finds_the_project_instead_of_making_another(
    owner, neon, neon_settings
):
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="neon")
    # The first attempt got as far as creating the project, then its worker died before recording anything.
    VectorDatabase.objects.filter(id=vector_database.id).update(status=Status.PROVISIONING, attempts=1)
    get_provisioner().create(vector_database.tenant_key, first_attempt=True)

    provisioned = services.vector_database_provision(vector_database.id)

    assert (provisioned.status, provisioned.attempts) == (Status.READY, 2)
    assert neon.project_ids == [provisioned.external_id]
    assert len(neon.requests_matching("POST", "/projects")) == 1
    _assert_tenant_schema(decrypt_credentials(provisioned.encrypted_credentials)["dsn"])


@pytest.mark.django_db(transaction=True)
def test_erasing_a_tenant_whose_provisioning_died_before_recording_its_project_deletes_that_project(
    owner, stranger, neon, neon_settings
):
    kept = _provision(stranger)
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="neon")
    VectorDatabase.objects.filter(id=vector_database.id).update(status=Status.PROVISIONING, attempts=1)
    get_provisioner().create(vector_database.tenant_key, first_attempt=True)  # then the worker died

    assert services.tenant_erase(owner.id) is True

    assert neon.project_ids == [kept.external_id]
    vector_database.refresh_from_db()
    assert vector_database.status == Status.DELETED


@pytest.mark.django_db(transaction=True)
def test_sign_up_provisions_a_neon_project_through_a_celery_worker(client, neon, neon_worker):
    client.post(
        reverse("account_signup"),
        {"email": "ada@example.com", "password1": "analytical engine 1843", "password2": "analytical engine 1843"},
    )

    payload = wait_for_database_status(client, {"ready", "failed"})

    assert payload["status"] == "ready", payload
    assert payload["provider"] == "neon"
    assert payload["schema_version"] == latest_schema_version()
    assert "postgresql://" not in str(payload)
    vector_database = VectorDatabase.objects.get(workspace__owner__email="ada@example.com")
    assert (vector_database.provider, vector_database.region, vector_database.attempts) == ("neon", REGION, 1)
    assert neon.project_names() == [f"silo-{vector_database.tenant_key}"]
    assert vector_database.external_id == neon.project_ids[0]
    _assert_tenant_schema(decrypt_credentials(vector_database.encrypted_credentials)["dsn"])


@pytest.mark.django_db(transaction=True)
def test_erasing_a_tenant_deletes_its_neon_project_and_nobody_elses(owner, stranger, neon, neon_settings):
    erased = _provision(owner)
    kept = _provision(stranger)
    erased_dsn = decrypt_credentials(erased.encrypted_credentials)["dsn"]
    psycopg.connect(erased_dsn, connect_timeout=5).close()

    assert services.tenant_erase(owner.id) is True

    assert neon.project_ids == [kept.external_id]
    assert [r.status for r in neon.requests_matching("DELETE", f"/projects/{erased.external_id}")] == [200]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(erased_dsn, connect_timeout=5)
    erased.refresh_from_db()
    assert (erased.status, erased.workspace, erased.encrypted_credentials) == (Status.DELETED, None, "")
    assert not User.objects.filter(id=owner.id).exists()
    _assert_tenant_schema(decrypt_credentials(kept.encrypted_credentials)["dsn"])
    # Erasing again is harmless and asks Neon nothing.
    assert services.tenant_erase(owner.id) is False
    assert len(neon.requests_matching("DELETE", "/projects/")) == 1


@pytest.mark.django_db(transaction=True)
def test_reconcile_reports_an_orphan_project_and_a_missing_one_then_fixes_them(owner, neon, neon_settings):
    provisioner = get_provisioner()
    orphan = provisioner.create("orphan-of-a-crash")
    tracked = _provision(owner)
    provisioner.delete(tracked.external_id, tracked.server)  # gone behind the registry's back
    with httpx.Client(base_url=neon.base_url, headers={"Authorization": f"Bearer {neon.api_key}"}) as api:
        foreign = api.post("/projects", json={"project": {"name": "not-ours"}}).json()["project"]["id"]
    names_before = sorted(neon.project_names())

    report = services.tenants_reconcile()

    assert report.orphans == [("neon", orphan.external_id)]
    assert report.missing == [tracked.tenant_key]
    assert (report.stuck, report.fixed) == ([], [])
    assert sorted(neon.project_names()) == names_before  # a dry run changes nothing

    applied = services.tenants_reconcile(apply=True)

    assert applied.fixed == [f"deleted orphan {orphan.external_id}", f"re-provisioning {tracked.tenant_key}"]
    assert neon.project_ids == [foreign]  # a project without our prefix is never touched
    tracked.refresh_from_db()
    assert tracked.status == Status.PENDING  # queued for provisioning again
    services.vector_database_provision(tracked.id)  # what the queued task does
    assert services.tenants_reconcile().clean
    assert sorted(neon.project_names()) == ["not-ours", f"silo-{tracked.tenant_key}"]


@pytest.mark.django_db(transaction=True)
def test_a_full_neon_plan_marks_the_database_failed_and_is_not_retried(owner, neon, neon_settings, caplog):
    neon.projects_limit = 0
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="neon")

    # The real task, run in this process: a retry would show as a second attempt and a second POST.
    outcome = provision_vector_database.apply(args=[vector_database.id])

    assert outcome.get() == Status.FAILED
    vector_database.refresh_from_db()
    assert vector_database.status == Status.FAILED
    # The user reads a plain sentence; the operator finds Neon's own words in the log.
    assert vector_database.last_error == services.QUOTA_MESSAGE
    assert "the plan's project limit is reached" in caplog.text
    assert vector_database.attempts == 1
    assert [r.status for r in neon.requests_matching("POST", "/projects")] == [422]
    assert neon.project_ids == []
