"""Workspaces and their people: create, switch, members and roles, invitations, leave, transfer, delete.

Every function that acts for a person checks their role through tenants.permissions first; views, tasks and commands
call these and only render the outcome.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from tenants import services
from tenants.models import Invitation, Membership, User, Workspace, new_workspace_slug
from tenants.permissions import (
    ROLE_RANK,
    Action,
    ActionForbidden,
    Role,
    membership_check,
    membership_find,
    membership_require,
)
from tenants.plans import LimitReached
from tenants.usage import members_admit

logger = logging.getLogger(__name__)

CURRENT_WORKSPACE_SESSION_KEY = "current_workspace_id"
INVITATION_TOKEN_BYTES = 32  # 256 bits from the OS's generator: not guessable, not enumerable


class WorkspaceRefused(Exception):
    """A change the rules forbid (the last owner leaving, an empty name...); `str(error)` says why and what to do."""


class InvitationInvalid(Exception):
    """An invitation link that cannot be accepted; `str(error)` explains why (revoked, expired, used, not yours)."""


# --- workspaces ------------------------------------------------------------------------------------------------------


def workspace_create(owner: User, name: str, region: str | None = None, slug: str | None = None) -> Workspace:
    """A team workspace, owned by `owner`, with a dedicated database requested at once (as at sign-up). `slug`: an
    operator's choice (`tenants add SLUG --owner EMAIL`); by default one is made from the name."""
    name = " ".join((name or "").split())
    if not name:
        raise WorkspaceRefused("Give the workspace a name.")
    if len(name) > 150:
        raise WorkspaceRefused(f"The name is {len(name)} characters long; use at most 150.")
    with transaction.atomic():
        workspace = Workspace.objects.create(
            name=name, slug=slug or new_workspace_slug(name), owner=owner, personal=False
        )
        Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
        services.vector_database_request(workspace, region=region)
    return workspace


def memberships_for_user(user: User) -> list[Membership]:
    """Every workspace the person belongs to (personal first, then by name), for the switcher."""
    Workspace.objects.personal_for(user)  # a person always has one to be in
    return list(
        Membership.objects.filter(user=user)
        .select_related("workspace", "workspace__owner")
        .order_by("-workspace__personal", "workspace__name", "workspace_id")
    )


def membership_current(request: HttpRequest, action: Action = Action.READ) -> Membership:
    """The membership of the workspace the signed-in person is in (kept in their session), checked for `action`.
    A workspace they left or were removed from is forgotten: they are back in their personal one."""
    user = request.user
    assert isinstance(user, User)
    workspace_id = request.session.get(CURRENT_WORKSPACE_SESSION_KEY)
    if workspace_id is not None:
        membership = Membership.objects.select_related("workspace").filter(user=user, workspace_id=workspace_id).first()
        if membership is None:
            request.session.pop(CURRENT_WORKSPACE_SESSION_KEY, None)
    if workspace_id is None or membership is None:
        membership = membership_find(user, Workspace.objects.personal_for(user))
    return membership_check(membership, action)  # just read: no second query for the same row


def workspace_switch(request: HttpRequest, slug: str) -> Membership:
    """Make the workspace (by slug) the one the person is in; WorkspaceNotFound unless they are a member."""
    assert isinstance(request.user, User)
    membership = membership_require(request.user, slug, Action.READ)
    request.session[CURRENT_WORKSPACE_SESSION_KEY] = membership.workspace_id
    return membership


# --- members and roles -------------------------------------------------------------------------------------------------


def members_for(user: User, workspace: Workspace) -> list[Membership]:
    membership_require(user, workspace, Action.READ)
    return list(workspace.memberships.select_related("user").order_by("created_at", "id"))


def _other_member(actor: Membership, membership_id: int | str) -> Membership:
    from tenants.permissions import WorkspaceNotFound

    try:
        return Membership.objects.select_related("user", "workspace").get(
            id=int(membership_id), workspace_id=actor.workspace_id
        )
    except (Membership.DoesNotExist, ValueError, TypeError):
        raise WorkspaceNotFound("No such member") from None


def _owners_left_without(membership: Membership) -> int:
    return (
        Membership.objects.filter(workspace_id=membership.workspace_id, role=Role.OWNER)
        .exclude(id=membership.id)
        .count()
    )


def _refuse_above_actor(actor: Membership, target_role: str, verb: str) -> None:
    """An admin acts on roles below owner only; an owner on every role."""
    if actor.role != Role.OWNER and ROLE_RANK[Role(target_role)] >= ROLE_RANK[Role.OWNER]:
        raise ActionForbidden(f"Only an owner can {verb} an owner. Ask an owner of {actor.workspace.name}.")


def member_role_change(actor_user: User, workspace: Workspace, membership_id: int | str, role: str) -> Membership:
    """Change a member's role. Admins change roles below owner; the last owner cannot be demoted."""
    actor = membership_require(actor_user, workspace, Action.MANAGE_MEMBERS)
    if role not in Role.values:
        raise WorkspaceRefused(f"“{role}” is not a role; choose one of {', '.join(Role.values)}.")
    with transaction.atomic():
        # Row locks on the workspace's owners: two demotions at once cannot leave it with none.
        list(Membership.objects.select_for_update().filter(workspace=workspace, role=Role.OWNER))
        member = _other_member(actor, membership_id)
        _refuse_above_actor(actor, member.role, "change the role of")
        _refuse_above_actor(actor, role, "make someone")
        if member.role == Role.OWNER and role != Role.OWNER and not _owners_left_without(member):
            raise WorkspaceRefused(
                "The workspace needs an owner: make another member an owner before changing this one's role."
            )
        Membership.objects.filter(id=member.id).update(role=role)
        if member.role == Role.OWNER and role != Role.OWNER and workspace.owner_id == member.user_id:
            successor = workspace.memberships.filter(role=Role.OWNER).order_by("created_at", "id").first()
            assert successor is not None  # checked above
            Workspace.objects.filter(id=workspace.id).update(owner=successor.user_id)
    member.role = role
    return member


def member_remove(actor_user: User, workspace: Workspace, membership_id: int | str) -> Membership:
    """Remove a member; they lose access at once. Admins remove members below owner; the last owner stays."""
    actor = membership_require(actor_user, workspace, Action.MANAGE_MEMBERS)
    with transaction.atomic():
        list(Membership.objects.select_for_update().filter(workspace=workspace, role=Role.OWNER))
        member = _other_member(actor, membership_id)
        if member.user_id == actor_user.id:
            raise WorkspaceRefused("To leave the workspace yourself, use “Leave workspace”.")
        _refuse_above_actor(actor, member.role, "remove")
        if member.role == Role.OWNER and not _owners_left_without(member):
            raise WorkspaceRefused("The workspace needs an owner: this is its last one.")
        services.membership_end(member)
    return member


def workspace_leave(user: User, workspace: Workspace) -> None:
    """Leave a workspace. Not the personal one (it goes with the account), and not as its last owner."""
    with transaction.atomic():
        list(Membership.objects.select_for_update().filter(workspace=workspace, role=Role.OWNER))
        membership = membership_find(user, workspace)
        if workspace.personal and workspace.owner_id == user.id:
            raise WorkspaceRefused("Your personal workspace is yours for as long as your account exists.")
        if membership.role == Role.OWNER and not _owners_left_without(membership):
            raise WorkspaceRefused(
                "You are the last owner: make another member an owner first, or delete the workspace."
            )
        services.membership_end(membership)


def ownership_transfer(actor_user: User, workspace: Workspace, membership_id: int | str) -> Membership:
    """Make another member the listed owner (with the owner role); the previous owner stays on as an admin."""
    actor = membership_require(actor_user, workspace, Action.TRANSFER_OWNERSHIP)
    with transaction.atomic():
        member = _other_member(actor, membership_id)
        if member.user_id == actor_user.id:
            raise WorkspaceRefused("Choose another member to hand the workspace to.")
        if workspace.personal:
            raise WorkspaceRefused("A personal workspace stays with its person; create a team workspace to hand over.")
        Membership.objects.filter(id=member.id).update(role=Role.OWNER)
        Membership.objects.filter(id=actor.id).update(role=Role.ADMIN)
        Workspace.objects.filter(id=workspace.id).update(owner=member.user_id)
    member.role = Role.OWNER
    return member


def workspace_delete(actor_user: User, workspace: Workspace, confirm_slug: str) -> None:
    """Delete a team workspace: its members lose access now, its database, files and rows go in the background."""
    membership_require(actor_user, workspace, Action.DELETE_WORKSPACE)
    if workspace.personal:
        raise WorkspaceRefused("Your personal workspace is deleted with your account (on the account page).")
    if (confirm_slug or "").strip().lower() != workspace.slug:
        raise WorkspaceRefused(f"Type the workspace's slug, {workspace.slug}, exactly to confirm deleting it.")
    services.workspace_delete_request(workspace)


# --- invitations -------------------------------------------------------------------------------------------------------


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class InvitationSent:
    invitation: Invitation
    token: str  # the one copy besides the mail: shown to the inviter's command, never stored


def invitation_create(
    actor_user: User, workspace: Workspace, email: str, role: str, request: HttpRequest
) -> InvitationSent:
    """Invite someone by email (allauth's mail machinery sends the link, built for the host of `request`). Admins
    invite to roles below owner."""
    from allauth.account.adapter import get_adapter
    from allauth.core.context import request_context
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    actor = membership_require(actor_user, workspace, Action.MANAGE_MEMBERS)
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise WorkspaceRefused(f"“{email}” is not an email address.") from None
    if role not in Role.values:
        raise WorkspaceRefused(f"“{role}” is not a role; choose one of {', '.join(Role.values)}.")
    _refuse_above_actor(actor, role, "invite")
    if workspace.memberships.filter(user__email__iexact=email).exists():
        raise WorkspaceRefused(f"{email} is already a member of {workspace.name}.")
    token = secrets.token_urlsafe(INVITATION_TOKEN_BYTES)
    with transaction.atomic():
        try:
            members_admit(workspace, with_invitations=True)  # the plan's members limit (issue 21)
        except LimitReached as error:
            raise WorkspaceRefused(str(error)) from None
        invitation = Invitation.objects.create(
            workspace=workspace,
            email=email,
            role=role,
            token_digest=_token_digest(token),
            invited_by=actor_user,
            expires_at=timezone.now() + timedelta(hours=settings.WORKSPACE_INVITATION_EXPIRY_HOURS),
        )
    from django.urls import reverse

    url = request.build_absolute_uri(reverse("invitation_accept", args=[token]))
    with request_context(request):  # allauth's mails read the request from its context (set by its middleware)
        get_adapter(request).send_mail(
            "account/email/workspace_invitation",
            email,
            {
                "workspace_name": workspace.name,
                "inviter": actor_user.display_name,
                "role": role,
                "invitation_url": url,
                "expires_at": invitation.expires_at,
            },
        )
    logger.info("invitation %s to workspace %s sent", invitation.id, workspace.id)
    return InvitationSent(invitation=invitation, token=token)


def invitations_pending(user: User, workspace: Workspace) -> list[Invitation]:
    membership_require(user, workspace, Action.MANAGE_MEMBERS)
    return list(
        workspace.invitations.filter(accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()).order_by(
            "created_at"
        )
    )


def invitation_revoke(actor_user: User, workspace: Workspace, invitation_id: int | str) -> Invitation:
    from tenants.permissions import WorkspaceNotFound

    membership_require(actor_user, workspace, Action.MANAGE_MEMBERS)
    try:
        invitation = Invitation.objects.get(id=int(invitation_id), workspace=workspace)
    except (Invitation.DoesNotExist, ValueError, TypeError):
        raise WorkspaceNotFound("No such invitation") from None
    Invitation.objects.filter(id=invitation.id, accepted_at=None, revoked_at=None).update(revoked_at=timezone.now())
    invitation.refresh_from_db()
    return invitation


def invitation_for_token(token: str) -> Invitation | None:
    """The invitation a link carries (whatever its state), or None for a token that was never issued."""
    if not token or len(token) > 200:
        return None
    return (
        Invitation.objects.select_related("workspace", "invited_by").filter(token_digest=_token_digest(token)).first()
    )


def invitation_refusal(invitation: Invitation | None, user: User | None = None) -> str:
    """Why this invitation cannot be accepted (by `user`, when given); "" when it can."""
    if invitation is None:
        return "This invitation link is not valid. Check that you opened the whole link from the email."
    who = invitation.invited_by.display_name if invitation.invited_by else "the workspace's admins"
    if invitation.revoked_at is not None:
        return f"This invitation to {invitation.workspace.name} was withdrawn. Ask {who} for a new one."
    if invitation.accepted_at is not None:
        if user is not None and invitation.accepted_by_id == user.id:
            return f"You already accepted this invitation: {invitation.workspace.name} is in your workspaces."
        return "This invitation has already been used. Ask for a new one if you need it."
    if invitation.expires_at <= timezone.now():
        return f"This invitation to {invitation.workspace.name} has expired. Ask {who} to invite you again."
    if user is not None and user.email.lower() != invitation.email.lower():
        return (
            f"This invitation is for {invitation.email}, and you are signed in as {user.email}. "
            f"Sign out and sign in (or sign up) as {invitation.email} to accept it."
        )
    return ""


def invitation_accept(user: User, token: str) -> Membership:
    """Join the workspace the invitation is for. Single use: the claim is one conditional update."""
    invitation = invitation_for_token(token)
    refusal = invitation_refusal(invitation, user)
    if refusal:
        raise InvitationInvalid(refusal)
    assert invitation is not None
    with transaction.atomic():
        claimed = Invitation.objects.filter(
            id=invitation.id, accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()
        ).update(accepted_at=timezone.now(), accepted_by=user)
        if not claimed:  # used or revoked in the meantime
            invitation.refresh_from_db()
            raise InvitationInvalid(invitation_refusal(invitation, user) or "This invitation has already been used.")
        try:
            members_admit(invitation.workspace, with_invitations=False)
        except LimitReached as error:
            raise InvitationInvalid(str(error)) from None
        try:
            with transaction.atomic():
                membership = Membership.objects.create(workspace=invitation.workspace, user=user, role=invitation.role)
        except IntegrityError:  # already a member: the invitation is used, the role they have stays
            membership = Membership.objects.get(workspace=invitation.workspace, user=user)
    return membership
