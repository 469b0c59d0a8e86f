from celery import shared_task

from tenants import services


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
def sample_workspace_usage() -> dict:
    """Periodically (Celery beat): each workspace's storage, and Neon consumption with suspension status."""
    from dataclasses import asdict

    from tenants.usage import usage_sample

    return asdict(usage_sample())
