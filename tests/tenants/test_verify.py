"""`tenants verify`: the explicit drift check. It connects to every ready tenant database, corrects the registry to
what the database has, and reports what a database lacks."""

import io

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants import services
from tenants.crypto import decrypt_credentials, encrypt_credentials
from tenants.models import User, VectorDatabase
from tests.helpers import personal_workspace
from vectordb.schema import latest_schema_version


@pytest.fixture
def fleet(transactional_db):
    rows = []
    for number in range(2):
        user = User.objects.create_user(email=f"verified{number}@example.com")
        rows.append(
            services.vector_database_provision(
                VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres").id
            )
        )
    yield rows
    for row in VectorDatabase.objects.exclude(status=VectorDatabase.Status.DELETED):
        services.vector_database_deprovision(row.id)


def _verify(*arguments) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("tenants", "verify", *arguments, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_a_fleet_that_matches_the_registry_passes(fleet):
    out, err = _verify("--jobs", "2", "--rate", "50")

    assert "2 tenant database(s) checked, 0 registry correction(s)" in out
    assert "every tenant database matches the registry" in out
    assert err == ""


def test_the_registry_is_corrected_to_what_the_database_has(fleet, settings):
    VectorDatabase.objects.filter(id=fleet[0].id).update(schema_version="", embedding_model="some-other-model")

    out, _ = _verify()

    fleet[0].refresh_from_db()
    assert fleet[0].schema_version == latest_schema_version()
    assert fleet[0].embedding_model == settings.EMBEDDING_MODEL
    assert f"registry corrected: verified0@example.com: schema_version (none) -> {latest_schema_version()}" in out
    assert (
        f"registry corrected: verified0@example.com: embedding_model some-other-model -> {settings.EMBEDDING_MODEL}"
        in out
    )
    assert "every tenant database matches the registry" in out
    assert "0 registry correction(s)" in _verify()[0]  # the second run finds nothing to correct


def test_a_missing_index_is_named_and_the_others_pass(fleet):
    with psycopg.connect(decrypt_credentials(fleet[1].encrypted_credentials)["dsn"], autocommit=True) as connection:
        connection.execute("DROP INDEX embeddings_document_id")
    out = io.StringIO()

    with pytest.raises(CommandError, match=r"1 tenant database\(s\) with problems, 0 unreachable"):
        call_command("tenants", "verify", stdout=out, stderr=io.StringIO())

    assert "verified1@example.com: missing indexes: embeddings_document_id" in out.getvalue()
    assert "verified0@example.com" not in out.getvalue()


def test_an_unreachable_database_is_reported_without_its_password(fleet):
    credentials = decrypt_credentials(fleet[0].encrypted_credentials)
    credentials["migration_dsn"] = "postgresql://nobody:hunter2secret@127.0.0.1:1/nowhere?connect_timeout=2"
    VectorDatabase.objects.filter(id=fleet[0].id).update(encrypted_credentials=encrypt_credentials(credentials))
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError, match=r"0 tenant database\(s\) with problems, 1 unreachable"):
        call_command("tenants", "verify", stdout=out, stderr=err)

    assert "UNREACHABLE verified0@example.com" in err.getvalue()
    assert "hunter2secret" not in out.getvalue() + err.getvalue()
    fleet[0].refresh_from_db()
    assert fleet[0].schema_version == latest_schema_version()  # nothing learnt, nothing changed


def test_jobs_and_rate_must_be_positive(fleet):
    with pytest.raises(CommandError, match="--jobs must be at least 1"):
        _verify("--jobs", "0")
    with pytest.raises(CommandError, match=r"--rate must be above 0"):
        _verify("--rate", "0")
