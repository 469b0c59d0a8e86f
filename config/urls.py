from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from chat import views as chat_views
from documents import views as document_views
from tenants import views as tenant_views

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
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
