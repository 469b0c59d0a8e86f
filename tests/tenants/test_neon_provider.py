"""The neon provider, against the Neon API emulator over real sockets, with real databases behind it."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured

from tenants.provisioners.base import ProvisioningError, QuotaExceeded
from tenants.provisioners.neon import NeonProvisioner
from tests.emulators.neon import NeonEmulator

MAX_RETRIES = 4


@pytest.fixture
def neon(admin_dsn):
    # Pooled URIs name "localhost" and direct ones "127.0.0.1" (the same server), so the two can be told apart.
    emulator = NeonEmulator(admin_dsn, operation_delay_seconds=0.2, retry_after_seconds=0, pooler_host="localhost")
    emulator.start()
    yield emulator
    emulator.stop()


def make_provisioner(neon: NeonEmulator, **overrides) -> NeonProvisioner:
    options = dict(
        api_key=neon.api_key,
        api_url=neon.base_url,
        max_retries=MAX_RETRIES,
        retry_base_delay_seconds=0.01,
        retry_max_delay_seconds=0.05,
        poll_interval_seconds=0.05,
        request_timeout_seconds=5,
        operation_timeout_seconds=10,
    )
    options.update(overrides)
    return NeonProvisioner.from_settings(**options)


@pytest.fixture
def provisioner(neon) -> NeonProvisioner:
    return make_provisioner(neon)


def connected_database(dsn: str) -> str:
    """Logs in with these credentials; the database they reach (the emulator's name for the project's database)."""
    with psycopg.connect(dsn, connect_timeout=5) as connection:
        return connection.execute("SELECT current_database()").fetchone()[0]


def database_exists(admin_dsn: str, name: str) -> bool:
    with psycopg.connect(admin_dsn) as connection:
        return connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def api(neon: NeonEmulator) -> httpx.Client:
    return httpx.Client(base_url=neon.base_url, headers={"Authorization": f"Bearer {neon.api_key}"}, timeout=5)


# --- create ----------------------------------------------------------------------------------------------------------


def test_create_returns_a_pooled_dsn_and_a_direct_dsn_that_both_log_in_to_the_project(neon, provisioner):
    database = provisioner.create("tenant-1", region="aws-us-east-2")

    assert neon.project_ids == [database.external_id]
    assert neon.project_names() == ["silo-tenant-1"]
    assert (database.server, database.region) == ("neon", "aws-us-east-2")
    assert "@localhost:" in database.dsn  # the pooled endpoint, for application traffic
    assert "@127.0.0.1:" in database.migration_dsn
    assert connected_database(database.dsn) == connected_database(database.migration_dsn)


def test_a_first_attempt_creates_without_searching_and_takes_both_uris_from_the_create_answer(neon, provisioner):
    database = provisioner.create("tenant-1", first_attempt=True)

    path = f"/projects/{database.external_id}"
    assert [(r.method, r.path.split("?")[0]) for r in neon.requests] == [
        ("POST", "/projects"),
        *[("GET", f"{path}/operations")] * len(neon.requests_matching("GET", f"{path}/operations")),
    ]
    with api(neon) as client:
        uri = f"{path}/connection_uri?database_name=neondb&role_name=neondb_owner&pooled="
        assert database.dsn == client.get(uri + "true").json()["uri"]
        assert database.migration_dsn == client.get(uri + "false").json()["uri"]


def test_a_retry_searches_first_and_asks_for_the_uris_of_the_project_it_finds(neon, provisioner):
    first = provisioner.create("tenant-1", first_attempt=True)

    again = provisioner.create("tenant-1")

    assert (again.dsn, again.migration_dsn) == (first.dsn, first.migration_dsn)
    assert len(neon.requests_matching("POST", "/projects")) == 1
    assert len(neon.requests_matching("GET", f"/projects/{first.external_id}/connection_uri")) == 2


def test_create_sends_the_configured_project_settings(neon, admin_dsn):
    provisioner = make_provisioner(
        neon, region="aws-eu-central-1", pg_version=16, autoscaling_min_cu=0.5, autoscaling_max_cu=2,
        suspend_timeout_seconds=600, quota_logical_size_bytes=10_000_000,
    )  # fmt: skip

    database = provisioner.create("tenant-1")

    with api(neon) as client:
        project = client.get(f"/projects/{database.external_id}").json()["project"]
    assert database.region == "aws-eu-central-1"
    assert project["region_id"] == "aws-eu-central-1"
    assert project["pg_version"] == 16
    assert project["default_endpoint_settings"] == {
        "autoscaling_limit_min_cu": 0.5, "autoscaling_limit_max_cu": 2, "suspend_timeout_seconds": 600,
    }  # fmt: skip
    assert project["settings"]["quota"] == {"logical_size_bytes": 10_000_000}


def test_create_waits_until_the_projects_operations_have_finished(neon, provisioner):
    neon.operation_delay_seconds = 1.0
    started = time.monotonic()

    database = provisioner.create("tenant-1")

    assert time.monotonic() - started >= 1.0
    with api(neon) as client:
        operations = client.get(f"/projects/{database.external_id}/operations").json()["operations"]
    assert sorted(op["action"] for op in operations) == ["create_timeline", "start_compute"]
    assert {op["status"] for op in operations} == {"finished"}
    assert len(neon.requests_matching("GET", f"/projects/{database.external_id}/operations")) >= 2


def test_create_twice_with_the_same_tenant_key_returns_the_same_project(neon, provisioner):
    first = provisioner.create("tenant-1")
    second = provisioner.create("tenant-1")

    assert second.external_id == first.external_id
    assert neon.project_ids == [first.external_id]
    assert len(neon.requests_matching("POST", "/projects")) == 1
    assert connected_database(second.dsn)


def test_create_finds_the_exact_name_among_partial_search_matches(neon, provisioner):
    longer = provisioner.create("tenant-10")

    database = provisioner.create("tenant-1")

    assert database.external_id != longer.external_id
    assert sorted(neon.project_names()) == ["silo-tenant-1", "silo-tenant-10"]


def test_create_finds_its_project_beyond_the_first_page_of_search_results(neon, provisioner, monkeypatch):
    monkeypatch.setattr("tenants.provisioners.neon.LIST_PAGE_SIZE", 2)
    for suffix in ("a", "b", "c", "d"):
        provisioner.create(f"tenant-1{suffix}")
    first = provisioner.create("tenant-1")
    neon.requests.clear()

    again = provisioner.create("tenant-1")

    assert again.external_id == first.external_id
    assert len(neon.project_ids) == 5
    assert len(neon.requests_matching("GET", "/projects?")) == 3  # pages of 2, 2 and 1


@pytest.mark.parametrize("status", [423, 429, 500, 503])
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "^/projects$"), ("POST", "^/projects$"), ("GET", "/operations$")],
    ids=["search", "create", "operations"],
)
def test_create_retries_transient_errors_and_still_makes_exactly_one_project(neon, provisioner, status, method, path):
    neon.inject(status, times=2, method=method, path=path)

    database = provisioner.create("tenant-1")

    assert neon.project_ids == [database.external_id]
    assert [r.status for r in neon.requests].count(status) == 2
    assert connected_database(database.dsn)


def test_create_recovers_a_project_whose_creation_answer_was_lost(neon, provisioner):
    # Neon created the project but the 500 hid it: the retry must find it, not make a second one.
    neon.inject(500, method="POST", path="^/projects$", after_handling=True)

    database = provisioner.create("tenant-1")

    assert neon.project_ids == [database.external_id]
    assert [r.status for r in neon.requests_matching("POST", "/projects")] == [500]
    assert connected_database(database.dsn)


def test_create_survives_random_faults_with_one_project_per_tenant(neon):
    neon.fault_rate = 0.3
    provisioner = make_provisioner(neon, max_retries=12)

    databases = [provisioner.create(f"tenant-{number}") for number in range(3)]

    assert sorted(neon.project_names()) == ["silo-tenant-0", "silo-tenant-1", "silo-tenant-2"]
    assert sorted(neon.project_ids) == sorted(database.external_id for database in databases)
    assert any(r.status >= 423 for r in neon.requests)


def test_concurrent_creates_respect_the_projects_limit_exactly(neon, provisioner):
    neon.projects_limit = 3
    outcomes: dict[str, str] = {}

    def create(tenant_key: str) -> None:
        try:
            provisioner.create(tenant_key)
            outcomes[tenant_key] = "created"
        except QuotaExceeded:
            outcomes[tenant_key] = "quota"

    threads = [threading.Thread(target=create, args=(f"tenant-{number}",)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes.values()) == ["created"] * 3 + ["quota"] * 3
    created = sorted(f"silo-{key}" for key, outcome in outcomes.items() if outcome == "created")
    assert sorted(neon.project_names()) == created


def test_retry_after_is_honoured(neon):
    neon.retry_after_seconds = 1
    neon.inject(429, method="GET", path="^/projects$")
    provisioner = make_provisioner(neon, retry_max_delay_seconds=5)
    started = time.monotonic()

    provisioner.create("tenant-1")

    assert time.monotonic() - started >= 1.0


def test_retries_are_bounded_and_then_fail_with_provisioning_error(neon, provisioner):
    neon.inject(503, times=100, method="GET", path="^/projects$")

    with pytest.raises(ProvisioningError, match=r"HTTP 503 after 5 attempts") as raised:
        provisioner.create("tenant-1")

    assert type(raised.value) is ProvisioningError
    assert len(neon.requests) == MAX_RETRIES + 1
    assert neon.project_ids == []


def test_an_unreachable_api_is_retried_then_reported(neon, provisioner):
    neon.stop()

    with pytest.raises(ProvisioningError, match=r"after 5 attempts: network error"):
        provisioner.create("tenant-1")


def test_projects_limit_exceeded_raises_quota_exceeded_without_retrying(neon, provisioner):
    neon.projects_limit = 1
    provisioner.create("tenant-1")

    with pytest.raises(QuotaExceeded, match=r"project limit is reached \(user projects limit of 1 exceeded"):
        provisioner.create("tenant-2")

    assert neon.project_names() == ["silo-tenant-1"]
    assert len(neon.requests_matching("POST", "/projects")) == 2


def test_an_invalid_api_key_is_a_clear_error(neon):
    provisioner = make_provisioner(neon, api_key="not-the-key")

    with pytest.raises(ProvisioningError, match=r"rejected the API key \(HTTP 401\): check NEON_API_KEY"):
        provisioner.create("tenant-1")

    assert [r.status for r in neon.requests] == [401]
    assert neon.project_ids == []


def test_a_missing_api_key_is_a_configuration_error(neon):
    with pytest.raises(ImproperlyConfigured, match="NEON_API_KEY"):
        make_provisioner(neon, api_key="")


def test_the_org_id_is_sent_when_configured(neon):
    neon.required_org_id = "org-ocean-art-12345678"

    with pytest.raises(ProvisioningError, match="HTTP 400: org_id is required"):
        make_provisioner(neon).create("tenant-1")
    database = make_provisioner(neon, org_id="org-ocean-art-12345678").create("tenant-1")

    assert neon.project_ids == [database.external_id]


def test_credentials_and_the_api_key_are_never_logged(neon, provisioner, caplog):
    neon.inject(503, method="GET", path="/operations$")
    caplog.set_level(logging.DEBUG)

    database = provisioner.create("tenant-1")
    provisioner.dsn(database.external_id, "neon")

    password = psycopg.conninfo.conninfo_to_dict(database.dsn)["password"]
    assert caplog.records  # the retry was logged
    assert password not in caplog.text
    assert neon.api_key not in caplog.text
    assert neon.api_key not in repr(provisioner)
    assert password not in repr(database)


# --- delete ----------------------------------------------------------------------------------------------------------


def test_delete_removes_the_project_and_its_database(neon, provisioner, admin_dsn):
    database = provisioner.create("tenant-1")
    physical_name = neon.physical_database_name(database.external_id)

    provisioner.delete(database.external_id, "neon")

    assert neon.project_ids == []
    assert not database_exists(admin_dsn, physical_name)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(database.migration_dsn, connect_timeout=5)


def test_delete_of_an_unknown_project_succeeds(neon, provisioner):
    provisioner.delete("dry-hall-87167252", "neon")

    assert [(r.method, r.status) for r in neon.requests] == [("GET", 404)]


def test_delete_twice_succeeds(neon, provisioner):
    database = provisioner.create("tenant-1")
    provisioner.delete(database.external_id, "neon")

    provisioner.delete(database.external_id, "neon")

    assert neon.project_ids == []


def test_delete_waits_for_running_operations_instead_of_failing_on_423(neon, provisioner):
    neon.operation_delay_seconds = 0.5
    with api(neon) as client:
        created = client.post("/projects", json={"project": {"name": "silo-tenant-1"}})
        project_id = created.json()["project"]["id"]
        assert client.delete(f"/projects/{project_id}").status_code == 423

    provisioner.delete(project_id, "neon")

    assert neon.project_ids == []


def test_delete_retries_a_423_from_an_operation_started_meanwhile(neon, provisioner):
    database = provisioner.create("tenant-1")
    neon.inject(423, times=2, method="DELETE")

    provisioner.delete(database.external_id, "neon")

    assert [r.status for r in neon.requests_matching("DELETE", "/projects/")] == [423, 423, 200]
    assert neon.project_ids == []


# --- dsn -------------------------------------------------------------------------------------------------------------


def test_dsn_returns_the_current_working_credentials(neon, provisioner):
    database = provisioner.create("tenant-1")

    again = provisioner.dsn(database.external_id, "neon")

    assert (again.external_id, again.region, again.server) == (database.external_id, database.region, "neon")
    assert again.dsn == database.dsn
    assert connected_database(again.dsn)


@pytest.mark.parametrize("status", [423, 429, 500, 503])
def test_dsn_retries_transient_errors_of_connection_uri(neon, provisioner, status):
    database = provisioner.create("tenant-1")
    neon.inject(status, times=2, method="GET", path="/connection_uri$")

    again = provisioner.dsn(database.external_id, "neon")

    assert (again.dsn, again.migration_dsn) == (database.dsn, database.migration_dsn)
    assert [r.status for r in neon.requests_matching("GET", f"/projects/{database.external_id}/connection_uri")][
        :3
    ] == [status, status, 200]


def test_dsn_after_a_password_reset_returns_the_new_password_once_it_works(neon, provisioner):
    database = provisioner.create("tenant-1")
    with api(neon) as client:
        operations = client.get(f"/projects/{database.external_id}/operations").json()["operations"]
        branch_id = operations[0]["branch_id"]
        reset = client.post(f"/projects/{database.external_id}/branches/{branch_id}/roles/neondb_owner/reset_password")
    assert reset.status_code == 200

    fresh = provisioner.dsn(database.external_id, "neon")

    assert fresh.dsn != database.dsn
    assert connected_database(fresh.dsn) == connected_database(fresh.migration_dsn)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(database.dsn, connect_timeout=5)


def test_dsn_of_an_unknown_project_is_a_provisioning_error(neon, provisioner):
    with pytest.raises(ProvisioningError, match="Neon project dry-hall-87167252 does not exist"):
        provisioner.dsn("dry-hall-87167252", "neon")


# --- the emulator keeps Neon's rules, so the tests above mean something -------------------------------------------


def test_emulator_requires_a_bearer_api_key(neon):
    assert httpx.get(f"{neon.base_url}/projects").status_code == 401
    assert httpx.get(f"{neon.base_url}/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_emulator_answers_201_before_the_project_is_ready(neon, admin_dsn):
    neon.operation_delay_seconds = 0.5
    with api(neon) as client:
        created = client.post("/projects", json={"project": {}}).json()
        uri = created["connection_uris"][0]["connection_uri"]
        project_id = created["project"]["id"]

        assert created["project"]["name"] == project_id
        assert {op["status"] for op in created["operations"]} == {"running", "scheduling"}
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(uri, connect_timeout=5)
        assert client.patch(f"/projects/{project_id}", json={"project": {"name": "x"}}).status_code == 423
        time.sleep(0.8)
        operation_id = created["operations"][0]["id"]
        assert client.get(f"/projects/{project_id}/operations/{operation_id}").json()["operation"]["status"] == (
            "finished"
        )
    psycopg.connect(uri, connect_timeout=5).close()


def test_emulator_keeps_tenant_databases_closed_to_other_roles(neon, provisioner, admin_dsn):
    database = provisioner.create("tenant-1")
    name = neon.physical_database_name(database.external_id)

    with psycopg.connect(admin_dsn) as connection:
        public_connect = connection.execute(
            "SELECT count(*) FROM pg_database, aclexplode(datacl) AS acl"
            " WHERE datname = %s AND acl.grantee = 0 AND acl.privilege_type = 'CONNECT'",
            [name],
        ).fetchone()[0]
        acl = connection.execute("SELECT datacl FROM pg_database WHERE datname = %s", [name]).fetchone()[0]
    assert acl is not None  # NULL would mean the default ACL, which lets PUBLIC connect
    assert public_connect == 0


def test_emulator_project_roles_own_their_database_and_cannot_open_another_projects(neon, provisioner):
    first = provisioner.create("tenant-1")
    second = provisioner.create("tenant-2")

    with psycopg.connect(first.migration_dsn, autocommit=True) as connection:
        role = connection.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        owns_database = connection.execute(
            "SELECT datdba = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
            " FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        connection.execute("CREATE EXTENSION IF NOT EXISTS vector")  # what the provider runs: a no-op here
        connection.execute("CREATE TABLE probe (embedding vector(3))")
    assert role == (False, False, False, False)
    assert owns_database == (True,)
    other_project = psycopg.conninfo.make_conninfo(
        first.migration_dsn, dbname=neon.physical_database_name(second.external_id)
    )
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(other_project, connect_timeout=5)


def test_list_databases_returns_every_silo_project_across_pages(neon, provisioner, monkeypatch):
    monkeypatch.setattr("tenants.provisioners.neon.LIST_PAGE_SIZE", 2)
    created = [provisioner.create(f"tenant-{number}").external_id for number in range(5)]
    with api(neon) as client:
        client.post("/projects", json={"project": {"name": "someone-elses-project"}})
    neon.requests.clear()

    listed = provisioner.list_databases()

    assert sorted(listed) == sorted(("neon", project_id) for project_id in created)
    assert len(neon.requests_matching("GET", "/projects?")) == 3  # pages of 2, 2 and 1


def test_list_databases_retries_transient_errors(neon, provisioner):
    database = provisioner.create("tenant-1")
    neon.inject(503, times=2, method="GET", path="^/projects$")

    assert provisioner.list_databases() == [("neon", database.external_id)]


def test_list_databases_of_an_empty_account_is_empty(neon, provisioner):
    assert provisioner.list_databases() == []


def test_emulator_rejects_an_invalid_project_request(neon):
    with api(neon) as client:
        missing = client.post("/projects", json={})
        too_new = client.post("/projects", json={"project": {"pg_version": 19}})

    assert missing.status_code == 400
    assert missing.json()["message"] == "invalid request: decode application/json: invalid: project (field required)"
    assert too_new.status_code == 400
    assert neon.project_ids == []


def test_emulator_pages_projects_by_the_last_id(neon):
    with api(neon) as client:
        ids = [client.post("/projects", json={"project": {"name": f"p{n}"}}).json()["project"]["id"] for n in range(3)]
        first = client.get("/projects", params={"limit": 2}).json()
        second = client.get("/projects", params={"limit": 2, "cursor": first["pagination"]["cursor"]}).json()

    assert [p["id"] for p in first["projects"]] == ids[:2]
    assert first["pagination"]["cursor"] == ids[1]
    assert [p["id"] for p in second["projects"]] == ids[2:]
