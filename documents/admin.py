from django.contrib import admin

from documents.models import Document


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "workspace", "uploaded_by", "status", "page_count", "chunk_count", "created_at"]
    list_filter = ["status"]
    search_fields = ["title", "workspace__slug", "uploaded_by__email"]
    readonly_fields = [
        "workspace",
        "uploaded_by",
        "file",
        "sha256",
        "size_bytes",
        "attempts",
        "created_at",
        "updated_at",
        "ingested_at",
    ]
