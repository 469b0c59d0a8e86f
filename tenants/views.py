import psycopg
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from tenants import selectors, services
from tenants.models import AuthenticatedHttpRequest
from vectordb.connections import ConnectionCapacityExhausted


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Signed in: your documents. Signed out: what Silo is, with the way in."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "landing.html")


@login_required
@require_GET
def database_status(request: AuthenticatedHttpRequest) -> JsonResponse:
    vector_database = selectors.vector_database_for_tenant(request.user)
    return JsonResponse(selectors.vector_database_status_payload(vector_database))


@login_required
@require_POST
def database_retry(request: AuthenticatedHttpRequest) -> HttpResponse:
    if selectors.vector_database_for_tenant(request.user) is None:
        services.vector_database_request(request.user)
    else:
        services.vector_database_retry(request.user)
    messages.info(request, "We are setting up your database again.")
    return redirect("dashboard")


@login_required
@require_GET
def account(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The account: who is signed in, the dedicated database's facts, export and deletion."""
    vector_database = selectors.vector_database_for_tenant(request.user)
    database = selectors.vector_database_status_payload(vector_database)
    if vector_database is not None and vector_database.is_ready:
        try:
            database["size_bytes"] = selectors.vector_database_size_bytes(vector_database)
        except (psycopg.OperationalError, ConnectionCapacityExhausted):
            database["size_bytes"] = None  # unreachable right now: the page still works without the figure
    return render(request, "tenants/account.html", {"database": database})


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
