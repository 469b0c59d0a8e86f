"""Workspaces: roles decide what members may do, owners stay, invitations bring people in once, and deleting a
workspace or an account takes exactly what it should."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from tenants import services
from tenants.models import Invitation, Membership, User, VectorDatabase, Workspace
from tenants.permissions import Action, ActionForbidden, WorkspaceNotFound, membership_require, role_allows
from tenants.workspaces import (
    WorkspaceRefused,
    member_remove,
    member_role_change,
    ownership_transfer,
    workspace_leave,
)
from tests.workspaces import PASSWORD, client_in, erase_databases, make_team, person

pytestmark = pytest.mark.django_db(transaction=True)
RACERS = 6


@pytest.fixture
def team(owner):
    return make_team(owner, provision=False)


def _invitation_link(mail) -> str:
    return re.search(r"https?://\S+/invitations/\S+", mail.body).group(0)


def test_each_role_may_do_exactly_what_the_issue_lists():
    allowed = {
        role: sorted(action.name for action in Action if role_allows(role, action))
        for role in ("owner", "admin", "editor", "viewer", "stranger")
    }
    assert allowed == {
        "owner": sorted(
            ["READ", "CHAT", "EDIT_DOCUMENTS", "MANAGE_MEMBERS", "DELETE_WORKSPACE", "TRANSFER_OWNERSHIP"]
            + ["MANAGE_ARCHIVES"]  # download its backups and rewind it (issue 22)
        ),
        "admin": sorted(["READ", "CHAT", "EDIT_DOCUMENTS", "MANAGE_MEMBERS"]),
        "editor": sorted(["READ", "CHAT", "EDIT_DOCUMENTS"]),
        "viewer": sorted(["READ", "CHAT"]),
        "stranger": [],
    }


def test_the_permission_helper_hides_other_workspaces_and_explains_a_missing_role(team, stranger):
    with pytest.raises(WorkspaceNotFound):
        membership_require(stranger, team.workspace, Action.READ)
    with pytest.raises(WorkspaceNotFound):
        membership_require(stranger, team.workspace.slug, Action.READ)
    with pytest.raises(ActionForbidden) as refused:
        membership_require(team.viewer, team.workspace, Action.EDIT_DOCUMENTS)
    assert str(refused.value) == (
        "Your role in Acme Research is viewer, which cannot upload, delete or re-ingest documents. "
        "Ask an owner or admin of the workspace to change your role."
    )
    assert membership_require(team.editor, team.workspace.slug, Action.EDIT_DOCUMENTS).role == "editor"
    User.objects.filter(id=team.editor.id).update(is_active=False)  # an account being deleted reaches nothing
    team.editor.refresh_from_db()
    with pytest.raises(WorkspaceNotFound):
        membership_require(team.editor, team.workspace, Action.READ)


def test_a_person_always_has_exactly_one_personal_workspace(owner):
    first = Workspace.objects.personal_for(owner)
    assert Workspace.objects.personal_for(owner) == first
    assert (first.personal, first.owner, first.name) == (True, owner, "owner's workspace")
    assert list(first.memberships.values_list("user__email", "role")) == [("owner@example.com", "owner")]


def test_two_first_requests_racing_for_a_personal_workspace_make_exactly_one():
    newcomer = User.objects.create_user(email="newcomer@example.com")
    start = threading.Barrier(RACERS)
    found: list[int] = []

    def ask() -> None:
        try:
            start.wait()
            found.append(Workspace.objects.personal_for(newcomer).id)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    [workspace] = Workspace.objects.filter(owner=newcomer, personal=True)
    assert found == [workspace.id] * RACERS
    assert list(workspace.memberships.values_list("user__email", "role")) == [("newcomer@example.com", "owner")]


def test_admins_change_roles_below_owner_and_the_last_owner_cannot_be_demoted(team):
    editor = team.membership(team.editor)
    assert member_role_change(team.admin, team.workspace, editor.id, "viewer").role == "viewer"
    before = team.roles()

    with pytest.raises(ActionForbidden, match="Only an owner can make someone an owner"):
        member_role_change(team.admin, team.workspace, editor.id, "owner")
    with pytest.raises(ActionForbidden, match="Only an owner can change the role of an owner"):
        member_role_change(team.admin, team.workspace, team.membership(team.owner).id, "viewer")
    with pytest.raises(ActionForbidden):
        member_role_change(team.editor, team.workspace, team.membership(team.viewer).id, "admin")
    with pytest.raises(WorkspaceRefused, match="The workspace needs an owner"):
        member_role_change(team.owner, team.workspace, team.membership(team.owner).id, "admin")
    with pytest.raises(WorkspaceRefused, match="“boss” is not a role"):
        member_role_change(team.owner, team.workspace, editor.id, "boss")
    assert team.roles() == before

    member_role_change(team.owner, team.workspace, team.membership(team.admin).id, "owner")
    member_role_change(team.admin, team.workspace, team.membership(team.owner).id, "viewer")  # two owners: allowed
    team.workspace.refresh_from_db()
    assert team.workspace.owner == team.admin  # the listed owner follows the owner role


def test_the_last_owner_cannot_leave_and_the_personal_workspace_cannot_be_left(team):
    with pytest.raises(WorkspaceRefused, match="You are the last owner"):
        workspace_leave(team.owner, team.workspace)
    with pytest.raises(WorkspaceRefused, match="Your personal workspace is yours"):
        workspace_leave(team.owner, Workspace.objects.personal_for(team.owner))
    workspace_leave(team.viewer, team.workspace)
    assert sorted(team.roles().values()) == ["admin", "editor", "owner"]


def test_admins_remove_members_below_owner_and_nobody_removes_the_last_owner(team):
    with pytest.raises(ActionForbidden, match="Only an owner can remove an owner"):
        member_remove(team.admin, team.workspace, team.membership(team.owner).id)
    with pytest.raises(ActionForbidden):
        member_remove(team.viewer, team.workspace, team.membership(team.editor).id)
    with pytest.raises(WorkspaceNotFound):  # a membership of another workspace is not found here
        member_remove(team.owner, team.workspace, Workspace.objects.personal_for(team.editor).memberships.get().id)
    with pytest.raises(WorkspaceRefused, match="use “Leave workspace”"):
        member_remove(team.owner, team.workspace, team.membership(team.owner).id)
    assert len(team.roles()) == 4

    member_remove(team.admin, team.workspace, team.membership(team.editor).id)
    assert sorted(team.roles()) == sorted([team.owner.email, team.admin.email, team.viewer.email])


def test_the_owner_hands_the_workspace_over_and_stays_on_as_admin(team):
    with pytest.raises(ActionForbidden):
        ownership_transfer(team.admin, team.workspace, team.membership(team.editor).id)
    ownership_transfer(team.owner, team.workspace, team.membership(team.editor).id)
    team.workspace.refresh_from_db()
    assert team.workspace.owner == team.editor
    assert team.roles()[team.owner.email] == "admin"
    assert team.roles()[team.editor.email] == "owner"


def test_an_invitation_brings_an_existing_account_in_once(team, mailoutbox):
    guest = person("guest@example.org")
    admin = client_in(team.admin, team.workspace)
    response = admin.post(reverse("workspace_invite"), {"email": "Guest@Example.org ", "role": "editor"})
    assert response.status_code == 302
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["guest@example.org"]
    assert "invited you to Acme Research" in mailoutbox[0].subject
    link = _invitation_link(mailoutbox[0])

    guest_browser = client_in(guest)
    page = guest_browser.get(link)
    assert page.status_code == 200
    assert "Join Acme Research" in page.content.decode()
    accepted = guest_browser.post(link)
    assert accepted.status_code == 302
    assert team.roles()["guest@example.org"] == "editor"
    # The guest is now in the workspace they joined.
    assert 'data-slug="' + team.workspace.slug + '"' in guest_browser.get(reverse("dashboard")).content.decode()

    again = guest_browser.post(link)
    assert again.status_code == 410
    assert "You already accepted this invitation" in again.content.decode()
    assert Membership.objects.filter(workspace=team.workspace, user=guest).count() == 1


def test_an_invitation_works_for_a_new_account_made_from_its_link(team, mailoutbox, client):
    admin = client_in(team.admin, team.workspace)
    admin.post(reverse("workspace_invite"), {"email": "newcomer@example.org", "role": "viewer"})
    link = _invitation_link(mailoutbox[0])
    path = link.split("testserver", 1)[1]

    signed_out = client.get(path).content.decode()
    assert f"{reverse('account_signup')}?next={path}" in signed_out
    signed_up = client.post(
        f"{reverse('account_signup')}?next={path}",
        {"email": "newcomer@example.org", "password1": PASSWORD, "password2": PASSWORD, "next": path},
    )
    assert signed_up.status_code == 302 and signed_up["Location"] == path
    client.post(path)
    assert team.roles()["newcomer@example.org"] == "viewer"
    newcomer = User.objects.get(email="newcomer@example.org")
    assert Workspace.objects.filter(owner=newcomer, personal=True).count() == 1  # and a workspace of their own


def test_revoked_expired_and_mismatched_invitations_explain_why_and_add_no_one(team, mailoutbox):
    admin = client_in(team.admin, team.workspace)
    for email in ("revoked@example.org", "late@example.org", "right@example.org"):
        admin.post(reverse("workspace_invite"), {"email": email, "role": "viewer"})
    revoked_link, late_link, right_link = (_invitation_link(mail) for mail in mailoutbox)
    revoked = Invitation.objects.get(email="revoked@example.org")
    admin.post(reverse("invitation_revoke", args=[revoked.id]))
    Invitation.objects.filter(email="late@example.org").update(expires_at=timezone.now() - timedelta(seconds=1))
    before = team.roles()

    refusals = {
        "revoked": client_in(person("revoked@example.org")).post(revoked_link),
        "expired": client_in(person("late@example.org")).post(late_link),
        "someone else's": client_in(person("wrong@example.org")).post(right_link),
        "made up": client_in(person("curious@example.org")).post(right_link[:-4] + "AAAA"),
    }

    assert {name: response.status_code for name, response in refusals.items()} == {
        "revoked": 410, "expired": 410, "someone else's": 410, "made up": 404,
    }  # fmt: skip
    text = {name: response.content.decode() for name, response in refusals.items()}
    assert "This invitation to Acme Research was withdrawn. Ask admin for a new one." in text["revoked"]
    assert "This invitation to Acme Research has expired. Ask admin to invite you again." in text["expired"]
    assert "This invitation is for right@example.org, and you are signed in as wrong@example.org." in text[
        "someone else's"
    ].replace("&#x27;", "'")
    assert "This invitation link is not valid." in text["made up"]
    assert team.roles() == before


def test_deleting_a_workspace_drops_its_database_and_its_members_lose_it_at_once(owner, admin_dsn, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    team = make_team(owner)
    row = VectorDatabase.objects.get(workspace=team.workspace)
    viewer = client_in(team.viewer, team.workspace)
    assert viewer.post(reverse("workspace_delete"), {"confirm_slug": team.workspace.slug}).status_code == 403
    owner_browser = client_in(owner, team.workspace)
    owner_browser.post(reverse("workspace_delete"), {"confirm_slug": "not-the-slug"})
    assert Workspace.objects.filter(id=team.workspace.id).exists()

    owner_browser.post(reverse("workspace_delete"), {"confirm_slug": team.workspace.slug})

    assert not Membership.objects.filter(workspace_id=team.workspace.id).exists()  # access ends at once
    services.workspace_erase(team.workspace.id)  # what the queued task does
    row.refresh_from_db()
    assert (row.status, row.workspace_id, row.encrypted_credentials) == ("deleted", None, "")
    assert not Workspace.objects.filter(id=team.workspace.id).exists()
    with psycopg.connect(admin_dsn) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [row.external_id]).fetchone() is None
    # The viewer is back in their personal workspace.
    assert viewer.get(reverse("dashboard")).status_code == 200
    erase_databases()


def test_deleting_an_account_takes_the_workspaces_it_solely_owns_and_leaves_the_others(owner):
    Workspace.objects.personal_for(owner)  # as at sign-up
    sole = make_team(owner, "Sole Owner Inc", provision=False)
    shared = make_team(person("founder@example.com"), "Shared Co", provision=False)
    Membership.objects.create(workspace=shared.workspace, user=owner, role="owner")
    Workspace.objects.filter(id=shared.workspace.id).update(owner=owner)  # owner is its listed owner, too

    assert sorted(w.name for w in services.workspaces_solely_owned(owner)) == ["Sole Owner Inc", "owner's workspace"]
    services.tenant_erase(owner.id)

    assert not User.objects.filter(id=owner.id).exists()
    team_workspaces = Workspace.objects.filter(personal=False).values_list("name", flat=True)
    assert list(team_workspaces) == ["Shared Co"]
    assert not Workspace.objects.filter(owner_id=owner.id).exists()
    shared.workspace.refresh_from_db()
    assert shared.workspace.owner.email == "founder@example.com"  # the other owner is listed now
    assert "owner@example.com" not in shared.roles()
