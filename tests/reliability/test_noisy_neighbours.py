"""Noisy neighbours on a shared PostgreSQL server: whatever a tenant does with its own credentials (say, stolen
through a future injection bug), it cannot take the server from the others. Its role has a connection limit, no
advisory locks, sessions that end when idle, bounded temporary files, and no way into template1 or `postgres`."""

import time

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from psycopg import sql

from tenants import services
from tenants.crypto import decrypt_credentials
from tenants.models import User, VectorDatabase
from tests.helpers import database_dsn, personal_workspace

Status = VectorDatabase.Status
ADVISORY_LOCK_CALLS = [
    "pg_advisory_lock(1)",
    "pg_advisory_lock(1, 2)",
    "pg_advisory_lock_shared(1)",
    "pg_try_advisory_lock(1)",
    "pg_try_advisory_lock_shared(1, 2)",
    "pg_advisory_xact_lock(1)",
    "pg_try_advisory_xact_lock(1)",
    "pg_advisory_unlock_all()",
]


def _provision(email: str) -> VectorDatabase:
    user = User.objects.create_user(email=email)
    return services.vector_database_provision(
        VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres").id
    )


def _dsn(vector_database: VectorDatabase) -> str:
    return decrypt_credentials(vector_database.encrypted_credentials)["dsn"]


@pytest.fixture
def neighbours(transactional_db):
    made = [_provision("noisy@example.com"), _provision("quiet@example.com")]
    yield made
    for row in VectorDatabase.objects.exclude(status=Status.DELETED):
        services.vector_database_deprovision(row.id)


def test_a_tenant_role_is_refused_past_its_connection_limit_while_others_connect_and_sign_up_works(
    neighbours, settings
):
    noisy, quiet = neighbours
    opened: list[psycopg.Connection] = []
    refusals = []
    try:
        for _ in range(3 * settings.TENANT_ROLE_CONNECTION_LIMIT):  # 490 in the attack; 60 show the limit as well
            try:
                opened.append(psycopg.connect(_dsn(noisy), connect_timeout=10))
            except psycopg.OperationalError as error:
                refusals.append(str(error))
                if len(refusals) >= 5:
                    break

        assert len(opened) == settings.TENANT_ROLE_CONNECTION_LIMIT
        assert len(refusals) == 5
        assert all(f'too many connections for role "{noisy.external_id}"' in refusal for refusal in refusals)
        with psycopg.connect(_dsn(quiet)) as connection:  # the neighbour still gets in
            assert connection.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)
        newcomer = _provision("newcomer@example.com")  # and sign-up provisioning still works
        assert newcomer.status == Status.READY
    finally:
        for connection in opened:
            connection.close()


@pytest.mark.parametrize("call", ADVISORY_LOCK_CALLS)
def test_a_tenant_role_cannot_take_advisory_locks(neighbours, call):
    noisy, _ = neighbours

    with psycopg.connect(_dsn(noisy)) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
            connection.execute(f"SELECT {call}")
        connection.rollback()
        assert connection.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


@pytest.mark.parametrize("database", ["template1", "postgres"])
def test_a_tenant_role_cannot_connect_to_the_servers_own_databases(neighbours, database):
    noisy, _ = neighbours

    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(database_dsn(_dsn(noisy), database))


def test_a_tenant_session_has_idle_and_temporary_file_limits_it_cannot_lift(neighbours, settings):
    noisy, _ = neighbours

    with psycopg.connect(_dsn(noisy), autocommit=True) as connection:
        shown = {
            name: connection.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
            for name in ("idle_session_timeout", "idle_in_transaction_session_timeout", "temp_file_limit")
        }
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match='permission denied to set parameter "temp_file_limit"'
        ):
            connection.execute("SET temp_file_limit = -1")

    assert shown == {
        "idle_session_timeout": f"{settings.TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS // 60}min",
        "idle_in_transaction_session_timeout": f"{settings.TENANT_ROLE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS // 60}min",
        "temp_file_limit": f"{settings.TENANT_ROLE_TEMP_FILE_LIMIT_MB // 1024}GB",
    }


def test_a_tenant_session_left_idle_in_a_transaction_is_ended(transactional_db, settings):
    settings.TENANT_ROLE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = 1
    tenant = _provision("sleepy@example.com")
    try:
        with psycopg.connect(_dsn(tenant)) as connection:
            connection.execute("SELECT 1")  # opens a transaction, then nothing
            time.sleep(2.5)
            with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
                connection.execute("SELECT 1")
    finally:
        services.vector_database_deprovision(tenant.id)


def test_existing_tenant_databases_are_brought_under_the_bounds(neighbours, admin_dsn, capsys, settings):
    noisy, quiet = neighbours
    # What a tenant provisioned before the bounds existed looks like.
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        role = sql.Identifier(noisy.external_id)
        admin.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(role))
        admin.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(role))
    with psycopg.connect(database_dsn(admin_dsn, noisy.external_id), autocommit=True) as admin:
        admin.execute("GRANT EXECUTE ON FUNCTION pg_advisory_lock(bigint) TO PUBLIC")

    with pytest.raises(CommandError, match="1 tenant database is not under the bounds"):
        call_command("tenants", "limits")
    report = capsys.readouterr().out
    assert (
        f"{noisy.workspace.owner.email}: connection limit -1 instead of {settings.TENANT_ROLE_CONNECTION_LIMIT}"
        in report
    )
    assert "may call 1 advisory-lock functions" in report
    assert quiet.workspace.owner.email not in report

    call_command("tenants", "limits", "--apply")
    assert f"fixed: {noisy.workspace.owner.email}" in capsys.readouterr().out

    call_command("tenants", "limits")
    assert "every tenant database is under the bounds" in capsys.readouterr().out
    with psycopg.connect(_dsn(noisy)) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("SELECT pg_advisory_lock(1)")
    with psycopg.connect(admin_dsn) as admin:
        limit = admin.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", [noisy.external_id]).fetchone()
    assert limit == (settings.TENANT_ROLE_CONNECTION_LIMIT,)


def test_the_embedded_server_bounds_idle_transactions_and_temporary_files_for_everyone(admin_dsn):
    with psycopg.connect(admin_dsn) as admin:
        shown = {
            name: admin.execute("SELECT setting, source FROM pg_settings WHERE name = %s", [name]).fetchone()
            for name in ("idle_in_transaction_session_timeout", "temp_file_limit")
        }

    assert shown == {
        "idle_in_transaction_session_timeout": ("600000", "command line"),
        "temp_file_limit": (str(4 * 1024 * 1024), "command line"),  # kB
    }
