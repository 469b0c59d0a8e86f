from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import ValidationError
from django.db.models import ExpressionWrapper, F, FloatField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from tenants.models import (
    Membership,
    MigrationRun,
    MigrationRunTenant,
    Plan,
    TenantArchive,
    TenantServer,
    User,
    VectorDatabase,
    Workspace,
    WorkspacePlan,
    WorkspaceUsage,
)
from tenants.plans import InvalidOverride, month_start, neon_quota_sync, parse_override, plan_quota_sync
from tenants.usage import COST_PER_PAGE, COST_PER_STORAGE_BYTE_MONTH, COST_PER_TOKEN


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


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    """Plans and their limits (blank: unlimited, or the setting for the caps that are settings). Saving one sends the
    new Neon quota to the projects of its workspaces."""

    list_display = ["name", "label", "is_default", "documents", "pages_per_month", "questions_per_day", "members"]

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change:
            plan_quota_sync(obj)


def _usage_cost_queryset(queryset):
    """Each workspace's counters this month and today, and the cost estimate the listing sorts by (most first)."""
    month, today = month_start(), timezone.localdate()
    counters = WorkspaceUsage.objects.filter(workspace=OuterRef("workspace"))
    pages = Subquery(counters.filter(period="month", starts_on=month).values("pages")[:1])
    tokens = Subquery(counters.filter(period="month", starts_on=today.replace(day=1)).values("tokens")[:1])
    questions = Subquery(counters.filter(period="day", starts_on=today).values("questions")[:1])
    queryset = queryset.annotate(
        pages_this_month=Coalesce(pages, 0), tokens_this_month=Coalesce(tokens, 0),
        questions_today=Coalesce(questions, 0),
    )  # fmt: skip
    cost = ExpressionWrapper(
        F("pages_this_month") * COST_PER_PAGE
        + F("tokens_this_month") * COST_PER_TOKEN
        + Coalesce(F("storage_bytes"), 0) * COST_PER_STORAGE_BYTE_MONTH,
        output_field=FloatField(),
    )
    return queryset.annotate(cost_estimate=cost)


class WorkspacePlanForm(forms.ModelForm):
    class Meta:
        model = WorkspacePlan
        fields = ["plan", "overrides"]

    def clean_overrides(self) -> dict:
        overrides = self.cleaned_data["overrides"] or {}
        if not isinstance(overrides, dict):
            raise ValidationError('Overrides are an object of limits, e.g. {"pages_per_month": 25}.')
        try:
            for name, value in overrides.items():
                parse_override(f"{name}={'none' if value is None else value}")
        except InvalidOverride as error:
            raise ValidationError(str(error)) from None
        return overrides


@admin.register(WorkspacePlan)
class WorkspacePlanAdmin(admin.ModelAdmin):
    """Each workspace's plan, overrides ({"pages_per_month": 25}) and usage, most expensive first. Changing the plan
    or an override here sends the new Neon quota, as `tenants plan` does."""

    list_display = [
        "workspace", "plan", "pages_this_month", "questions_today", "tokens_this_month", "storage_bytes",
        "neon_suspended", "cost_estimate",
    ]  # fmt: skip
    list_filter = ["plan", "neon_suspended"]
    search_fields = ["workspace__slug", "workspace__owner__email"]
    fields = ["workspace", "plan", "overrides", "storage_bytes", "storage_sampled_at", "neon_consumption",
              "neon_suspended", "neon_quota_synced"]  # fmt: skip
    readonly_fields = ["workspace", "storage_bytes", "storage_sampled_at", "neon_consumption", "neon_suspended",
                       "neon_quota_synced"]  # fmt: skip

    def get_queryset(self, request):
        # Annotated before any ordering is applied: the default order is by the annotation, most expensive first.
        queryset = _usage_cost_queryset(WorkspacePlan.objects.select_related("workspace", "plan"))
        return queryset.order_by("-cost_estimate", "workspace__slug")

    @admin.display(ordering="pages_this_month", description="pages this month")
    def pages_this_month(self, obj) -> int:
        return obj.pages_this_month

    @admin.display(ordering="questions_today", description="questions today")
    def questions_today(self, obj) -> int:
        return obj.questions_today

    @admin.display(ordering="tokens_this_month", description="tokens this month")
    def tokens_this_month(self, obj) -> int:
        return obj.tokens_this_month

    @admin.display(ordering="cost_estimate", description="cost estimate ($)")
    def cost_estimate(self, obj) -> str:
        return f"{obj.cost_estimate:.2f}"

    def has_add_permission(self, request) -> bool:
        return False  # every workspace gets one (the default plan)

    form = WorkspacePlanForm

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        neon_quota_sync(obj.workspace)
