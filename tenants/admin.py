from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from tenants.models import (
    Membership,
    MigrationRun,
    MigrationRunTenant,
    TenantArchive,
    TenantServer,
    User,
    VectorDatabase,
    Workspace,
)


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
    """Read-only view of the registry, warm pool included (status `pooled`, no workspace; `claimed at` on databases taken
    from it). Credentials are never shown; lifecycle changes go through `manage.py tenants` (`tenants pool ...`)."""

    list_display = [
        "workspace", "tenant_key", "provider", "region", "status", "schema_version", "embedding_model", "claimed_at",
        "operation", "operation_step", "updated_at",
    ]  # fmt: skip
    list_filter = ["provider", "region", "status"]
    search_fields = ["workspace__slug", "workspace__owner__email", "tenant_key", "external_id"]
    exclude = ["encrypted_credentials"]
    readonly_fields = [field.name for field in VectorDatabase._meta.fields if field.name != "encrypted_credentials"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    """Workspaces and their members. Deleting one goes through `manage.py tenants remove SLUG` (it drops the
    database too)."""

    list_display = ["slug", "name", "owner", "personal", "created_at"]
    list_filter = ["personal"]
    search_fields = ["slug", "name", "owner__email"]
    readonly_fields = ["slug", "personal", "created_at"]
    raw_id_fields = ["owner"]
    inlines = [MembershipInline]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class MigrationRunTenantInline(admin.TabularInline):
    model = MigrationRunTenant
    fields = readonly_fields = ("label", "tenant_key", "outcome", "applied", "error", "seconds", "finished_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(MigrationRun)
class MigrationRunAdmin(admin.ModelAdmin):
    """Each `migrate_tenants` run, its progress while it runs and every tenant's outcome; read-only."""

    list_display = [
        "id", "started_at", "finished_at", "status", "target_version", "tenants_to_migrate", "migrated", "failed",
        "not_started",
    ]  # fmt: skip
    list_filter = ["status", "target_version"]
    readonly_fields = [field.name for field in MigrationRun._meta.fields]
    inlines = [MigrationRunTenantInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TenantServer)
class TenantServerAdmin(admin.ModelAdmin):
    """Draining state of the administered servers; change it with `manage.py tenants servers drain|undrain`."""

    list_display = ["name", "draining", "updated_at"]
    readonly_fields = ["name", "draining", "updated_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TenantArchive)
class TenantArchiveAdmin(admin.ModelAdmin):
    """The catalogue of tenant archives (backups, and the snapshots moves are made from); read-only: backups,
    restores and pruning go through `manage.py tenants backup|backups|restore`."""

    list_display = ["workspace", "created_at", "kind", "status", "size_bytes", "documents", "chunks", "error"]
    list_filter = ["kind", "status"]
    search_fields = ["workspace__slug", "workspace__owner__email"]
    readonly_fields = [field.name for field in TenantArchive._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
