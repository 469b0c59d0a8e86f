import psycopg
from allauth.account.views import EmailView as AllauthEmailView
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_POST

from tenants import archive_views, selectors, services, workspaces
from tenants.models import AuthenticatedHttpRequest, User
from tenants.permissions import Action, Role, role_allows
from tenants.plans import NEON_SUSPENDED_MESSAGE, workspace_plan
from tenants.usage import usage_bars
from vectordb.connections import ConnectionCapacityExhausted


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Signed in: your documents. Signed out: what Silo is, with the way in."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "landing.html")


class EmailAddressesView(AllauthEmailView):
    """allauth's email page, except that an address becomes the account's (primary) only once verified: until then
    it is a claim that counts for nothing. allauth lets an unverified address be made primary while the account has
    no verified one, which every account signed up without verification is."""

    def _action_primary(self, request, *args, **kwargs):
        email_address = self._get_email_address(request)
        if email_address is not None and not email_address.verified:
            messages.error(
                request,
                f"Confirm {email_address.email} first, with the link we sent to it; then it can become your address.",
            )
            return redirect("account_email")
        return super()._action_primary(request, *args, **kwargs)


email_addresses = EmailAddressesView.as_view()


def admin_login(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    """The admin site's login page: never a password form of its own. Its form called `authenticate()` directly,
    past allauth's throttling; every sign-in goes through allauth's login, which counts failed attempts."""
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    next_url = next_url or reverse("admin:index")
    if not request.user.is_authenticated:
        return redirect(f"{reverse('account_login')}?{urlencode({'next': next_url})}")
    if request.user.is_active and request.user.is_staff:
        return redirect(next_url)
    # Redirecting a signed-in non-staff user to the login would send them back here: say why instead.
    return HttpResponseForbidden("This account cannot use Silo's admin site.")


@login_required
@require_GET
def database_status(request: AuthenticatedHttpRequest) -> JsonResponse:
    vector_database = selectors.vector_database_for_tenant(workspaces.membership_current(request).workspace)
    return JsonResponse(selectors.vector_database_status_payload(vector_database))


@login_required
@require_POST
def database_retry(request: AuthenticatedHttpRequest) -> HttpResponse:
    workspace = workspaces.membership_current(request, Action.EDIT_DOCUMENTS).workspace
    if selectors.vector_database_for_tenant(workspace) is None:
        services.vector_database_request(workspace)
    else:
        services.vector_database_retry(workspace)
    messages.info(request, "We are setting up your database again.")
    return redirect("dashboard")


@login_required
@require_GET
def account(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The account: who is signed in, the current workspace's database facts, export and deletion."""
    workspace = workspaces.membership_current(request).workspace
    vector_database = selectors.vector_database_for_tenant(workspace)
    database = selectors.vector_database_status_payload(vector_database)
    usage_rows, suspended = usage_bars(workspace)
    if vector_database is not None and vector_database.is_ready:
        try:
            database["size_bytes"] = selectors.vector_database_size_bytes(vector_database)
        except (psycopg.OperationalError, ConnectionCapacityExhausted):
            database["size_bytes"] = None  # unreachable right now: the page still works without the figure
    return render(
        request,
        "tenants/account.html",
        {
            "database": database,
            "workspaces_deleted_with_account": services.workspaces_solely_owned(request.user),
            "usage": usage_rows,
            "plan": workspace_plan(workspace).plan,
            "suspended_message": NEON_SUSPENDED_MESSAGE if suspended else "",
        },
    )


@login_required
@require_POST
def account_delete(request: AuthenticatedHttpRequest) -> HttpResponse:
    if request.POST.get("confirm_email", "").strip().lower() != request.user.email:
        messages.error(request, "Type your email address exactly to confirm deleting your account.")
        return redirect("account")
    services.account_delete_request(request.user)
    logout(request)
    messages.success(request, "Your account is being deleted, together with your database and documents.")
    return redirect("account_login")


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


# --- workspaces ------------------------------------------------------------------------------------------------------


def _back_to_members(request: HttpRequest) -> HttpResponse:
    return redirect("workspace_members")


@login_required
@require_POST
def workspace_switch(request: AuthenticatedHttpRequest) -> HttpResponse:
    membership = workspaces.workspace_switch(request, request.POST.get("workspace", ""))
    messages.info(request, f"You are in {membership.workspace.name}.")
    return redirect("dashboard")


@login_required
@require_POST
def workspace_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    try:
        workspace = workspaces.workspace_create(request.user, request.POST.get("name", ""))
    except workspaces.WorkspaceRefused as error:
        messages.error(request, str(error))
        return redirect("workspace_members")
    workspaces.workspace_switch(request, workspace.slug)
    messages.success(request, f"{workspace.name} is ready for documents once its database is set up. Invite people.")
    return redirect("workspace_members")


@login_required
@require_GET
def workspace_members(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The current workspace's people: members and roles, invitations, leave, transfer and delete."""
    membership = workspaces.membership_current(request)
    workspace = membership.workspace
    can_manage = role_allows(membership.role, Action.MANAGE_MEMBERS)
    is_owner = role_allows(membership.role, Action.DELETE_WORKSPACE)
    assignable = [role for role in Role.values if is_owner or role != Role.OWNER]
    return render(
        request,
        "tenants/members.html",
        {
            "membership": membership,
            "workspace": workspace,
            "members": workspaces.members_for(request.user, workspace),
            "invitations": workspaces.invitations_pending(request.user, workspace) if can_manage else [],
            "can_manage": can_manage,
            "is_owner": is_owner,
            "assignable_roles": assignable,
            "role_descriptions": ROLE_DESCRIPTIONS,
            **archive_views.backups_context(membership),  # owners: backups and Rewind
        },
    )


ROLE_DESCRIPTIONS = {
    Role.OWNER: "everything, including deleting the workspace and handing it over",
    Role.ADMIN: "invite and remove members, change roles below owner, and what editors do",
    Role.EDITOR: "upload, delete and re-ingest documents, and chat",
    Role.VIEWER: "read documents and chat; nothing that changes the documents",
}


def _member_action(request: AuthenticatedHttpRequest, act) -> HttpResponse:
    workspace = workspaces.membership_current(request).workspace
    try:
        message = act(workspace)
    except workspaces.WorkspaceRefused as error:
        messages.error(request, str(error))
    else:
        messages.success(request, message)
    return _back_to_members(request)


@login_required
@require_POST
def workspace_invite(request: AuthenticatedHttpRequest) -> HttpResponse:
    def invite(workspace) -> str:
        sent = workspaces.invitation_create(
            request.user, workspace, request.POST.get("email", ""), request.POST.get("role", Role.VIEWER), request
        )
        return f"Invitation sent to {sent.invitation.email} as {sent.invitation.role}."

    return _member_action(request, invite)


@login_required
@require_POST
def invitation_revoke(request: AuthenticatedHttpRequest, invitation_id: int) -> HttpResponse:
    def revoke(workspace) -> str:
        invitation = workspaces.invitation_revoke(request.user, workspace, invitation_id)
        return f"The invitation to {invitation.email} is withdrawn; its link no longer works."

    return _member_action(request, revoke)


@login_required
@require_POST
def member_role(request: AuthenticatedHttpRequest, membership_id: int) -> HttpResponse:
    def change(workspace) -> str:
        member = workspaces.member_role_change(request.user, workspace, membership_id, request.POST.get("role", ""))
        return f"{member.user.email} is now {member.role}."

    return _member_action(request, change)


@login_required
@require_POST
def member_remove(request: AuthenticatedHttpRequest, membership_id: int) -> HttpResponse:
    def remove(workspace) -> str:
        member = workspaces.member_remove(request.user, workspace, membership_id)
        return f"{member.user.email} was removed from {workspace.name}."

    return _member_action(request, remove)


@login_required
@require_POST
def ownership_transfer(request: AuthenticatedHttpRequest) -> HttpResponse:
    def transfer(workspace) -> str:
        member = workspaces.ownership_transfer(request.user, workspace, request.POST.get("membership", ""))
        return f"{member.user.email} now owns {workspace.name}; you stay on as an admin."

    return _member_action(request, transfer)


@login_required
@require_POST
def workspace_leave(request: AuthenticatedHttpRequest) -> HttpResponse:
    workspace = workspaces.membership_current(request).workspace
    try:
        workspaces.workspace_leave(request.user, workspace)
    except workspaces.WorkspaceRefused as error:
        messages.error(request, str(error))
        return _back_to_members(request)
    messages.success(request, f"You left {workspace.name}.")
    return redirect("dashboard")


@login_required
@require_POST
def workspace_delete(request: AuthenticatedHttpRequest) -> HttpResponse:
    workspace = workspaces.membership_current(request).workspace
    try:
        workspaces.workspace_delete(request.user, workspace, request.POST.get("confirm_slug", ""))
    except workspaces.WorkspaceRefused as error:
        messages.error(request, str(error))
        return _back_to_members(request)
    messages.success(request, f"{workspace.name} is being deleted, with its database and documents.")
    return redirect("dashboard")


def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the invitation mail. Signed out: what it is for and the way in (sign in or sign up, then back
    here). Signed in: accept it, or why it cannot be accepted."""
    invitation = workspaces.invitation_for_token(token)
    user = request.user if isinstance(request.user, User) else None
    refusal = workspaces.invitation_refusal(invitation, user)
    if request.method == "POST" and user is not None and not refusal:
        try:
            membership = workspaces.invitation_accept(user, token)
        except workspaces.InvitationInvalid as error:
            refusal = str(error)
        else:
            workspaces.workspace_switch(request, membership.workspace.slug)
            messages.success(request, f"Welcome to {membership.workspace.name}: you joined as {membership.role}.")
            return redirect("dashboard")
    status = 200 if not refusal else (404 if invitation is None else 410)
    return render(
        request,
        "tenants/invitation.html",
        {"invitation": invitation if invitation is not None else None, "refusal": refusal, "token": token},
        status=status,
    )
