from django.urls import path

from tenants import views

urlpatterns = [
    path("database/status", views.database_status, name="database_status"),
    path("database/retry", views.database_retry, name="database_retry"),
    path("account/", views.account, name="account"),
    path("account/delete", views.account_delete, name="account_delete"),
]
