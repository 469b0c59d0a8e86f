"""The owner's backups of a workspace, on its members page: restore points of the last days, download one (the
archive decrypted as it streams), back up now, and rewind to one (Rewind). Each view checks the role through
tenants.permissions and calls one service or enqueues one task."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from config.celery import enqueue
from tenants import archives, workspaces
from tenants.archive_outcomes import outcome_clear, outcome_latest
from tenants.models import AuthenticatedHttpRequest, Membership
from tenants.permissions import Action, role_allows

REWIND_DAYS = 7  # the restore points the page lists (retention may keep more; `tenants backups` lists them all)


def backups_context(membership: Membership) -> dict:
    """What the members page shows of the workspace's backups (owners only)."""
    if not role_allows(membership.role, Action.MANAGE_ARCHIVES):
        return {}
    workspace = membership.workspace
    database = getattr(workspace, "vector_database", None)
    return {
        "backups": {
            "status": archives.backup_status(workspace),
            "restore_points": archives.restore_points(workspace, days=REWIND_DAYS)[:20],
            "days": REWIND_DAYS,
            "operation": database.operation if database else "",
            "operation_step": database.operation_step if database else "",
            "interval_hours": settings.TENANT_BACKUP_INTERVAL_HOURS,
            "outcome": outcome_latest(workspace.id),
        }
    }


def _back(request: AuthenticatedHttpRequest) -> HttpResponse:
    return redirect("/workspace/members#backups")


@login_required
@require_POST
def backup_now(request: AuthenticatedHttpRequest) -> HttpResponse:
    workspace = workspaces.membership_current(request, Action.MANAGE_ARCHIVES).workspace
    workspace_id = workspace.id
    outcome_clear(workspace_id)  # the page shows this request's outcome once the worker has one
    transaction.on_commit(lambda: enqueue("tenants.tasks.back_up_workspace", workspace_id, "manual"))
    messages.success(request, "A backup is being made; it appears here in a minute.")
    return _back(request)


@login_required
@require_GET
def archive_download(request: AuthenticatedHttpRequest, archive_id: int) -> StreamingHttpResponse:
    workspace = workspaces.membership_current(request, Action.MANAGE_ARCHIVES).workspace
    try:
        archive = archives.archive_get_for_workspace(workspace, archive_id)
    except archives.ArchiveRefused:
        raise Http404("No such restore point") from None
    response = StreamingHttpResponse(archives.archive_download_chunks(archive), content_type="application/x-tar")
    response["Content-Disposition"] = f'attachment; filename="{workspace.slug}-{archive.created_at:%Y%m%d-%H%M%S}.tar"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def archive_rewind(request: AuthenticatedHttpRequest, archive_id: int) -> HttpResponse:
    workspace = workspaces.membership_current(request, Action.MANAGE_ARCHIVES).workspace
    try:
        archive = archives.archive_get_for_workspace(workspace, archive_id)
    except archives.ArchiveRefused as error:
        messages.error(request, str(error))
        return _back(request)
    workspace_id, chosen = workspace.id, archive.id
    outcome_clear(workspace_id)
    transaction.on_commit(lambda: enqueue("tenants.tasks.rewind_workspace", workspace_id, chosen))
    messages.success(
        request,
        f"Rewinding {workspace.name} to {archive.created_at:%d %b %Y %H:%M} UTC. Its documents stay readable; "
        "changes wait until it is done, in a minute or so.",
    )
    return _back(request)
