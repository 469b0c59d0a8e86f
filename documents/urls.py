from django.urls import path

from documents import views

urlpatterns = [
    path("upload", views.upload, name="document_upload"),
    path("status", views.status, name="documents_status"),
    path("<int:document_id>/file", views.file, name="document_file"),
    path("<int:document_id>/text", views.text, name="document_text"),
    path("<int:document_id>/delete", views.delete, name="document_delete"),
    path("<int:document_id>/reingest", views.reingest, name="document_reingest"),
]
