from celery import shared_task

from documents import services
from tenants.services import TenantDatabaseNotReady

MAX_RETRIES = 8


@shared_task(bind=True, max_retries=MAX_RETRIES)
def ingest_document(self, document_id: int) -> None:
    try:
        services.document_ingest(document_id)
    except TenantDatabaseNotReady as error:
        if error.status in {"pending", "provisioning"} and self.request.retries < MAX_RETRIES:
            raise self.retry(countdown=min(2 ** self.request.retries, 30)) from None
        services.document_mark_failed(document_id, "Your database is not available; try again from the dashboard.")
    except services.TransientIngestError:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(countdown=min(2 ** self.request.retries, 60)) from None
        services.document_mark_failed(document_id, services.TEMPORARY_FAILURE_MESSAGE)
