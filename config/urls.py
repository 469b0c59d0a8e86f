from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from chat import views as chat_views
from documents import views as document_views
from tenants import views as tenant_views

# The admin signs in through allauth's throttled login like everyone else (see tenants.views.admin_login).
admin.site.login = tenant_views.admin_login  # type: ignore[method-assign]

urlpatterns = [
    path("", tenant_views.home, name="home"),
    path("dashboard/", document_views.dashboard, name="dashboard"),
    path("account/export", document_views.account_export, name="account_export"),
    path("", include("tenants.urls")),
    path("documents/", include("documents.urls")),
    path("documents/<int:document_id>/", chat_views.document_chat, name="document_chat"),
    path("chat/", include("chat.urls")),
    path("healthz", tenant_views.health, name="health"),
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("accounts/email/", tenant_views.email_addresses, name="account_email"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
