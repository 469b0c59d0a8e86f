import logging

from celery import Task, shared_task

from documents import services
from documents.fairness import tenant_ingest_slot
from documents.models import Document
from tenants.services import TenantDatabaseNotReady

logger = logging.getLogger(__name__)
MAX_RETRIES = 8
UNEXPECTED_FAILURE_MESSAGE = "Silo could not process this document because of an internal error; we have logged it."


class IngestTask(Task):
    """Whatever escapes the pipeline, the document must not stay "busy" for ever: mark it failed."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        logger.error("ingest task %s for document %s failed: %r", task_id, args[0] if args else None, exc)
        if args:
            services.document_mark_failed(args[0], UNEXPECTED_FAILURE_MESSAGE)


# Waiting for a tenant's own earlier uploads is normal, not a failure: it has its own, generous budget.
FAIRNESS_DELAY_SECONDS = 3
MAX_FAIRNESS_WAITS = 2000


@shared_task(bind=True, base=IngestTask, max_retries=None)
def ingest_document(self, document_id: int, fairness_waits: int = 0) -> None:
    _ingest_in_turn(self, ingest_document, document_id, fairness_waits, allow_ocr=False)


@shared_task(bind=True, base=IngestTask, max_retries=None)  # routed to CELERY_OCR_QUEUE (settings)
def ingest_scanned_document(self, document_id: int, fairness_waits: int = 0) -> None:
    """A PDF with scanned pages, on the OCR queue's own workers: slow work never holds up the main queue."""
    _ingest_in_turn(self, ingest_scanned_document, document_id, fairness_waits, allow_ocr=True)


def _ingest_in_turn(task, task_function, document_id: int, fairness_waits: int, allow_ocr: bool) -> None:
    workspace_id = Document.objects.filter(id=document_id).values_list("workspace_id", flat=True).first()
    if workspace_id is None:
        return  # deleted before its turn came
    with tenant_ingest_slot(workspace_id) as acquired:
        if not acquired and fairness_waits < MAX_FAIRNESS_WAITS:
            # Back of the queue: other tenants' documents go first.
            task_function.apply_async((document_id, fairness_waits + 1), countdown=FAIRNESS_DELAY_SECONDS)
            return
        _ingest(task, document_id, allow_ocr)


def _ingest(task, document_id: int, allow_ocr: bool) -> None:
    retries = task.request.retries
    try:
        services.document_ingest(document_id, allow_ocr=allow_ocr)
    except services.NeedsOcr:
        ingest_scanned_document.delay(document_id)
    except TenantDatabaseNotReady as error:
        if error.status in {"pending", "provisioning"} and retries < MAX_RETRIES:
            raise task.retry(countdown=min(2**retries, 30)) from None
        services.document_mark_failed(document_id, "Your database is not available; try again from the dashboard.")
    except services.TransientIngestError:
        if retries < MAX_RETRIES:
            raise task.retry(countdown=min(2**retries, 60)) from None
        services.document_mark_failed(document_id, services.TEMPORARY_FAILURE_MESSAGE)
