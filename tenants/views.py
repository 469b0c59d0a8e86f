import psycopg
from allauth.account.views import EmailView as AllauthEmailView
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
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


class EmailAddressesView(AllauthEmailView):
    """allauth's email page, except that an address becomes the account's (primary) only once verified: until then
    it is a claim that counts for nothing. allauth lets an unverified address be made primary while the account has
    no verified one, which every account signed up without verification is."""

    def _action_primary(self, request, *args, **kwargs):
        email_address = self._get_email_address(request)
        if email_address is not None and not email_address.verified:
            messages.error(
                request,
                f"Confirm {email_address.email} first, with the link we sent to it; then it can become your address.",
            )
            return redirect("account_email")
        return super()._action_primary(request, *args, **kwargs)


email_addresses = EmailAddressesView.as_view()


def admin_login(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    """The admin site's login page: never a password form of its own. Its form called `authenticate()` directly,
    past allauth's throttling; every sign-in goes through allauth's login, which counts failed attempts."""
    next_url = request.GET.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = ""
    next_url = next_url or reverse("admin:index")
    if not request.user.is_authenticated:
        return redirect(f"{reverse('account_login')}?{urlencode({'next': next_url})}")
    if request.user.is_active and request.user.is_staff:
        return redirect(next_url)
    # Redirecting a signed-in non-staff user to the login would send them back here: say why instead.
    return HttpResponseForbidden("This account cannot use Silo's admin site.")


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
