"""The one way a management command finds the person or workspace it is told about."""

from django.core.management.base import CommandError

from tenants.models import Membership, User, Workspace
from tenants.permissions import Action, ActionForbidden, WorkspaceNotFound, membership_require
from tenants.selectors import user_by_email, workspace_by_slug_or_email


def user_for_command(email: str) -> User:
    """The user with this email (case and surrounding spaces ignored), or a CommandError that says so."""
    user = user_by_email(email)
    if user is None:
        raise CommandError(f"no user with email {email.strip()}")
    return user


def workspace_for_command(identifier: str) -> Workspace:
    """A workspace by slug, or by email that person's personal workspace; a CommandError when there is none."""
    workspace = workspace_by_slug_or_email(identifier)
    if workspace is None:
        what = "user with email" if "@" in identifier else "workspace with slug"
        raise CommandError(f"no {what} {identifier.strip()}")
    return workspace


def membership_for_command(user: User, workspace_slug: str | None, action: Action) -> Membership:
    """The person's membership of the workspace (default: their personal one), checked for `action` through the same
    helper as the pages; a one-line CommandError for a non-member or a role that lacks it."""
    workspace = workspace_for_command(workspace_slug) if workspace_slug else Workspace.objects.personal_for(user)
    try:
        return membership_require(user, workspace, action)
    except WorkspaceNotFound:
        raise CommandError(f"{user.email} is not a member of workspace {workspace.slug}") from None
    except ActionForbidden as error:
        raise CommandError(str(error)) from None
