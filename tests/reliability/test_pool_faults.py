"""The warm pool under faults: sign-ups racing for its last database, a worker killed between a claim and the
credential rotation, a pooled database gone from its server, and schema changes while databases wait in the pool.
Every sign-up still ends with a ready database of its own, and nobody connects with a pooled database's old password."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psycopg
import pytest
from django.db import connection

from config.settings_paths import BASE_DIR
from tenants import services
from tenants.models import User, VectorDatabase
from tests.conftest import _worker_environment
from tests.emulators.neon import NeonEmulator
from tests.helpers import neon_settings_for, personal_workspace
from tests.tenants.test_warm_pool import (  # noqa: F401  (fixtures)
    REGION,
    _drop_template,
    can_log_in,
    dsn_of,
    erase_databases_afterwards,
    pool_of,
    private_task_queue,
    sign_up,
)
from vectordb.schema import latest_schema_version

Status = VectorDatabase.Status
RACERS = 6


def test_sign_ups_racing_for_the_last_pooled_database_one_gets_it_the_others_fall_back(pool_of):
    [last] = pool_of(1)
    tenants = [User.objects.create_user(email=f"racer{n}@example.com") for n in range(RACERS)]
    start = threading.Barrier(RACERS)
    requested: dict[str, int] = {}

    def request(tenant: User) -> None:
        try:
            start.wait()
            requested[tenant.email] = services.vector_database_request(tenant).id
        finally:
            connection.close()

    threads = [threading.Thread(target=request, args=(tenant,)) for tenant in tenants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    rows = VectorDatabase.objects.filter(workspace__owner__in=tenants)
    assert rows.count() == RACERS and len(set(requested.values())) == RACERS
    claimed = [row for row in rows if row.claimed_at is not None]
    assert [row.id for row in claimed] == [last.id]  # exactly one took it
    assert sorted(row.status for row in rows if row.claimed_at is None) == [Status.PENDING] * (RACERS - 1)
    ready = [services.vector_database_provision(row.id) for row in rows]
    assert [row.status for row in ready] == [Status.READY] * RACERS
    assert len({row.external_id for row in ready}) == RACERS


def test_a_pooled_row_locked_by_one_claim_is_skipped_by_another_without_waiting(pool_of, admin_dsn):
    [pooled] = pool_of(1)
    tenant = User.objects.create_user(email="ada@example.com")
    main_database = psycopg.conninfo.make_conninfo(admin_dsn, dbname=connection.settings_dict["NAME"])
    with psycopg.connect(main_database, autocommit=False) as other_claim:
        other_claim.execute("SELECT id FROM vector_databases WHERE id = %s FOR UPDATE", [pooled.id])
        started = time.monotonic()

        assert services.vector_database_claim(personal_workspace(tenant), REGION) is None

        assert time.monotonic() - started < 2  # SKIP LOCKED: no waiting for the other transaction
    pooled.refresh_from_db()
    assert (pooled.status, pooled.workspace) == (Status.POOLED, None)


def test_a_pooled_database_gone_from_its_server_is_skipped_by_the_claim(pool_of, admin_dsn):
    gone, kept = pool_of(2)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{gone.external_id}" WITH (FORCE)')
    assert services.tenants_reconcile().pooled_missing == [gone.tenant_key]

    ready = sign_up("ada@example.com")

    assert (ready.id, ready.status) == (kept.id, Status.READY)
    assert can_log_in(dsn_of(ready))
    gone.refresh_from_db()
    assert (gone.status, gone.workspace, gone.last_error) == (
        Status.DELETED,
        None,
        "missing on its server when claimed",
    )
    assert VectorDatabase.objects.filter(workspace=ready.workspace).count() == 1


def test_databases_waiting_in_the_pool_behind_a_schema_change_are_never_handed_out(pool_of, settings, admin_dsn):
    [stale] = pool_of(1)
    settings.MIGRATION_MODULES = {"vectordb": "tests.vectordb.fleet_migrations"}  # a new tenant migration ships
    try:
        assert latest_schema_version() == "0003_embedding_language" != stale.schema_version

        first = sign_up("ada@example.com")  # the pooled database is behind: a new one is made instead

        assert (first.status, first.claimed_at, first.schema_version) == (Status.READY, None, latest_schema_version())
        [state] = services.tenant_pool_status()
        assert (state.pooled, state.stale) == (0, 1)

        [refill] = services.tenant_pool_refill(REGION)  # the worker's refill migrates it

        assert (refill.migrated, refill.created) == (1, 0)
        second = sign_up("grace@example.com")
        assert (second.id, second.schema_version) == (stale.id, "0003_embedding_language")
        with psycopg.connect(dsn_of(second)) as tenant:
            columns = {row[0] for row in tenant.execute("SELECT column_name FROM information_schema.columns "
                                                         "WHERE table_name = 'embeddings'")}  # fmt: skip
        assert "language" in columns
    finally:
        _drop_template(admin_dsn)


# --- a worker killed between the claim and the credential rotation (Neon: the reset's operation takes 2 s) ---------

SIGN_UP_SCRIPT = """
import sys
import django

django.setup()
from tenants import services
from tenants.models import User

requested = services.vector_database_request(User.objects.get(id=int(sys.argv[1])))
services.vector_database_provision(requested.id)
"""


@pytest.fixture
def neon(admin_dsn):
    emulator = NeonEmulator(admin_dsn, operation_delay_seconds=0.05, retry_after_seconds=0)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_between_claim_and_rotation_never_lets_the_old_password_in_and_a_retry_finishes(
    neon, settings, tmp_path
):
    neon_settings = neon_settings_for(neon, NEON_REGION="aws-us-east-2", TENANT_WARM_POOL_SIZE=1)
    for name, value in neon_settings.items():
        setattr(settings, name, value)
    [refill] = services.tenant_pool_refill("aws-us-east-2")
    assert refill.created == 1
    pooled = VectorDatabase.objects.get(status=Status.POOLED)
    pool_password_dsn = dsn_of(pooled)
    tenant = User.objects.create_user(email="ada@example.com")
    neon.operation_delay_seconds = 2.0  # the password reset's operation: long enough to kill the worker in it
    environment = _worker_environment(connection.settings_dict["NAME"])
    environment.update({name: str(value) for name, value in neon_settings.items()})
    environment["DJANGO_SETTINGS_MODULE"] = "config.settings"
    log_path = tmp_path / "sign-up.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", SIGN_UP_SCRIPT, str(tenant.id)],
            cwd=BASE_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not neon.requests_matching("POST", f"/projects/{pooled.external_id}/branches/"):
            assert worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the worker never reset the password"
            time.sleep(0.02)
    finally:
        worker.kill()  # SIGKILL between the claim and the end of the rotation
        worker.wait()

    claimed = VectorDatabase.objects.get(id=pooled.id)
    assert (claimed.workspace, claimed.status, claimed.rotation_pending) == (
        personal_workspace(tenant),
        Status.PENDING,
        True,
    )
    with pytest.raises(services.TenantDatabaseNotReady):
        services.tenant_target(tenant)  # the app does not connect to it yet

    ready = services.vector_database_provision(claimed.id)  # the redelivered task (acks_late), or reconcile's

    assert (ready.id, ready.status, ready.rotation_pending) == (pooled.id, Status.READY, False)
    assert neon.project_names() == [f"silo-{pooled.tenant_key}"]
    assert not can_log_in(pool_password_dsn)
    assert can_log_in(dsn_of(ready))
    assert services.tenants_reconcile().clean
    services.vector_database_deprovision(ready.id)
