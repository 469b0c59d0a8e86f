"""Who may do what in a workspace: the one place roles are checked. Views, tasks and commands all call it.

A workspace you are not a member of does not exist for you (404: its existence is not revealed); an action your role
lacks is refused (403) with the reason.
"""

from __future__ import annotations

import enum

from django.core.exceptions import PermissionDenied
from django.http import Http404

from tenants.models import Membership, User, VectorDatabase, Workspace

Role = Membership.Role


class Action(enum.Enum):
    READ = "read documents"
    CHAT = "chat"
    EDIT_DOCUMENTS = "upload, delete or re-ingest documents"
    MANAGE_MEMBERS = "invite and remove members or change their roles"
    DELETE_WORKSPACE = "delete the workspace"
    TRANSFER_OWNERSHIP = "transfer ownership"
    MANAGE_ARCHIVES = "download the workspace's backups or rewind it"


_VIEWER = {Action.READ, Action.CHAT}
_EDITOR = _VIEWER | {Action.EDIT_DOCUMENTS}
_ADMIN = _EDITOR | {Action.MANAGE_MEMBERS}
_OWNER = _ADMIN | {Action.DELETE_WORKSPACE, Action.TRANSFER_OWNERSHIP, Action.MANAGE_ARCHIVES}
ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.VIEWER: frozenset(_VIEWER),
    Role.EDITOR: frozenset(_EDITOR),
    Role.ADMIN: frozenset(_ADMIN),
    Role.OWNER: frozenset(_OWNER),
}
# Highest first: an admin changes roles below owner only.
ROLE_RANK = {Role.OWNER: 3, Role.ADMIN: 2, Role.EDITOR: 1, Role.VIEWER: 0}


class WorkspaceNotFound(Http404):
    """Not a member of this workspace (or it does not exist): the same answer either way."""


class ActionForbidden(PermissionDenied):
    """A member whose role lacks the action; `str(error)` says which role it needs."""


def role_allows(role: str, action: Action) -> bool:
    return action in ROLE_ACTIONS.get(role, frozenset())


def membership_find(user: User, workspace: Workspace | str | int) -> Membership:
    """The user's membership of the workspace (given as a Workspace, slug or id), or WorkspaceNotFound."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        raise WorkspaceNotFound("No such workspace")
    memberships = Membership.objects.select_related("workspace", "user").filter(user=user)
    if isinstance(workspace, Workspace):
        memberships = memberships.filter(workspace_id=workspace.id)
    elif isinstance(workspace, int):
        memberships = memberships.filter(workspace_id=workspace)
    else:
        memberships = memberships.filter(workspace__slug=str(workspace).strip().lower())
    membership = memberships.first()
    if membership is None:
        raise WorkspaceNotFound("No such workspace")
    return membership


def membership_require(
    user: User, workspace: Workspace | str | int, action: Action, *, checked: Membership | None = None
) -> Membership:
    """The user's membership, checked for `action`: WorkspaceNotFound for a non-member, ActionForbidden for a member
    whose role lacks it. Read fresh from the database on every call, so a removed member loses access at once.

    `checked`: the membership the same piece of work read a moment ago (a chat turn, checked by its request), used
    instead of reading it again when it is this user's membership of this workspace."""
    if checked is not None and _is_membership_of(checked, user, workspace):
        return membership_check(checked, action)
    return membership_check(membership_find(user, workspace), action)


def _is_membership_of(membership: Membership, user: User, workspace: Workspace | str | int) -> bool:
    workspace_id = workspace.id if isinstance(workspace, Workspace) else workspace
    return membership.user_id == getattr(user, "id", None) and membership.workspace_id == workspace_id


def membership_check(membership: Membership, action: Action) -> Membership:
    """A membership just read, checked for `action` (ActionForbidden, saying which role it needs, when it lacks it)."""
    if not role_allows(membership.role, action):
        raise ActionForbidden(
            f"Your role in {membership.workspace.name} is {membership.role}, which cannot {action.value}. "
            "Ask an owner or admin of the workspace to change your role."
        )
    return membership


def membership_still_allows(user_id: int, workspace_id: int, action: Action) -> bool:
    """For long-running work (an answer being streamed): whether the person may still do `action` there now."""
    role = Membership.objects.filter(user_id=user_id, workspace_id=workspace_id, user__is_active=True).values_list(
        "role", flat=True
    )
    return bool(role) and role_allows(role[0], action)


class WorkspaceMoving(ActionForbidden):
    """The workspace's database is being restored or moved: writes wait until it is back."""


MOVING_MESSAGE = (
    "This workspace is moving to a new database: back in a moment. Nothing was changed; please try again in a minute."
)


def workspace_writable_require(workspace: Workspace | int) -> None:
    """Writes (uploads, deletions, chat) are refused while a restore or move runs (tenants.archives), so none is lost
    in the old database after its archive was taken."""
    workspace_id = workspace if isinstance(workspace, int) else workspace.id
    if VectorDatabase.objects.filter(workspace_id=workspace_id).exclude(operation="").exists():
        raise WorkspaceMoving(MOVING_MESSAGE)
