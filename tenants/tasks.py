import logging

from celery import shared_task

from tenants import archives, services
from tenants.archive_outcomes import outcome_record

logger = logging.getLogger(__name__)


@shared_task(
    autoretry_for=(services.ProvisioningFailed,),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def provision_vector_database(vector_database_id: int) -> str:
    return services.vector_database_provision(vector_database_id).status


@shared_task(autoretry_for=(services.ProvisioningError,), retry_backoff=10, max_retries=10)
def erase_tenant(user_id: int) -> bool:
    """An account's erasure (the name is kept: tasks already queued under it still run)."""
    return services.tenant_erase(user_id)


@shared_task(autoretry_for=(services.ProvisioningError,), retry_backoff=10, max_retries=10)
def erase_workspace(workspace_id: int) -> bool:
    return services.workspace_erase(workspace_id)


@shared_task(ignore_result=True)
def refill_tenant_pool(region: str | None = None) -> list[dict]:
    """After each claim, and periodically (Celery beat): bring the warm pool back to its target."""
    return [refill.as_dict() for refill in services.tenant_pool_refill(region)]


@shared_task(ignore_result=True)
def back_up_due_workspaces() -> int:
    """Celery beat, every TENANT_BACKUP_CHECK_SECONDS: one backup task for each workspace that is due."""
    due = archives.workspaces_due_for_backup()
    for workspace_id in due:
        back_up_workspace.delay(workspace_id)
    return len(due)


@shared_task(autoretry_for=(archives.ArchiveFailed,), retry_backoff=60, retry_backoff_max=3600, max_retries=3)
def back_up_workspace(workspace_id: int, kind: str = "scheduled") -> int | None:
    """A scheduled backup, then the retention policy. A failure is recorded on the workspace's backup status, logged as
    an error, and retried (three times, backing off); the next beat tries again after that."""
    from tenants.models import TenantArchive, Workspace

    workspace = Workspace.objects.filter(id=workspace_id).first()
    if workspace is None:
        return None
    manual = kind == TenantArchive.Kind.MANUAL  # an owner asked from the workspace page: the page shows the outcome
    try:
        archive = archives.archive_create(workspace, TenantArchive.Kind(kind))
    except archives.ArchiveRefused as refused:  # no ready database (being made, moved or erased): nothing to back up
        if manual:
            outcome_record(workspace_id, "backup", False, f"{refused} Try Back up now again once it is ready.")
        return None
    except archives.ArchiveFailed as failed:
        if manual:
            outcome_record(workspace_id, "backup", False, f"{failed}. It is tried again automatically.")
        raise
    archives.archives_prune(workspace)
    if manual:
        outcome_record(workspace_id, "backup", True, f"Restore point of {archive.created_at:%d %b %Y %H:%M} UTC made.")
    return archive.id


@shared_task(ignore_result=True)
def rewind_workspace(workspace_id: int, archive_id: int) -> bool:
    """The owner's Rewind: restore one of the workspace's archives. A refusal or failure is logged; the workspace
    stays as it was."""
    from tenants.models import TenantArchive

    archive = TenantArchive.objects.filter(id=archive_id, workspace_id=workspace_id).select_related("workspace").first()
    if archive is None:
        return False
    moment = f"{archive.created_at:%d %b %Y %H:%M} UTC"
    try:
        archives.workspace_restore(archive.workspace, archive=archive)
    except (archives.ArchiveRefused, archives.ArchiveFailed) as error:
        logger.error("rewind of workspace %s to archive %s failed: %s", workspace_id, archive_id, error)
        outcome_record(workspace_id, "rewind", False, f"Rewind to {moment} did not happen: {error}")
        return False
    outcome_record(workspace_id, "rewind", True, f"Rewound to {moment}.")
    return True


@shared_task(ignore_result=True)
def sample_workspace_usage() -> dict:
    """Periodically (Celery beat): each workspace's storage, and Neon consumption with suspension status."""
    from dataclasses import asdict

    from tenants.usage import usage_sample

    return asdict(usage_sample())
