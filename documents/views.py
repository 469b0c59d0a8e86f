import logging

import psycopg
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET, require_POST

from documents import selectors, services
from documents.formats import ACCEPT_ATTRIBUTE, EXTENSIONS, UnreadableDocument
from documents.models import Document
from tenants import selectors as tenant_selectors
from tenants.models import AuthenticatedHttpRequest
from tenants.permissions import Action, role_allows
from tenants.workspaces import membership_current
from vectordb.connections import ConnectionCapacityExhausted

logger = logging.getLogger(__name__)
EXPORT_UNREACHABLE_MESSAGE = (
    "Your database cannot be reached right now, so your export would be incomplete. Please try again in a moment."
)


@login_required
@require_GET
def dashboard(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The workspace's home: its documents with live progress and, for editors, a compact upload control. The
    database is only mentioned while it is not ready (its facts are on the account page)."""
    membership = membership_current(request)
    workspace = membership.workspace
    vector_database = tenant_selectors.vector_database_for_tenant(workspace)
    documents = selectors.documents_for_user(request.user, workspace)
    statuses = {payload["id"]: payload for payload in selectors.document_statuses_for_user(request.user, workspace)}
    return render(
        request,
        "documents/dashboard.html",
        {
            "database": tenant_selectors.vector_database_status_payload(vector_database),
            "documents": [(document, statuses[document.id]) for document in documents],
            "has_ready_documents": any(payload["status"] == "ready" for payload in statuses.values()),
            "upload_max_mb": settings.UPLOAD_MAX_BYTES // (1024 * 1024),
            "can_edit_documents": role_allows(membership.role, Action.EDIT_DOCUMENTS),
            "upload_accept": ACCEPT_ATTRIBUTE,
        },
    )


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@login_required
@require_POST
def upload(request: AuthenticatedHttpRequest) -> HttpResponse:
    workspace = membership_current(request, Action.EDIT_DOCUMENTS).workspace  # 403 for viewers, before any file
    files = request.FILES.getlist("files")
    accepted, rejected = [], []
    for uploaded in files:
        try:
            accepted.append(services.document_upload(request.user, uploaded, workspace=workspace))
        except services.DocumentRejected as error:
            rejected.append(str(error))
    if _wants_json(request):
        status = 400 if rejected and not accepted else 200
        accepted_ids = {document.id for document in accepted}
        payloads = [p for p in selectors.document_statuses_for_user(request.user, workspace) if p["id"] in accepted_ids]
        return JsonResponse({"documents": payloads, "errors": rejected}, status=status)
    if not files:
        messages.error(request, "Choose one or more PDF files to upload.")
    for message in rejected:
        messages.error(request, message)
    if accepted:
        messages.success(request, f"Uploaded {len(accepted)} document(s); they are being processed.")
    return redirect("dashboard")


@login_required
@require_GET
def status(request: AuthenticatedHttpRequest) -> JsonResponse:
    workspace = membership_current(request).workspace
    return JsonResponse({"documents": selectors.document_statuses_for_user(request.user, workspace)})


@xframe_options_sameorigin
@login_required
@require_GET
def file(request: AuthenticatedHttpRequest, document_id: int) -> FileResponse:
    workspace = membership_current(request).workspace
    document = selectors.document_get_for_user(request.user, document_id, workspace)
    extension = EXTENSIONS.get(document.file_format, "bin")
    if document.file_format == Document.Format.PDF:
        response = FileResponse(document.file.open("rb"), content_type="application/pdf")
        # Inline so the browser's PDF viewer opens it (at a page, with #page=N); the stored name is never exposed.
        response["Content-Disposition"] = f'inline; filename="document-{document.id}.pdf"'
    else:
        # Anything else only ever downloads, as bytes: an uploaded HTML file is never rendered (nor its scripts run)
        # on our origin. The viewer shows such documents as text (`document_text`).
        response = FileResponse(document.file.open("rb"), content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="document-{document.id}.{extension}"'
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@login_required
@require_GET
def text(request: AuthenticatedHttpRequest, document_id: int) -> JsonResponse:
    """A non-PDF document as the viewer shows it: its located text units, as JSON (the browser renders them as
    text, never as HTML)."""
    document = selectors.document_get_for_user(request.user, document_id, membership_current(request).workspace)
    try:
        units = selectors.document_text_units(document)
    except UnreadableDocument as error:
        return JsonResponse({"error": str(error), "units": []}, status=422)
    return JsonResponse({"format": document.file_format, "units": units})


@login_required
@require_POST
def delete(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    services.document_delete(request.user, document_id, membership_current(request).workspace)
    if _wants_json(request):
        return JsonResponse({"deleted": document_id})
    messages.success(request, "Document deleted.")
    return redirect("dashboard")


@login_required
@require_POST
def reingest(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    try:
        document = services.document_reingest(request.user, document_id, membership_current(request).workspace)
    except services.DocumentRejected as error:
        if _wants_json(request):
            return JsonResponse({"error": str(error)}, status=429)
        messages.error(request, str(error))
        return redirect("dashboard")
    if _wants_json(request):
        return JsonResponse(selectors.document_status_payload(document))
    messages.info(request, f"Re-ingesting “{document.title}”.")
    return redirect("dashboard")


@login_required
@require_GET
def account_export(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Download everything Silo holds for this person in the current workspace, as JSON."""
    from documents.exports import tenant_export

    workspace = membership_current(request).workspace
    try:
        export = tenant_export(request.user, workspace)
    except (psycopg.OperationalError, ConnectionCapacityExhausted) as error:
        # An export without the chunks and conversations would look complete and not be: say so instead.
        logger.warning("export of user %s: tenant database unreachable: %s", request.user.pk, type(error).__name__)
        if _wants_json(request):
            return JsonResponse({"error": EXPORT_UNREACHABLE_MESSAGE}, status=503)
        messages.error(request, EXPORT_UNREACHABLE_MESSAGE)
        return redirect("account")
    response = JsonResponse(export, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = 'attachment; filename="silo-export.json"'
    return response
