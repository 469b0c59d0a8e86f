"""What `tenants reconcile` says of restores and moves left half done by a worker that died: which workspace, at which
step, and the command that finishes it. Reconcile never repairs these itself: the database a dead run was building is
not stuck provisioning (re-provisioning it would make an empty database nobody uses), and re-running the operation
removes what the dead run left before it starts again (tenants.archives._leftovers_remove)."""

from __future__ import annotations

from dataclasses import dataclass

from tenants.models import VectorDatabase
from tenants.services import vector_database_deprovision
from vectordb.advisory_locks import advisory_lock

Status = VectorDatabase.Status


@dataclass
class HalfDone:
    workspace: str  # its label, as commands take it
    message: str  # what is half done and what to run


def _running(workspace_id: int) -> bool:
    """A live worker holds the operation's lock (a dead one lost it with its session)."""
    with advisory_lock(f"tenant-archive-operation:{workspace_id}", wait=False) as acquired:
        return not acquired


def _move_target(row: VectorDatabase | None) -> str:
    if row is None:
        return "with the same target as before"
    if row.provider == "postgres" and row.server:
        return f"--server {row.server}"
    return f"--provider {row.provider} --region {row.region}"


def half_built(row: VectorDatabase) -> bool:
    """A database a restore or move was building to replace a workspace's: not the workspace's, not a pool member."""
    return (
        row.replaces_id is not None
        and row.workspace_id is None
        and row.status
        not in {
            Status.DELETING,
            Status.DELETED,
        }
    )


def operations_half_done() -> list[HalfDone]:
    found: list[HalfDone] = []
    marked = (
        VectorDatabase.objects.exclude(operation="").filter(workspace__isnull=False).select_related("workspace__owner")
    )
    for source in marked.order_by("id"):
        assert source.workspace is not None
        label = source.workspace.label
        if _running(source.workspace.id):
            continue  # under way: the registry shows its progress
        target = (
            VectorDatabase.objects.filter(replaces=source, workspace__isnull=True)
            .exclude(status__in=[Status.DELETING, Status.DELETED])
            .order_by("-id")
            .first()
        )
        built = f" (database {target.tenant_key} half built)" if target else ""
        since = f" since {source.operation_started_at:%Y-%m-%d %H:%M} UTC" if source.operation_started_at else ""
        if source.operation == "moving":
            command = f"tenants move {label} {_move_target(target)}"
        else:
            command = f"tenants restore {label} --from ARCHIVE (or --at TIMESTAMP) with what it was restoring from"
        found.append(
            HalfDone(
                label,
                f"{label}: {source.operation} stopped at '{source.operation_step}'{since}{built}; writes are refused "
                f"until it finishes: run `{command}` again (it removes what the stopped run left, then finishes)",
            )
        )
    return found


def old_databases_left(apply: bool) -> tuple[list[HalfDone], list[str]]:
    """Databases a workspace switched away from whose drop did not happen (the worker died after the switch): the
    workspace no longer uses them, so `apply` drops them."""
    found: list[HalfDone] = []
    fixed: list[str] = []
    for old in VectorDatabase.objects.filter(status=Status.DELETING, workspace__isnull=True).order_by("id"):
        successor = VectorDatabase.objects.filter(replaces=old, workspace__isnull=False).select_related(
            "workspace__owner"
        )
        new = successor.first()
        if new is None or new.workspace is None or _running(new.workspace.id):
            continue
        label = new.workspace.label
        found.append(
            HalfDone(
                label,
                f"{label}: the database it switched away from ({old.tenant_key}) was not dropped; "
                "`tenants reconcile --apply` drops it",
            )
        )
        if apply:
            vector_database_deprovision(old.id)
            fixed.append(f"dropped {old.tenant_key}, which {label} switched away from")
    return found, fixed
