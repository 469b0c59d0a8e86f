"""Provisioning on Neon stays exactly-once while the API misbehaves: random faults, slow and lost answers, and a worker
killed in the middle of a provision. Every tenant ends ready with one project, and reconcile finds nothing to fix."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from config.settings_paths import BASE_DIR
from tenants import services
from tenants.models import VectorDatabase
from tests.conftest import _worker_environment
from tests.emulators.neon import NeonEmulator
from tests.helpers import neon_settings_for, personal_workspace

Status = VectorDatabase.Status
TENANTS = 50
THREADS = 8
TASK_RUNS = 6  # provision_vector_database: the first run plus max_retries=5 retries on ProvisioningFailed
FAULT_STATUSES = (423, 429, 500, 502, 503)
LOST_CREATE_ANSWERS = 10


# Retries as the Celery task configures them, and time for 50 tenants' operations under faults.
FAULT_SETTINGS = {"NEON_MAX_RETRIES": 6, "NEON_OPERATION_TIMEOUT_SECONDS": 30.0}


@pytest.fixture
def neon(admin_dsn):
    emulator = NeonEmulator(admin_dsn, operation_delay_seconds=0.1, retry_after_seconds=0)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def neon_settings(neon, settings):
    for name, value in neon_settings_for(neon, **FAULT_SETTINGS).items():
        setattr(settings, name, value)
    return settings


def provision_like_the_task(vector_database_id: int) -> tuple[str, int]:
    """The service, run again on ProvisioningFailed as the Celery task does, with the task's bound; (status, runs)."""
    try:
        for run in range(1, TASK_RUNS + 1):
            try:
                return services.vector_database_provision(vector_database_id).status, run
            except services.ProvisioningFailed:
                if run == TASK_RUNS:
                    raise
        raise AssertionError("unreachable")
    finally:
        connection.close()  # each pool thread has its own Django connection


@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_fifty_tenants_through_faults_and_slow_answers_get_exactly_one_project_each(
    django_user_model, neon, neon_settings
):
    tenants = [django_user_model.objects.create_user(email=f"tenant{n}@example.com") for n in range(TENANTS)]
    ids = [
        VectorDatabase.objects.create(workspace=personal_workspace(tenant), provider="neon").id for tenant in tenants
    ]
    neon.fault_rate = 0.3
    neon.fault_statuses = FAULT_STATUSES
    neon.latency_seconds = 0.03
    # Neon created these projects but the answers were lost: retries must find them, not create them again.
    neon.inject(500, times=LOST_CREATE_ANSWERS, method="POST", path="^/projects$", after_handling=True)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        outcomes = list(pool.map(provision_like_the_task, ids))

    assert [status for status, _ in outcomes] == [Status.READY] * TENANTS
    rows = list(VectorDatabase.objects.filter(id__in=ids))
    assert {row.status for row in rows} == {Status.READY}
    names = neon.project_names()
    assert len(names) == TENANTS
    assert sorted(names) == sorted(f"silo-{row.tenant_key}" for row in rows)  # one project each, none extra
    assert sorted(neon.project_ids) == sorted(row.external_id for row in rows)
    # The faults really happened, of every kind, and the lost answers came from projects Neon did create.
    statuses = Counter(request.status for request in neon.requests)
    assert all(statuses[status] > 0 for status in FAULT_STATUSES), statuses
    creates = Counter(request.status for request in neon.requests_matching("POST", "/projects"))
    assert creates[201] == TENANTS - LOST_CREATE_ANSWERS
    assert creates[500] >= LOST_CREATE_ANSWERS
    # Still under faults: reconcile reads every project and finds nothing to fix.
    report = services.tenants_reconcile()
    assert (report.orphans, report.missing, report.stuck) == ([], [], [])


@pytest.mark.timeout(60)
@pytest.mark.django_db(transaction=True)
def test_a_provision_that_fails_after_neon_created_the_project_is_finished_by_the_next_run(owner, neon, neon_settings):
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="neon")
    neon.inject(500, method="POST", path="^/projects$", after_handling=True)  # created, answer lost
    neon.inject(503, times=100, method="GET", path="/operations$")  # and this run gets no further

    with pytest.raises(services.ProvisioningFailed, match="HTTP 503 after 7 attempts"):
        services.vector_database_provision(vector_database.id)

    vector_database.refresh_from_db()
    assert (vector_database.status, vector_database.external_id) == (Status.FAILED, "")  # the registry never learnt it
    assert len(neon.project_ids) == 1
    neon.reset()

    ready = services.vector_database_provision(vector_database.id)  # the task's retry

    assert ready.status == Status.READY
    assert neon.project_ids == [ready.external_id]
    assert neon.project_names() == [f"silo-{ready.tenant_key}"]
    assert neon.requests_matching("POST", "/projects") == []  # found by name, not created again

    # A finished provision run again (as reconcile does for a stuck row) still finds the same project.
    VectorDatabase.objects.filter(id=ready.id).update(status=Status.PENDING)
    again = services.vector_database_provision(ready.id)

    assert (again.status, again.external_id, again.attempts) == (Status.READY, ready.external_id, 3)
    assert neon.project_ids == [ready.external_id]
    assert neon.requests_matching("POST", "/projects") == []
    assert services.tenants_reconcile().clean


PROVISION_SCRIPT = """
import sys
import django

django.setup()
from tenants import services

services.vector_database_provision(int(sys.argv[1]))
"""


@pytest.mark.timeout(90)
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_provision_leaves_one_project_that_the_next_run_completes(
    owner, neon, neon_settings, tmp_path
):
    neon.operation_delay_seconds = 2.0  # long enough to kill the worker while it waits for Neon's operations
    vector_database = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="neon")
    environment = _worker_environment(connection.settings_dict["NAME"])
    environment.update({name: str(value) for name, value in neon_settings_for(neon, **FAULT_SETTINGS).items()})
    environment["DJANGO_SETTINGS_MODULE"] = "config.settings"
    log_path = tmp_path / "provision.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", PROVISION_SCRIPT, str(vector_database.id)],
            cwd=BASE_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (neon.project_ids and neon.requests_matching("GET", f"/projects/{neon.project_ids[0]}/operations")):
            assert worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the worker never reached Neon's operations"
            time.sleep(0.02)
    finally:
        worker.kill()  # SIGKILL: no cleanup runs, as when the machine goes away
        worker.wait()

    vector_database.refresh_from_db()
    assert (vector_database.status, vector_database.external_id) == (Status.PROVISIONING, "")
    project_id = neon.project_ids[0]
    assert [r.status for r in neon.requests_matching("POST", "/projects")] == [201]

    ready = services.vector_database_provision(vector_database.id)  # the redelivered task (acks_late)

    assert (ready.status, ready.external_id, ready.attempts) == (Status.READY, project_id, 2)
    assert neon.project_ids == [project_id]
    assert len(neon.requests_matching("POST", "/projects")) == 1
    assert services.tenants_reconcile().clean
