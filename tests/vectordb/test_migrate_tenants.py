"""`migrate_tenants`: the fleet moves to a new tenant schema together, and a failure stops nobody else."""

import io

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants import services
from tenants.crypto import decrypt_credentials, encrypt_credentials
from tenants.models import User, VectorDatabase
from tenants.provisioners import get_provisioner
from tenants.provisioners.postgres import TEMPLATE_DATABASE

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
        row = VectorDatabase.objects.create(tenant=user, provider="postgres")
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
    with pytest.raises(CommandError, match="no ready tenant database for nobody@example.com"):
        _run("--tenant", "nobody@example.com")
