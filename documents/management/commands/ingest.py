import json
from pathlib import Path

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.progress import progress_bar
from documents import services
from documents.models import Document
from tenants.management.lookup import membership_for_command, user_for_command
from tenants.models import User, Workspace
from tenants.permissions import Action
from tenants.services import TenantDatabaseNotReady


class Command(BaseCommand):
    help = (
        "Upload and ingest documents (PDF, DOCX, PPTX, XLSX, CSV, HTML, Markdown, text) as a user into a workspace "
        "(default: their personal one), in this process (scanned pages OCR'd here too), with a progress bar. Exit 0 "
        "only if all are ready."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, metavar="EMAIL")
        parser.add_argument(
            "--workspace",
            metavar="SLUG",
            default=None,
            help="A workspace the user may upload to (owner, admin, editor).",
        )
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--json", action="store_true", help="Print the documents as JSON.")

    def handle(self, *args, user: str, workspace: str | None, files: list[Path], json: bool, **options) -> None:
        uploader = user_for_command(user)
        into = membership_for_command(uploader, workspace, Action.EDIT_DOCUMENTS).workspace
        results = []
        for path in files:
            result = self._ingest_one(uploader, into, path, quiet=json)
            results.append(result)
            if not json:
                self.stdout.write(_summary(result))
        if json:
            self.stdout.write(_dumps({"documents": results}))
        failed = [result for result in results if result["status"] != Document.Status.READY]
        if failed:
            raise CommandError(f"{len(failed)} of {len(results)} files not ready")

    def _ingest_one(self, owner: User, workspace: Workspace, path: Path, quiet: bool) -> dict:
        result = {"id": None, "title": path.stem, "file": str(path), "status": "failed", "pages": None, "chunks": 0}
        if not path.is_file():
            return {**result, "error": "No such file."}
        try:
            with path.open("rb") as handle:
                document = services.document_upload(
                    owner, File(handle, name=path.name), enqueue=False, workspace=workspace
                )
        except services.DocumentRejected as error:
            return {**result, "error": str(error)}
        bar = None if quiet else progress_bar(self.stdout, 100, "%", desc=f"{document.title[:40]:<40} ")

        def show(progressed: Document) -> None:
            if bar is not None:
                bar.set_postfix_str(progressed.status, refresh=False)
                bar.update(round(progressed.progress * 100) - bar.n)

        try:
            report = services.document_ingest(document.id, on_progress=show)
        except TenantDatabaseNotReady as error:
            services.document_mark_failed(document.id, "The workspace's database is not ready.")
            label = workspace.label
            raise CommandError(f"{label}'s database is {error.status}; run `tenants add {label}`") from None
        except services.TransientIngestError as error:
            services.document_mark_failed(document.id, services.TEMPORARY_FAILURE_MESSAGE)
            raise CommandError(f"{path}: {error}") from None
        finally:
            if bar is not None:
                bar.close()
        document = report.document
        document.refresh_from_db()
        return {
            "id": document.id,
            "title": document.title,
            "file": str(path),
            "status": document.status,
            "format": document.file_format,
            "pages": document.page_count,
            "chunks": document.chunk_count,
            "error": document.error_message or None,
        }


def _summary(result: dict) -> str:
    """One line per file: what it became, or why it did not."""
    if result["status"] == Document.Status.READY:
        units = "pages" if result.get("format", "pdf") == "pdf" else f"parts ({result['format']})"
        return (
            f"{result['file']}: ready, {result['pages']} {units}, {result['chunks']} chunks (document {result['id']})"
        )
    return f"{result['file']}: {result['status']}: {result.get('error') or 'no reason recorded'}"


def _dumps(value) -> str:
    return json.dumps(value, indent=2)
