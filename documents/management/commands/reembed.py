import psycopg
from django.core.management.base import BaseCommand, CommandError, CommandParser

from documents import services
from documents.models import Document
from tenants.management.lookup import workspace_for_command
from tenants.models import VectorDatabase, Workspace
from tenants.services import TenantDatabaseNotReady
from vectordb.connections import ConnectionCapacityExhausted


class Command(BaseCommand):
    help = (
        "Re-embed every ready or failed document of a tenant (or of all tenants) with the configured embedding model. "
        "A tenant database holding another model's embeddings is emptied and switched to the configured model and "
        "dimension first. Exit 0 only if every document ends ready; run it again to finish an interrupted run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--workspace", metavar="SLUG_OR_EMAIL", help="The workspace whose documents to re-embed.")
        which.add_argument("--user", metavar="EMAIL", help="That person's personal workspace (as --workspace EMAIL).")
        which.add_argument("--all", action="store_true", help="Every workspace with a ready database.")

    def handle(self, *args, workspace: str | None, user: str | None, all: bool, **options) -> None:
        if workspace or user:
            tenants = [workspace_for_command(workspace or user or "")]
        else:
            tenants = list(
                Workspace.objects.filter(vector_database__status=VectorDatabase.Status.READY)
                .select_related("owner")
                .order_by("id")
            )
        failed_tenants, failed_documents = [], 0
        for tenant in tenants:
            try:
                report = services.documents_reembed(tenant, on_document=self._document_done)
            except TenantDatabaseNotReady as error:
                failed_tenants.append(tenant.label)
                self.stderr.write(f"{tenant.label}: database is {error.status}; nothing re-embedded")
                continue
            except ValueError as error:  # a configured dimension the index cannot take: no tenant would do better
                raise CommandError(str(error)) from None
            except (psycopg.Error, ConnectionCapacityExhausted) as error:
                failed_tenants.append(tenant.label)
                self.stderr.write(f"{tenant.label}: database unavailable ({type(error).__name__}); run again later")
                continue
            failed_documents += len(report.failed)
            self.stdout.write(_summary(report))
        if failed_tenants or failed_documents:
            raise CommandError(
                f"{len(failed_tenants)} of {len(tenants)} tenants not re-embedded, {failed_documents} documents failed"
            )

    def _document_done(self, document: Document) -> None:
        reason = f": {document.error_message}" if document.status == Document.Status.FAILED else ""
        self.stdout.write(f"  {document.status:<7} {document.title} ({document.chunk_count} chunks){reason}")


def _summary(report: services.ReembedReport) -> str:
    model, dimensions = report.model.name, report.model.dimensions
    if report.model_changed and report.previous_model == report.model:
        switched = f"embedding column rebuilt for {model} ({dimensions} dims), {report.chunks_deleted} chunks deleted"
    elif report.model_changed:
        before = report.previous_model
        previous = f"{before.name} ({before.dimensions} dims)" if before else "none"
        switched = f"switched from {previous} to {model} ({dimensions} dims), {report.chunks_deleted} chunks deleted"
    else:
        switched = f"already on {model} ({dimensions} dims)"
    counts = f"{len(report.ready)} ready, {len(report.failed)} failed"
    if report.skipped:
        counts += f", {len(report.skipped)} left to the worker ingesting them"
    return f"{report.workspace.label}: {switched}; {counts}"
