from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from tenants.models import User, VectorDatabase


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_active", "is_staff", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Profile", {"fields": ["name", "avatar_url"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]


@admin.register(VectorDatabase)
class VectorDatabaseAdmin(admin.ModelAdmin):
    """Read-only view of the registry, warm pool included (status `pooled`, no tenant; `claimed at` on databases taken
    from it). Credentials are never shown; lifecycle changes go through `manage.py tenants` (`tenants pool ...`)."""

    list_display = [
        "tenant", "tenant_key", "provider", "region", "status", "schema_version", "embedding_model", "claimed_at",
        "updated_at",
    ]  # fmt: skip
    list_filter = ["provider", "region", "status"]
    search_fields = ["tenant__email", "tenant_key", "external_id"]
    exclude = ["encrypted_credentials"]
    readonly_fields = [field.name for field in VectorDatabase._meta.fields if field.name != "encrypted_credentials"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
