"""The commands work per workspace: `tenants` takes a slug or an email (that person's personal workspace), `ingest`
and `ask` take --workspace and refuse, in one line, a non-member or a role that lacks the right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tenants.models import Membership, User, VectorDatabase, Workspace
from tests.pdf_factory import text_pdf
from tests.workspaces import erase_databases, person

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def acme(capsys):
    call_command("tenants", "add", "acme", "--owner", "Ada@Example.com", "--name", "Acme Research")
    output = capsys.readouterr().out.splitlines()
    yield Workspace.objects.get(slug="acme"), output
    erase_databases()


def test_tenants_add_slug_with_owner_creates_a_team_workspace_with_its_own_database(acme, capsys):
    workspace, output = acme
    row = VectorDatabase.objects.get(workspace=workspace)
    assert output[:2] == ["created user ada@example.com", "created workspace acme owned by ada@example.com"]
    assert output[2] == f"acme: ready (postgres, {row.external_id})"
    assert (workspace.name, workspace.personal, workspace.owner.email) == ("Acme Research", False, "ada@example.com")
    assert list(workspace.memberships.values_list("user__email", "role")) == [("ada@example.com", "owner")]

    call_command("tenants", "show", "acme", "--json")
    shown = json.loads(capsys.readouterr().out)
    assert shown["workspace"] == {"slug": "acme", "name": "Acme Research", "owner": "ada@example.com"}
    assert (shown["status"], shown["tenant_key"]) == ("ready", row.tenant_key)

    Membership.objects.create(workspace=workspace, user=person("bob@example.com"), role="viewer")
    call_command("tenants", "add", "ada@example.com")  # the person's personal workspace, with a database of its own
    capsys.readouterr()
    call_command("tenants", "list", "--json")
    listed = {row["workspace"]["slug"]: row for row in json.loads(capsys.readouterr().out)}
    personal = Workspace.objects.get(owner__email="ada@example.com", personal=True)
    assert sorted(listed) == sorted(["acme", personal.slug])
    assert (listed["acme"]["members"], listed["acme"]["status"], listed["acme"]["region"]) == (2, "ready", "local")
    assert listed[personal.slug]["members"] == 1
    assert listed[personal.slug]["tenant_key"] != listed["acme"]["tenant_key"]

    call_command("tenants", "list")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "workspace", "owner", "members", "status", "region", "schema", "provider",
        "plan", "pages/mo", "questions/day", "storage",
    ]  # fmt: skip
    assert table[-1] == "2 workspace database(s)"

    with pytest.raises(CommandError, match="workspace acme exists, owned by ada@example.com"):
        call_command("tenants", "add", "acme", "--owner", "eve@example.com")
    with pytest.raises(CommandError, match="'not a slug' is not a workspace slug"):
        call_command("tenants", "add", "Not A Slug", "--owner", "eve@example.com")
    with pytest.raises(CommandError, match="no workspace with slug nowhere"):
        call_command("tenants", "show", "nowhere")
    assert not User.objects.filter(email="eve@example.com").exists()


def test_ingest_and_ask_act_in_the_workspace_given_and_refuse_roles_and_strangers(acme, tmp_path, settings, capsys):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.OPENAI_API_KEY = ""
    workspace, _ = acme
    viewer, stranger = person("viewer@example.com"), person("stranger@example.com")
    Membership.objects.create(workspace=workspace, user=viewer, role="viewer")
    pdf = tmp_path / "harbour.pdf"
    pdf.write_bytes(text_pdf(["The lamp of the lighthouse is cleaned every morning at dawn by the keeper."]))

    with pytest.raises(CommandError) as refused:
        call_command("ingest", "--user", "viewer@example.com", "--workspace", "acme", str(pdf))
    assert str(refused.value) == (
        "Your role in Acme Research is viewer, which cannot upload, delete or re-ingest documents. "
        "Ask an owner or admin of the workspace to change your role."
    )
    with pytest.raises(CommandError, match="^stranger@example.com is not a member of workspace acme$"):
        call_command("ask", "--user", "stranger@example.com", "--workspace", "acme", "When is the lamp cleaned?")
    assert not workspace.documents.exists()

    call_command("ingest", "--user", "ada@example.com", "--workspace", "acme", str(pdf))
    assert f"{pdf}: ready, 1 pages, 1 chunks" in capsys.readouterr().out
    document = workspace.documents.get()
    assert (document.uploaded_by.email, Path(document.file.path).parent.name) == (
        "ada@example.com",
        f"workspace-{workspace.id}",
    )

    call_command("ask", "--user", "viewer@example.com", "--workspace", "acme", "--json", "When is the lamp cleaned?")
    answer = json.loads(capsys.readouterr().out)
    assert answer["found"] is True
    assert [citation["document_id"] for citation in answer["citations"]] == [document.id]
    # Without --workspace: the person's personal workspace, which has none of Acme's documents.
    call_command("ask", "--user", "viewer@example.com", "--retrieve-only", "--json", "When is the lamp cleaned?")
    assert json.loads(capsys.readouterr().out)["citations"] == []
    assert stranger.memberships.count() == 0
