"""A team workspace with one member of each role, for the tests of workspaces and of their security."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.test import Client

from tenants import services
from tenants.models import Membership, User, VectorDatabase, Workspace
from tenants.workspaces import workspace_create

PASSWORD = "a long enough passphrase"


@dataclass
class Team:
    workspace: Workspace
    owner: User
    admin: User
    editor: User
    viewer: User
    people: dict[str, User] = field(default_factory=dict)

    def membership(self, user: User) -> Membership:
        return Membership.objects.get(workspace=self.workspace, user=user)

    def roles(self) -> dict[str, str]:
        """Every member's role, by email: what a refused change must leave as it was."""
        return dict(self.workspace.memberships.values_list("user__email", "role"))


def person(email: str) -> User:
    return User.objects.create_user(email=email, password=PASSWORD)


def make_team(owner: User, name: str = "Acme Research", provision: bool = True) -> Team:
    """`owner`'s team workspace (its database provisioned in-process) with an admin, an editor and a viewer."""
    workspace = workspace_create(owner, name)
    if provision:
        row = VectorDatabase.objects.get(workspace=workspace)
        assert services.vector_database_provision(row.id).status == VectorDatabase.Status.READY
    members = {}
    for role in ("admin", "editor", "viewer"):
        members[role] = person(f"{role}@{workspace.slug}.example.com")
        Workspace.objects.personal_for(members[role])  # as at sign-up
        Membership.objects.create(workspace=workspace, user=members[role], role=role)
    return Team(workspace, owner, members["admin"], members["editor"], members["viewer"], members)


def client_in(user: User, workspace: Workspace | None = None) -> Client:
    """A browser signed in as `user`, in `workspace` (switched to as the top bar does) or their personal one."""
    client = Client()
    client.force_login(user)
    if workspace is not None:
        response = client.post("/workspace/switch", {"workspace": workspace.slug})
        assert response.status_code == 302, response.status_code
    return client


def erase_databases() -> None:
    for row in VectorDatabase.objects.exclude(status=VectorDatabase.Status.DELETED):
        services.vector_database_deprovision(row.id)
