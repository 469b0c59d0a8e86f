"""The data migration to workspaces, run on a main database made at the previous schema: every person's database
becomes their personal workspace's, with nothing copied (same registry row, same tenant database, same credentials)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("tenants", "0002_vector_databases"), ("documents", "0002_embedding_progress")]

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(targets: list[tuple[str, str]]):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def _latest() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return [node for node in executor.loader.graph.leaf_nodes() if node[0] in {"tenants", "documents"}]


@pytest.fixture
def previous_schema():
    """The main database at the schema before workspaces; brought back to the latest one afterwards."""
    apps = _migrate(BEFORE)
    yield apps
    _migrate(_latest())


def test_every_person_gets_a_personal_workspace_that_owns_their_database_and_documents(previous_schema):
    apps = previous_schema
    User = apps.get_model("tenants", "User")
    VectorDatabase = apps.get_model("tenants", "VectorDatabase")
    Document = apps.get_model("documents", "Document")
    ada = User.objects.create(email="ada@example.com", name="Ada", password="!")
    bob = User.objects.create(email="bob.smith@example.org", password="!")
    no_database_yet = User.objects.create(email="carol@example.net", password="!")
    ada_row = VectorDatabase.objects.create(
        tenant=ada, tenant_key="a1b2c3", provider="postgres", status="ready", encrypted_credentials="sealed-a"
    )
    bob_row = VectorDatabase.objects.create(
        tenant=bob, tenant_key="d4e5f6", provider="neon", status="ready", encrypted_credentials="sealed-b"
    )
    erased = VectorDatabase.objects.create(tenant=None, tenant_key="0f0f0f", provider="postgres", status="deleted")
    ada_document = Document.objects.create(
        owner=ada, title="Notes", file="documents/1/x.pdf", original_filename="x.pdf", size_bytes=10, sha256="0" * 64
    )
    bob_document = Document.objects.create(
        owner=bob, title="Plan", file="documents/2/y.pdf", original_filename="y.pdf", size_bytes=20, sha256="1" * 64
    )

    apps = _migrate(_latest())

    Workspace = apps.get_model("tenants", "Workspace")
    Membership = apps.get_model("tenants", "Membership")
    VectorDatabase = apps.get_model("tenants", "VectorDatabase")
    Document = apps.get_model("documents", "Document")
    workspaces = {w.owner_id: w for w in Workspace.objects.all()}
    assert sorted(workspaces) == sorted([ada.id, bob.id, no_database_yet.id])
    assert all(workspace.personal for workspace in workspaces.values())
    assert workspaces[ada.id].name == "Ada's workspace"
    assert workspaces[bob.id].name == "bob.smith's workspace"
    assert workspaces[bob.id].slug.startswith("bobsmith-")
    assert sorted(Membership.objects.values_list("workspace__owner_id", "user_id", "role")) == sorted(
        [(ada.id, ada.id, "owner"), (bob.id, bob.id, "owner"), (no_database_yet.id, no_database_yet.id, "owner")]
    )
    # Nothing copied: the same registry rows, pointing at the same databases with the same credentials.
    assert sorted(VectorDatabase.objects.values_list("id", "workspace_id", "tenant_key", "encrypted_credentials")) == [
        (ada_row.id, workspaces[ada.id].id, "a1b2c3", "sealed-a"),
        (bob_row.id, workspaces[bob.id].id, "d4e5f6", "sealed-b"),
        (erased.id, None, "0f0f0f", ""),
    ]
    assert sorted(Document.objects.values_list("id", "workspace_id", "uploaded_by_id")) == [
        (ada_document.id, workspaces[ada.id].id, ada.id),
        (bob_document.id, workspaces[bob.id].id, bob.id),
    ]


def test_the_app_finds_a_migrated_persons_database_through_their_personal_workspace(previous_schema):
    apps = previous_schema
    User = apps.get_model("tenants", "User")
    VectorDatabase = apps.get_model("tenants", "VectorDatabase")
    ada = User.objects.create(email="ada@example.com", password="!")
    row = VectorDatabase.objects.create(tenant=ada, tenant_key="abcdef", provider="postgres", status="ready")

    _migrate(_latest())

    from tenants.models import User as CurrentUser
    from tenants.selectors import vector_database_for_tenant, workspace_by_slug_or_email

    person = CurrentUser.objects.get(id=ada.id)
    found = vector_database_for_tenant(person)
    assert found is not None and found.id == row.id
    workspace = workspace_by_slug_or_email("ADA@example.com ")
    assert workspace is not None and workspace.vector_database.id == row.id
