"""`migrate_tenants`: the fleet moves to a new tenant schema together, and a failure stops nobody else."""

import io

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from tenants import services
from tenants.crypto import decrypt_credentials, encrypt_credentials
from tenants.models import MigrationRun, User, VectorDatabase
from tenants.provisioners import get_provisioner
from tenants.provisioners.postgres import TEMPLATE_DATABASE
from tests.helpers import personal_workspace

FLEET_MIGRATIONS = {"vectordb": "tests.vectordb.fleet_migrations"}
BREAKING_MIGRATIONS = {"vectordb": "tests.vectordb.breaking_migrations"}


def _columns(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as connection:
        return {
            row[0]
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'embeddings'"
            )
        }


@pytest.fixture
def fleet(transactional_db, admin_dsn):
    tenants = []
    for number in range(3):
        user = User.objects.create_user(email=f"tenant{number}@example.com")
        row = VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres")
        tenants.append(services.vector_database_provision(row.id))
    yield tenants
    for row in VectorDatabase.objects.exclude(status=VectorDatabase.Status.DELETED):
        services.vector_database_deprovision(row.id)
    # The template now carries the test migrations: drop it, the next provisioning builds it afresh.
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DATABASE} WITH (FORCE)")
    get_provisioner()._templates_ready.clear()


def _run(*arguments) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("migrate_tenants", *arguments, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _dsn(row: VectorDatabase) -> str:
    row.refresh_from_db()
    return decrypt_credentials(row.encrypted_credentials)["dsn"]


def test_plan_lists_pending_migrations_per_tenant_and_changes_nothing(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS

    out, _ = _run("--plan")

    assert out.splitlines() == [f"tenant{number}@example.com: 0003_embedding_language" for number in range(3)]
    assert all("language" not in _columns(_dsn(row)) for row in fleet)


def test_applies_pending_migrations_to_every_tenant_and_then_to_the_template(fleet, settings, admin_dsn):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS

    out, _ = _run("--jobs", "2")

    assert "3/3 tenants, 0 failed" in out
    assert "3 tenant databases at the latest schema" in out
    for row in fleet:
        assert "language" in _columns(_dsn(row))
        row.refresh_from_db()
        assert row.schema_version == "0003_embedding_language"
    template_dsn = admin_dsn.rsplit("/", 1)[0] + "/" + TEMPLATE_DATABASE
    assert "language" in _columns(template_dsn)
    # Running again finds nothing to do.
    assert _run("--plan")[0].strip() == "nothing pending"
    assert "3 tenant databases at the latest schema" in _run()[0]


def test_an_unreachable_tenant_fails_alone_and_a_rerun_finishes_it(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    broken = fleet[1]
    good_credentials = broken.encrypted_credentials
    unreachable = decrypt_credentials(good_credentials)
    unreachable["migration_dsn"] = "postgresql://nobody:secret@127.0.0.1:1/nowhere?connect_timeout=2"
    VectorDatabase.objects.filter(id=broken.id).update(encrypted_credentials=encrypt_credentials(unreachable))

    with pytest.raises(CommandError, match="1 of 3 tenant databases failed"):
        _run()

    assert "language" in _columns(_dsn(fleet[0]))
    assert "language" in _columns(_dsn(fleet[2]))
    VectorDatabase.objects.filter(id=broken.id).update(encrypted_credentials=good_credentials)
    out, _ = _run()
    assert "3 tenant databases at the latest schema" in out
    assert "language" in _columns(_dsn(broken))


def test_the_failure_report_names_the_tenant_without_its_password(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    credentials = decrypt_credentials(fleet[0].encrypted_credentials)
    credentials["migration_dsn"] = "postgresql://nobody:hunter2secret@127.0.0.1:1/nowhere?connect_timeout=2"
    VectorDatabase.objects.filter(id=fleet[0].id).update(encrypted_credentials=encrypt_credentials(credentials))
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError):
        call_command("migrate_tenants", stdout=out, stderr=err)

    assert "FAILED tenant0@example.com" in err.getvalue()
    assert "hunter2secret" not in out.getvalue() + err.getvalue()


def test_destructive_migrations_are_refused_unless_allowed(fleet, settings):
    settings.MIGRATION_MODULES = BREAKING_MIGRATIONS

    with pytest.raises(CommandError, match="3 of 3 tenant databases failed"):
        _run()
    for row in fleet:
        assert "metadata" in _columns(_dsn(row))  # nothing of the refused run was applied
        assert "language" not in _columns(_dsn(row))

    _run("--allow-breaking")

    for row in fleet:
        assert "metadata" not in _columns(_dsn(row))


def test_tenant_option_limits_the_run_to_one_tenant(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS

    out, _ = _run("--tenant", "tenant2@example.com")

    assert "1/1 tenants, 0 failed" in out
    assert "language" in _columns(_dsn(fleet[2]))
    assert "language" not in _columns(_dsn(fleet[0]))
    with pytest.raises(CommandError, match="no user with email nobody@example.com"):
        _run("--tenant", "nobody@example.com")


# --- decided from the registry: a fleet with nothing to do is never contacted ------------------------------------------

UNREACHABLE_DSN = "postgresql://nobody:secret@127.0.0.1:1/nowhere?connect_timeout=2"


def _make_unreachable(rows: list[VectorDatabase]) -> None:
    """Every connection to these tenants would fail: a run that succeeds never tried one."""
    for row in rows:
        row.refresh_from_db()
        credentials = decrypt_credentials(row.encrypted_credentials)
        credentials["migration_dsn"] = credentials["dsn"] = UNREACHABLE_DSN
        VectorDatabase.objects.filter(id=row.id).update(encrypted_credentials=encrypt_credentials(credentials))


def _record_version(rows: list[VectorDatabase], version: str) -> None:
    VectorDatabase.objects.filter(id__in=[row.id for row in rows]).update(schema_version=version)


def test_a_fleet_recorded_at_the_latest_version_is_planned_and_migrated_without_a_tenant_connection(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    _run()
    _make_unreachable(fleet)

    assert _run("--plan")[0].strip() == "nothing pending"
    out, _ = _run()

    assert "run " in out and ": 0 migrated, 0 failed, 3 already current" in out
    assert "3 tenant databases at the latest schema" in out
    run = MigrationRun.objects.get(id=int(out.split("run ")[1].split(":")[0]))
    assert (run.status, run.tenants_in_registry, run.tenants_to_migrate, run.tenants.count()) == (
        MigrationRun.Status.SUCCEEDED, 3, 0, 0,
    )  # fmt: skip


def test_the_plan_reads_what_is_pending_from_the_registry(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    _make_unreachable(fleet)
    _record_version(fleet, "0002_embedding_created_at_default")

    out, err = _run("--plan")

    assert out.splitlines() == [f"tenant{number}@example.com: 0003_embedding_language" for number in range(3)]
    assert err == ""


def test_only_the_tenants_the_registry_records_behind_are_contacted(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    _run()
    _make_unreachable([fleet[0], fleet[2]])
    _record_version([fleet[1]], "0002_embedding_created_at_default")  # the database is at 0003 in fact

    out, _ = _run()

    assert "1/1 tenants, 0 failed" in out
    assert ": 1 migrated, 0 failed, 2 already current" in out
    fleet[1].refresh_from_db()
    assert fleet[1].schema_version == "0003_embedding_language"


def test_a_failing_canary_stops_the_rollout_before_the_other_tenants(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    _make_unreachable([fleet[0]])  # the first in the registry: the canary

    with pytest.raises(CommandError, match="rollout stopped: canary: 1 of 1 tenants failed"):
        _run("--canary", "1")

    assert "language" not in _columns(_dsn(fleet[1]))
    assert "language" not in _columns(_dsn(fleet[2]))
    run = MigrationRun.objects.get()
    assert run.status == MigrationRun.Status.STOPPED
    assert (run.migrated, run.failed, run.not_started) == (0, 1, 2)
    assert dict(run.tenants.values_list("label", "outcome")) == {
        "tenant0@example.com": "failed",
        "tenant1@example.com": "not_started",
        "tenant2@example.com": "not_started",
    }
    assert "secret" not in run.tenants.get(label="tenant0@example.com").error


def test_a_canary_that_succeeds_lets_the_rollout_go_on(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS

    out, _ = _run("--canary", "1")

    assert "3 tenant databases at the latest schema" in out
    assert all("language" in _columns(_dsn(row)) for row in fleet)
    run = MigrationRun.objects.get()
    assert (run.status, run.canary, run.migrated) == (MigrationRun.Status.SUCCEEDED, 1, 3)
    assert set(run.tenants.values_list("applied", flat=True)) == {"0003_embedding_language"}


def test_max_failures_stops_starting_tenants_once_reached(fleet, settings):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    _make_unreachable([fleet[0], fleet[1]])

    with pytest.raises(CommandError, match=r"rollout stopped: 1 tenants failed \(--max-failures\)"):
        _run("--jobs", "1", "--max-failures", "1")

    run = MigrationRun.objects.get()
    assert (run.status, run.migrated, run.failed, run.not_started) == (MigrationRun.Status.STOPPED, 0, 1, 2)
    assert "language" not in _columns(_dsn(fleet[2]))
    # Resumed without the bound, the healthy tenant is migrated and the run says who still fails.
    with pytest.raises(CommandError, match="2 of 3 tenant databases failed"):
        _run()
    assert "language" in _columns(_dsn(fleet[2]))


def test_bounds_must_be_positive(fleet):
    for option in ("--canary", "--max-failures"):
        with pytest.raises(CommandError, match=f"{option} must be at least 1"):
            _run(option, "0")
    assert not MigrationRun.objects.exists()


def test_the_admin_shows_each_run_with_every_tenants_outcome(fleet, settings, client, django_user_model):
    settings.MIGRATION_MODULES = FLEET_MIGRATIONS
    _make_unreachable([fleet[2]])
    with pytest.raises(CommandError):
        _run()
    run = MigrationRun.objects.get()
    operator = django_user_model.objects.create_superuser(email="ops@example.com", password="operator pass 123")
    client.force_login(operator)

    listing = client.get(reverse("admin:tenants_migrationrun_changelist"))
    detail = client.get(reverse("admin:tenants_migrationrun_change", args=[run.id])).content.decode()

    assert listing.status_code == 200
    assert "0003_embedding_language" in listing.content.decode()
    for number in range(3):
        assert f"tenant{number}@example.com" in detail
    assert detail.count("migrated") >= 2 and "failed" in detail
    assert "secret@" not in detail
