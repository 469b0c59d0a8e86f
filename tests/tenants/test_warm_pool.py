"""The warm pool: databases created, migrated and checked ahead of sign-up, claimed by a sign-up with new credentials,
kept full by the worker, covered by the fleet's migrations, reconcile and the `tenants pool` command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from config.settings_paths import BASE_DIR
from tenants import services
from tenants.crypto import decrypt_credentials, encrypt_credentials
from tenants.models import User, VectorDatabase
from tenants.provisioners import get_provisioner
from tests.emulators.neon import NeonEmulator
from tests.helpers import embedding_model_of, neon_settings_for, personal_workspace
from vectordb.schema import latest_schema_version

Status = VectorDatabase.Status
REGION = "local"  # the embedded server's region (TENANT_DEFAULT_REGION in tests)


@pytest.fixture(autouse=True)
def private_task_queue():
    """Tasks a claim enqueues (its rotation, a refill) go to a queue nobody serves: the test runs the services
    itself, and the session's worker, if one runs, must not refill the pool behind its back."""
    from config.celery import app

    name = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-pool-{uuid.uuid4().hex[:8]}"
    default_queue = app.conf.task_default_queue
    app.conf.task_default_queue = name
    yield name
    app.conf.task_default_queue = default_queue
    with app.connection_for_write() as connection:
        connection.default_channel.queue_delete(name)
        connection.default_channel.queue_delete(f"{name}-provisioning")


@pytest.fixture
def erase_databases_afterwards():
    yield
    for row in VectorDatabase.objects.exclude(status=Status.DELETED):
        services.vector_database_deprovision(row.id)


@pytest.fixture
def pool_of(settings, transactional_db, erase_databases_afterwards):
    """Fill the region's pool with `size` databases, as `tenants pool fill` does; the pooled rows, oldest first."""

    def fill(size: int) -> list[VectorDatabase]:
        settings.TENANT_WARM_POOL_SIZE = size
        [refill] = services.tenant_pool_refill(REGION)
        assert (refill.created, refill.failed, refill.stopped) == (size, 0, "")
        return list(VectorDatabase.objects.filter(status=Status.POOLED).order_by("id"))

    return fill


def run_command(*arguments: str) -> str:
    out = io.StringIO()
    call_command("tenants", *arguments, stdout=out)
    return out.getvalue()


def sign_up(email: str) -> VectorDatabase:
    """What a sign-up does, with the task's work run here: request a database, then provision (or rotate) it."""
    tenant = User.objects.create_user(email=email, password="a long enough password")
    requested = services.vector_database_request(tenant)
    return services.vector_database_provision(requested.id)


def can_log_in(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def dsn_of(row: VectorDatabase) -> str:
    row.refresh_from_db()
    return decrypt_credentials(row.encrypted_credentials)["dsn"]


def test_fill_makes_pooled_databases_owned_by_nobody_at_the_latest_schema(pool_of):
    pooled = pool_of(2)

    assert len(pooled) == 2
    for row in pooled:
        assert (row.workspace, row.claimed_at, row.provider, row.region) == (None, None, "postgres", REGION)
        assert row.schema_version == latest_schema_version()
        assert embedding_model_of(dsn_of(row)) == (row.embedding_model, row.embedding_dimensions)
        assert (row.embedding_model, row.embedding_dimensions) == (
            django_settings.EMBEDDING_MODEL,
            django_settings.EMBEDDING_DIMENSIONS,
        )
    status = json.loads(run_command("pool", "status", "--json"))
    assert status == [
        {"provider": "postgres", "region": REGION, "target": 2, "pooled": 2, "filling": 0, "stale": 0, "quota_note": ""}
    ]
    # Full: filling again makes nothing.
    assert "postgres/local: 0 created, 0 migrated, 0 removed" in run_command("pool", "fill")


def test_a_sign_up_claims_a_pooled_database_and_its_old_password_stops_working(pool_of):
    [pooled] = pool_of(1)
    pool_password_dsn = dsn_of(pooled)
    assert can_log_in(pool_password_dsn)

    ready = sign_up("ada@example.com")

    assert ready.id == pooled.id  # the pooled row itself, now the personal workspace's
    assert ready.workspace is not None and ready.workspace.personal
    assert (ready.status, ready.workspace.owner.email, ready.rotation_pending) == (
        Status.READY,
        "ada@example.com",
        False,
    )
    assert ready.claimed_at is not None
    assert ready.attempts == pooled.attempts  # nothing was created for it
    assert not can_log_in(pool_password_dsn)
    assert can_log_in(dsn_of(ready))
    assert VectorDatabase.objects.filter(status=Status.POOLED).count() == 0
    # The tenant reaches it through the app's one door.
    assert services.tenant_target(ready.workspace).key == pooled.tenant_key


def test_a_claim_is_one_statement_and_the_new_password_is_stored_only_as_a_cheap_scram_verifier(pool_of, admin_dsn):
    [pooled] = pool_of(1)
    tenant = User.objects.create_user(email="ada@example.com")
    workspace = personal_workspace(tenant)

    with CaptureQueriesContext(connection) as claim:
        claimed = services.vector_database_claim(workspace, REGION)
    ready = services.vector_database_provision(claimed.id)

    # Lock, bind and return the row in one round trip (no BEGIN, SELECT, UPDATE, COMMIT).
    assert [query["sql"].split()[0] for query in claim.captured_queries] == ["UPDATE"]
    assert (claimed.id, claimed.workspace_id, claimed.status, claimed.rotation_pending) == (
        pooled.id,
        workspace.id,
        Status.PENDING,
        True,
    )
    password = psycopg.conninfo.conninfo_to_dict(dsn_of(ready))["password"]
    with psycopg.connect(admin_dsn) as admin:
        [stored] = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [ready.external_id]).fetchone()
    # The server never saw the password: it keeps the verifier we made, 16 iterations for 256 random bits.
    assert stored.startswith("SCRAM-SHA-256$16:") and password not in stored
    assert can_log_in(dsn_of(ready))


def test_tenants_add_claims_from_the_pool_as_sign_up_does(pool_of):
    [pooled] = pool_of(1)

    out = run_command("add", "grace@example.com")

    assert out.splitlines()[-1] == f"grace@example.com: ready (postgres, {pooled.external_id})"
    row = VectorDatabase.objects.get(workspace__owner__email="grace@example.com", workspace__personal=True)
    assert (row.id, row.status) == (pooled.id, Status.READY)
    assert row.claimed_at is not None


def test_an_empty_pool_falls_back_to_creating_a_database(settings, transactional_db, erase_databases_afterwards):
    settings.TENANT_WARM_POOL_SIZE = 3  # a pool is configured, but nothing has filled it yet

    ready = sign_up("ada@example.com")

    assert (ready.status, ready.claimed_at, ready.attempts) == (Status.READY, None, 1)
    assert ready.schema_version == latest_schema_version()


def test_a_region_without_a_pool_gets_nothing_from_another_regions_pool(pool_of):
    [pooled] = pool_of(1)
    tenant = User.objects.create_user(email="ada@example.com")

    assert services.vector_database_claim(personal_workspace(tenant), "eu-west") is None

    pooled.refresh_from_db()
    assert (pooled.status, pooled.workspace) == (Status.POOLED, None)
    assert not VectorDatabase.objects.filter(workspace__owner=tenant).exists()


def test_a_tenant_who_has_a_database_claims_nothing_more(pool_of):
    [pooled] = pool_of(1)
    first = sign_up("ada@example.com")

    again = services.vector_database_request(first.workspace)

    assert again.id == first.id
    assert VectorDatabase.objects.filter(workspace=first.workspace).count() == 1
    assert first.id == pooled.id


def test_drain_erases_every_pooled_database_and_leaves_tenants_alone(pool_of, admin_dsn):
    pooled = pool_of(3)
    tenant_row = sign_up("ada@example.com")  # takes the first pooled database

    assert run_command("pool", "drain").strip() == "2 pooled database(s) erased"

    assert VectorDatabase.objects.filter(status=Status.POOLED).count() == 0
    existing = {external_id for _, external_id in get_provisioner().list_databases()}
    assert existing & {row.external_id for row in pooled} == {tenant_row.external_id}
    assert can_log_in(dsn_of(tenant_row))


def test_the_fleet_migration_migrates_pooled_databases_too(pool_of, settings, admin_dsn):
    [pooled] = pool_of(1)
    settings.MIGRATION_MODULES = {"vectordb": "tests.vectordb.fleet_migrations"}
    try:
        out = io.StringIO()
        call_command("migrate_tenants", stdout=out, stderr=io.StringIO())

        assert f"pool:{pooled.tenant_key}" in out.getvalue()
        pooled.refresh_from_db()
        assert (pooled.status, pooled.schema_version) == (Status.POOLED, "0003_embedding_language")
        with psycopg.connect(dsn_of(pooled)) as connection:
            columns = {row[0] for row in connection.execute("SELECT column_name FROM information_schema.columns "
                                                             "WHERE table_name = 'embeddings'")}  # fmt: skip
        assert "language" in columns
    finally:
        _drop_template(admin_dsn)


def test_reconcile_finds_a_pooled_database_gone_from_its_server_and_drops_it_from_the_pool(pool_of, admin_dsn):
    gone, kept = pool_of(2)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{gone.external_id}" WITH (FORCE)')

    report = services.tenants_reconcile()

    assert (report.pooled_missing, report.missing, report.orphans) == ([gone.tenant_key], [], [])
    with pytest.raises(CommandError, match="disagree"):
        run_command("reconcile")
    out = run_command("reconcile", "--apply")
    assert f"missing: pooled database {gone.tenant_key} is gone from its server" in out
    assert f"fixed: removed {gone.tenant_key} from the pool" in out
    gone.refresh_from_db()
    kept.refresh_from_db()
    assert (gone.status, kept.status) == (Status.DELETED, Status.POOLED)
    assert services.tenants_reconcile().clean


def test_reconcile_reports_a_pool_row_that_never_became_ready(pool_of):
    stuck = VectorDatabase.objects.create(provider="postgres", region=REGION, status=Status.PROVISIONING)

    report = services.tenants_reconcile(stuck_after_seconds=-1)

    assert (report.pooled_stuck, report.stuck) == ([stuck.tenant_key], [])
    services.tenants_reconcile(apply=True, stuck_after_seconds=-1)
    stuck.refresh_from_db()
    assert stuck.status == Status.DELETED


def test_a_pool_larger_than_its_target_shrinks_at_the_next_refill(pool_of, settings):
    pool_of(3)
    settings.TENANT_WARM_POOL_SIZE = 1

    [refill] = services.tenant_pool_refill(REGION)

    assert (refill.created, refill.removed) == (0, 2)
    assert VectorDatabase.objects.filter(status=Status.POOLED).count() == 1


def test_the_admin_lists_the_pool_without_credentials(pool_of, client, django_user_model):
    pooled = pool_of(2)
    operator = django_user_model.objects.create_superuser(email="ops@example.com", password="operator pass 123")
    client.force_login(operator)

    page = client.get(reverse("admin:tenants_vectordatabase_changelist"), {"status__exact": "pooled"}).content.decode()

    assert "2 vector databases" in page
    for row in pooled:
        assert row.tenant_key in page
        assert decrypt_credentials(row.encrypted_credentials)["dsn"].split(":")[2].split("@")[0] not in page
    assert page.count('<td class="field-status">Pooled</td>') == 2


def test_pool_settings_from_the_environment_refuse_malformed_values():
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
             "TENANT_WARM_POOL_REGION_SIZES": '{"eu": -1}'},
        capture_output=True,
        text=True,
    )  # fmt: skip

    assert result.returncode != 0
    assert "TENANT_WARM_POOL_REGION_SIZES must be an object" in result.stderr


def _drop_template(admin_dsn: str) -> None:
    from tenants.provisioners.postgres import TEMPLATE_DATABASE

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DATABASE} WITH (FORCE)")
    get_provisioner()._templates_ready.clear()


# --- Neon -----------------------------------------------------------------------------------------------------------

NEON_REGION = "aws-us-east-2"


@pytest.fixture
def neon(admin_dsn):
    emulator = NeonEmulator(admin_dsn, operation_delay_seconds=0.05, retry_after_seconds=0)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def neon_pool(neon, settings, transactional_db):
    for name, value in neon_settings_for(neon, NEON_REGION=NEON_REGION).items():
        setattr(settings, name, value)
    settings.TENANT_WARM_POOL_REGION_SIZES = {}
    return settings


def test_on_neon_a_claimed_project_is_renamed_for_its_tenant_and_its_password_reset(neon, neon_pool):
    neon_pool.TENANT_WARM_POOL_SIZE = 1
    [refill] = services.tenant_pool_refill(NEON_REGION)
    assert refill.created == 1
    pooled = VectorDatabase.objects.get(status=Status.POOLED)
    assert neon.project_names() == [f"silo-pool-{pooled.tenant_key}"]
    pool_password_dsn = dsn_of(pooled)

    ready = sign_up("ada@example.com")

    assert (ready.id, ready.status, ready.external_id) == (pooled.id, Status.READY, pooled.external_id)
    assert neon.project_names() == [f"silo-{pooled.tenant_key}"]
    resets = neon.requests_matching("POST", f"/projects/{pooled.external_id}/branches/")
    assert [(r.path.rsplit("/", 1)[-1], r.status) for r in resets] == [("reset_password", 200)]
    # The claim's requests: the rename, the reset (on the branch kept from the create answer), the polls for its
    # operation; the new URIs are the old ones with the reset's password, so no branch list or URI look-up.
    claim_requests = [r for r in neon.requests if r.path.startswith(f"/projects/{pooled.external_id}")]
    claim_requests = claim_requests[[r.method for r in claim_requests].index("PATCH") :]
    polls = [r for r in claim_requests if r.method == "GET"]
    assert [r.method for r in claim_requests] == ["PATCH", "POST"] + ["GET"] * len(polls)
    assert polls and all(r.path.split("?")[0].endswith("/operations") for r in polls)
    assert not can_log_in(pool_password_dsn)
    assert can_log_in(dsn_of(ready))
    assert get_provisioner().locate(pooled.tenant_key) == ("neon", pooled.external_id)
    assert services.tenants_reconcile().clean


def test_on_neon_a_pooled_project_kept_without_its_branch_id_is_still_rotated(neon, neon_pool):
    neon_pool.TENANT_WARM_POOL_SIZE = 1
    services.tenant_pool_refill(NEON_REGION)
    pooled = VectorDatabase.objects.get(status=Status.POOLED)
    credentials = decrypt_credentials(pooled.encrypted_credentials)
    assert credentials.pop("branch_id")  # kept from the create answer
    pooled.encrypted_credentials = encrypt_credentials(credentials)  # as pooled before the branch id was kept
    pooled.save(update_fields=["encrypted_credentials"])

    ready = sign_up("ada@example.com")

    assert (ready.id, ready.status) == (pooled.id, Status.READY)
    assert len(neon.requests_matching("GET", f"/projects/{pooled.external_id}/branches")) == 1  # looked up once
    assert not can_log_in(credentials["dsn"])
    assert can_log_in(dsn_of(ready))
    assert decrypt_credentials(ready.encrypted_credentials)["branch_id"]  # kept for next time


def test_on_neon_the_project_quota_stops_the_refill_with_headroom_and_says_so(neon, neon_pool):
    neon_pool.TENANT_WARM_POOL_SIZE = 5
    neon_pool.NEON_PROJECTS_LIMIT = 4
    neon_pool.TENANT_WARM_POOL_QUOTA_HEADROOM = 2

    [refill] = services.tenant_pool_refill(NEON_REGION)

    assert refill.created == 2  # 4 projects allowed, 2 kept free for sign-ups
    assert "Neon's project quota" in refill.stopped
    assert len(neon.project_ids) == 2
    [state] = [s for s in services.tenant_pool_status() if s.region == NEON_REGION]
    assert (state.pooled, state.target) == (2, 5)
    assert "NEON_PROJECTS_LIMIT=4" in state.quota_note
    for row in VectorDatabase.objects.exclude(status=Status.DELETED):
        services.vector_database_deprovision(row.id)


def test_on_neon_a_refused_project_stops_the_refill_and_leaves_no_failed_row(neon, neon_pool):
    neon_pool.TENANT_WARM_POOL_SIZE = 3
    neon.projects_limit = 1  # the plan's limit, which we did not configure

    [refill] = services.tenant_pool_refill(NEON_REGION)

    assert (refill.created, refill.failed) == (1, 1)
    assert "Neon refused another project" in refill.stopped
    assert VectorDatabase.objects.filter(status=Status.FAILED).count() == 0
    assert VectorDatabase.objects.filter(status=Status.POOLED).count() == 1
    for row in VectorDatabase.objects.exclude(status=Status.DELETED):
        services.vector_database_deprovision(row.id)
