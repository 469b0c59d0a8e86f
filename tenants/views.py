from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from tenants import selectors, services
from tenants.models import AuthenticatedHttpRequest


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    return redirect("account_login")


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
def account(request: HttpRequest) -> HttpResponse:
    return render(request, "tenants/account.html", {})


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
