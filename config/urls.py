from django.contrib import admin
from django.urls import include, path

from documents import views as document_views
from tenants import views as tenant_views

urlpatterns = [
    path("", tenant_views.home, name="home"),
    path("dashboard/", document_views.dashboard, name="dashboard"),
    path("", include("tenants.urls")),
    path("documents/", include("documents.urls")),
    path("healthz", tenant_views.health, name="health"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
