"""Neon quotas (issue 21), against the Neon API emulator: the plan's quota is PATCHed on create and on every plan
change; a project over its quota is suspended (connections refused) and Silo says so instead of a connection error;
an upgrade lifts it. Consumption is read from the consumption API (which wakes no compute), within the rate limit."""

from __future__ import annotations

import psycopg
import pytest

from chat import services as chat_services
from tenants import plans, services, usage
from tenants.models import Plan, VectorDatabase, WorkspacePlan
from tenants.provisioners.neon import NeonProvisioner, RequestRate
from tests.emulators.neon import NeonEmulator
from tests.helpers import neon_settings_for, personal_workspace

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def neon(admin_dsn):
    emulator = NeonEmulator(admin_dsn, operation_delay_seconds=0.05, retry_after_seconds=0)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def neon_settings(neon, settings):
    for name, value in neon_settings_for(neon).items():
        setattr(settings, name, value)
    settings.OPENAI_API_KEY = ""
    return settings


@pytest.fixture
def small_plan():
    return Plan.objects.create(name="small", label="Small", neon_active_time_seconds=3600,
                               neon_written_data_bytes=10_000_000)  # fmt: skip


def _provisioned(owner) -> VectorDatabase:
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="neon")
    row = services.vector_database_provision(row.id)
    assert row.status == VectorDatabase.Status.READY, row.last_error
    return row


def _quota_on_neon(neon: NeonEmulator, project_id: str) -> dict:
    return neon.get_project(project_id)["project"]["settings"].get("quota", {})


def test_the_plans_quota_is_set_on_create_and_on_every_plan_change(owner, neon, neon_settings, small_plan):
    workspace = personal_workspace(owner)
    plans.workspace_plan_change(workspace, "small")
    row = _provisioned(owner)
    assert _quota_on_neon(neon, row.external_id) == {
        "active_time_seconds": 3600, "compute_time_seconds": 0, "written_data_bytes": 10_000_000,
        "data_transfer_bytes": 0, "logical_size_bytes": 0,
    }  # fmt: skip
    patches = neon.requests_matching("PATCH", f"/projects/{row.external_id}")
    assert [request.status for request in patches] == [200]

    plans.workspace_plan_change(workspace, overrides=["neon_active_time_seconds=7200"])
    assert _quota_on_neon(neon, row.external_id)["active_time_seconds"] == 7200
    plans.workspace_plan_change(workspace, "free")  # the default plan: no Neon quota; the workspace's deal stays
    assert _quota_on_neon(neon, row.external_id) == {**dict.fromkeys(plans.NEON_QUOTA_FIELDS, 0),
                                                     "active_time_seconds": 7200}  # fmt: skip
    plans.workspace_plan_change(workspace, overrides=["neon_active_time_seconds=default"])
    assert set(_quota_on_neon(neon, row.external_id).values()) == {0}  # 0 is unlimited
    assert WorkspacePlan.objects.get(workspace=workspace).neon_quota_synced["active_time_seconds"] == 0


def test_a_project_over_its_quota_is_suspended_silo_says_so_and_an_upgrade_resumes_it(
    owner, neon, neon_settings, small_plan
):
    workspace = personal_workspace(owner)
    plans.workspace_plan_change(workspace, "small")
    row = _provisioned(owner)
    dsn = services.vector_database_credentials(row)["dsn"]
    with psycopg.connect(dsn, connect_timeout=5) as tenant:
        tenant.execute("SELECT 1")

    assert neon.consume(row.external_id, active_time_seconds=3599) is False  # just under: still running
    assert neon.consume(row.external_id, active_time_seconds=1) is True  # at the quota: suspended
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()

    report = usage.usage_sample()
    assert (report.neon_read, report.suspended) == (1, [row.external_id])
    assignment = WorkspacePlan.objects.get(workspace=workspace)
    assert assignment.neon_suspended is True
    assert assignment.neon_consumption["active_time_seconds"] == 3600

    events = list(chat_services.chat_turn(owner, "When is the tide high?"))
    assert events[-1].kind == "error"
    assert events[-1].data["message"] == plans.NEON_SUSPENDED_MESSAGE
    from django.urls import reverse
    from django.utils.html import escape

    from tests.workspaces import client_in

    browser = client_in(owner)
    assert escape(plans.NEON_SUSPENDED_MESSAGE) in browser.get(reverse("chat")).content.decode()
    assert escape(plans.NEON_SUSPENDED_MESSAGE) in browser.get("/account/").content.decode()
    call_usage = usage.usage_report([workspace])[0]
    assert call_usage.neon_suspended is True and call_usage.questions_today == 0

    Plan.objects.create(name="large", label="Large", neon_active_time_seconds=360_000)
    plans.workspace_plan_change(workspace, "large")
    assert neon.is_suspended(row.external_id) is False
    assert WorkspacePlan.objects.get(workspace=workspace).neon_suspended is False
    with psycopg.connect(dsn, connect_timeout=5) as tenant:
        assert tenant.execute("SELECT 1").fetchone() == (1,)


def test_sampling_reads_neon_consumption_in_one_request_and_opens_no_tenant_connection(
    owner, stranger, neon, neon_settings
):
    rows = [_provisioned(owner), _provisioned(stranger)]
    neon.consume(rows[0].external_id, compute_time_seconds=42, written_data_bytes=1000)
    neon.reset()

    report = usage.usage_sample()

    assert report.neon_read == 2 and report.sampled == 0
    assert [(r.method, r.path.split("?")[0]) for r in neon.requests] == [("GET", "/consumption_history/projects")]
    reading = WorkspacePlan.objects.get(workspace=personal_workspace(owner))
    assert reading.neon_consumption["compute_time_seconds"] == 42
    assert reading.storage_bytes and reading.storage_bytes > 0  # the project's storage, from Neon's figures


def test_the_emulator_answers_429_past_its_rate_limit_and_the_client_paces_itself(neon, neon_settings):
    neon.rate_limit_per_minute = 5
    provisioner = NeonProvisioner.from_settings(max_retries=0)
    client = provisioner._client()
    statuses = [client.get("/projects").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    refused = client.get("/projects")
    assert int(refused.headers["Retry-After"]) >= 1

    rate = RequestRate(per_minute=600, burst=2)  # 10 a second after a burst of two
    import time

    started = time.monotonic()
    for _ in range(5):
        rate.take()
    assert time.monotonic() - started >= 0.25  # three beyond the burst, 0.1 s apart


def test_a_project_claimed_from_the_warm_pool_gets_its_workspaces_quota(neon, neon_settings, small_plan):
    from tenants.models import User

    neon_settings.TENANT_WARM_POOL_SIZE = 1
    neon_settings.TENANT_WARM_POOL_REGION_SIZES = {}
    [refill] = services.tenant_pool_refill(neon_settings.NEON_REGION)
    assert refill.created == 1
    pooled = VectorDatabase.objects.get(status=VectorDatabase.Status.POOLED)
    assert _quota_on_neon(neon, pooled.external_id) == {}  # made before anyone's plan was known

    person = User.objects.create_user(email="ada@example.com", password="a long enough password")
    plans.workspace_plan_change(personal_workspace(person), "small")
    claimed = services.vector_database_provision(services.vector_database_request(person).id)

    assert (claimed.id, claimed.status) == (pooled.id, VectorDatabase.Status.READY)
    assert _quota_on_neon(neon, pooled.external_id)["active_time_seconds"] == 3600
