from __future__ import annotations

from typing import ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import IntegrityError, models, transaction
from django.db.models.functions import Lower
from django.http import HttpRequest
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra_fields) -> User:
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra_fields) -> User:
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email: str, password: str | None = None, **extra_fields) -> User:
        extra_fields.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in. They belong to workspaces (the tenants), starting with their personal one."""

    email = models.EmailField("email address", unique=True)
    name = models.CharField(max_length=150, blank=True)
    avatar_url = models.URLField(max_length=500, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        db_table = "users"
        constraints = [models.UniqueConstraint(Lower("email"), name="users_email_case_insensitive_unique")]

    def __str__(self) -> str:
        return self.email

    @property
    def display_name(self) -> str:
        return self.name or self.email.split("@")[0]


class WorkspaceManager(models.Manager["Workspace"]):
    def personal_for(self, user: User) -> Workspace:
        """The user's personal workspace, made (with its owner membership) the first time it is asked for. Race-safe:
        one personal workspace per owner is a unique constraint."""
        workspace = self.filter(owner=user, personal=True).first()
        if workspace is not None:
            return workspace
        # Two first requests both insert; the unique constraint lets one through and the other reads its workspace
        # (no lock taken first: a sign-up is two round trips shorter).
        try:
            return self._personal_create(user)
        except IntegrityError:
            existing = self.filter(owner=user, personal=True).first()
            # None: it was the random slug that collided with another workspace's; a new one will not.
            return existing if existing is not None else self._personal_create(user)

    def _personal_create(self, user: User) -> Workspace:
        with transaction.atomic():
            workspace = self.create(
                name=f"{user.display_name}'s workspace"[:150],
                slug=new_workspace_slug(user.email.split("@")[0]),
                owner=user,
                personal=True,
            )
            Membership.objects.create(workspace=workspace, user=user, role=Membership.Role.OWNER)
        return workspace


def new_workspace_slug(name: str) -> str:
    """A slug for a new workspace: its name, made URL-safe, and a random suffix (slugs never collide or leak ids)."""
    import secrets

    from django.utils.text import slugify

    return f"{(slugify(name)[:40].strip('-') or 'workspace')}-{secrets.token_hex(3)}"


class Workspace(models.Model):
    """The tenant: a team (or one person's personal workspace) that owns exactly one tenant database, shared by its
    members according to their role."""

    name = models.CharField(max_length=150)
    slug = models.SlugField(max_length=60, unique=True)
    # The owner who is listed and billed; other members may hold the owner role too (see Membership).
    owner = models.ForeignKey(User, on_delete=models.PROTECT, related_name="owned_workspaces")
    personal = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WorkspaceManager()

    class Meta:
        db_table = "workspaces"
        constraints = [
            models.UniqueConstraint(
                fields=["owner"], condition=models.Q(personal=True), name="workspaces_one_personal_per_owner"
            )
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def label(self) -> str:
        """How commands name it, in the form they accept it: a personal workspace by its person's email."""
        return self.owner.email if self.personal else self.slug


class Membership(models.Model):
    """A person's place in a workspace: their role decides what they may do there (tenants.permissions)."""

    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        EDITOR = "editor"
        VIEWER = "viewer"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "workspace_memberships"
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="memberships_one_per_person")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.workspace_id} as {self.role}"


class Invitation(models.Model):
    """An invitation to join a workspace, sent by email. Only a digest of its token is stored: the link in the mail is
    the one copy, so the database cannot be read for a way in."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Membership.Role.choices)
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "workspace_invitations"
        indexes = [models.Index(name="invitations_workspace_email", fields=["workspace", "email"])]

    def __str__(self) -> str:
        return f"{self.email} to {self.workspace_id}"

    @property
    def is_pending(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()


def new_tenant_key() -> str:
    import secrets

    # Random, not the user id: database and project names never repeat, even across test runs on one server.
    return secrets.token_hex(6)


class VectorDatabase(models.Model):
    """The registry entry for one workspace's dedicated vector database (`vector_databases`)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        PROVISIONING = "provisioning"
        READY = "ready"
        FAILED = "failed"
        DELETING = "deleting"
        DELETED = "deleted"
        # A warm-pool database: created, migrated and checked, owned by no tenant yet, waiting to be claimed.
        POOLED = "pooled"

    workspace = models.OneToOneField(
        Workspace, null=True, blank=True, on_delete=models.SET_NULL, related_name="vector_database"
    )
    # Kept after the workspace is gone, as a record of erasure, with nothing that names who it belonged to.
    tenant_key = models.CharField(max_length=32, unique=True, default=new_tenant_key)
    provider = models.CharField(max_length=20)
    server = models.CharField(max_length=100, blank=True)  # administered server's name, or "neon"
    external_id = models.CharField(max_length=100, blank=True)  # database name or Neon project id
    region = models.CharField(max_length=50, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    encrypted_credentials = models.TextField(blank=True)
    schema_version = models.CharField(max_length=100, blank=True)
    embedding_model = models.CharField(max_length=100, blank=True)
    embedding_dimensions = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # Taken from the warm pool: when, and whether its credentials (made before its owner existed) still need
    # rotating. Until they are rotated the row is not ready, so nothing connects with the pool's password.
    claimed_at = models.DateTimeField(null=True, blank=True)
    rotation_pending = models.BooleanField(default=False)
    # A restore or move in progress (tenants.archives): while set, writes to the workspace are refused; the step it
    # is at is shown in the registry. On the database being built for it: the row it will replace.
    operation = models.CharField(max_length=20, blank=True)
    operation_step = models.CharField(max_length=200, blank=True)
    operation_started_at = models.DateTimeField(null=True, blank=True)
    replaces = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        db_table = "vector_databases"
        indexes = [
            models.Index(name="vector_databases_status", fields=["status"]),
            # The claim's look-up: pooled rows of one provider and region.
            models.Index(
                name="vector_databases_pool",
                fields=["provider", "region", "schema_version"],
                condition=models.Q(status="pooled"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.external_id or self.tenant_key} ({self.status})"

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    @property
    def is_busy(self) -> bool:
        return self.status in {self.Status.PENDING, self.Status.PROVISIONING, self.Status.DELETING}

    @property
    def is_pool_member(self) -> bool:
        """Made for the warm pool and not claimed yet (pooled, or still being made or erased for it)."""
        return self.workspace_id is None and self.claimed_at is None and self.status != self.Status.DELETED


class AuthenticatedHttpRequest(HttpRequest):
    """The request a `login_required` view gets: its user is signed in (for type checking)."""

    user: User


class MigrationRun(models.Model):
    """One `migrate_tenants` run: when, with which bounds, how far it got (updated as tenants finish)."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"  # every tenant it had to reach is at the target version
        FAILED = "failed"  # finished with failures; running again resumes
        STOPPED = "stopped"  # the canary failed or --max-failures was reached: some tenants were not started

    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    target_version = models.CharField(max_length=100)
    tenants_in_registry = models.PositiveIntegerField(default=0)  # ready tenants looked at
    tenants_to_migrate = models.PositiveIntegerField(default=0)  # those behind (or unknown): the ones contacted
    migrated = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    not_started = models.PositiveIntegerField(default=0)
    jobs = models.PositiveIntegerField(default=1)
    canary = models.PositiveIntegerField(null=True, blank=True)
    max_failures = models.PositiveIntegerField(null=True, blank=True)
    allow_breaking = models.BooleanField(default=False)
    stop_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        db_table = "tenant_migration_runs"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"migration run {self.id} to {self.target_version} ({self.status})"


class MigrationRunTenant(models.Model):
    """What one run did to one tenant database."""

    class Outcome(models.TextChoices):
        MIGRATED = "migrated"
        FAILED = "failed"
        NOT_STARTED = "not_started"

    run = models.ForeignKey(MigrationRun, on_delete=models.CASCADE, related_name="tenants")
    tenant_key = models.CharField(max_length=32)
    label = models.CharField(max_length=254)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    applied = models.TextField(blank=True)  # migration names, comma-separated
    error = models.TextField(blank=True)
    seconds = models.FloatField(default=0.0)
    finished_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "tenant_migration_run_tenants"
        ordering = ["run", "label"]
        constraints = [models.UniqueConstraint(fields=["run", "tenant_key"], name="migration_run_tenant_unique")]

    def __str__(self) -> str:
        return f"{self.label}: {self.outcome}"


class TenantServer(models.Model):
    """Operator state of an administered Postgres server listed in TENANT_POSTGRES_SERVERS (the list itself stays
    in settings): a draining server takes no new tenants."""

    name = models.CharField(max_length=100, unique=True)
    draining = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tenant_servers"

    def __str__(self) -> str:
        return f"{self.name}{' (draining)' if self.draining else ''}"


class TenantArchive(models.Model):
    """One archive of a workspace (tenants.archives): a backup, or the snapshot a restore or move is made from. The
    file is encrypted at rest under ARCHIVE_ROOT; the row is its catalogue entry, erased with the workspace."""

    class Kind(models.TextChoices):
        SCHEDULED = "scheduled"
        MANUAL = "manual"
        MOVE = "move"  # taken by a move, as its source

    class Status(models.TextChoices):
        RUNNING = "running"
        READY = "ready"
        FAILED = "failed"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="archives")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.MANUAL)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    file_name = models.CharField(max_length=255, blank=True)  # relative to ARCHIVE_ROOT
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)  # of the encrypted file
    schema_version = models.CharField(max_length=100, blank=True)
    embedding_model = models.CharField(max_length=100, blank=True)
    documents = models.PositiveIntegerField(default=0)
    chunks = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)  # the moment the archive shows
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "tenant_archives"
        ordering = ["-created_at"]
        indexes = [models.Index(name="tenant_archives_workspace", fields=["workspace", "-created_at"])]

    def __str__(self) -> str:
        return f"archive {self.id} of {self.workspace_id} ({self.status})"


class Plan(models.Model):
    """What a workspace may use (issue 21). A blank limit is unlimited; for the caps that already exist as settings
    (text, chunks, chat streams) a blank limit means the setting. Enforced by tenants.plans, metered by tenants.usage."""

    name = models.SlugField(max_length=40, unique=True)
    label = models.CharField(max_length=100)
    is_default = models.BooleanField(default=False)  # given to new workspaces
    storage_bytes = models.BigIntegerField(null=True, blank=True)
    documents = models.PositiveIntegerField(null=True, blank=True)
    pages_per_month = models.PositiveIntegerField(null=True, blank=True)
    questions_per_day = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_month = models.BigIntegerField(null=True, blank=True)
    members = models.PositiveIntegerField(null=True, blank=True)
    document_max_text_chars = models.PositiveIntegerField(null=True, blank=True)
    document_max_chunks = models.PositiveIntegerField(null=True, blank=True)
    chat_max_concurrent_streams = models.PositiveIntegerField(null=True, blank=True)
    # Neon's project quota (settings.quota); blank or 0 is unlimited, as on Neon.
    neon_active_time_seconds = models.BigIntegerField(null=True, blank=True)
    neon_compute_time_seconds = models.BigIntegerField(null=True, blank=True)
    neon_written_data_bytes = models.BigIntegerField(null=True, blank=True)
    neon_data_transfer_bytes = models.BigIntegerField(null=True, blank=True)
    neon_logical_size_bytes = models.BigIntegerField(null=True, blank=True)

    class Meta:
        db_table = "plans"
        constraints = [models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True),
                                               name="plans_one_default")]  # fmt: skip

    def __str__(self) -> str:
        return self.name


class WorkspacePlan(models.Model):
    """A workspace's plan, its per-workspace overrides (B2B deals: {"pages_per_month": 25}), and the readings the
    schedule takes (storage, Neon consumption) so that no page load reaches a tenant database to show usage."""

    workspace = models.OneToOneField(Workspace, on_delete=models.CASCADE, related_name="plan_assignment")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="assignments")
    overrides = models.JSONField(default=dict, blank=True)
    storage_bytes = models.BigIntegerField(null=True, blank=True)
    storage_sampled_at = models.DateTimeField(null=True, blank=True)
    neon_consumption = models.JSONField(default=dict, blank=True)
    neon_suspended = models.BooleanField(default=False)  # over its Neon quota: the project's compute is suspended
    neon_quota_synced = models.JSONField(null=True, blank=True)  # the quota last sent to Neon
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "workspace_plans"

    def __str__(self) -> str:
        return f"{self.workspace_id}: {self.plan_id}"


class WorkspaceUsage(models.Model):
    """Counters of one workspace in one period: a month (pages, tokens) or a day (questions). Changed only by atomic
    conditional UPDATEs in tenants.usage, so concurrent requests cannot overshoot a limit."""

    class Period(models.TextChoices):
        MONTH = "month"
        DAY = "day"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="usage")
    period = models.CharField(max_length=5, choices=Period.choices)
    starts_on = models.DateField()
    pages = models.PositiveIntegerField(default=0)
    questions = models.PositiveIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)

    class Meta:
        db_table = "workspace_usage"
        constraints = [
            models.UniqueConstraint(fields=["workspace", "period", "starts_on"], name="workspace_usage_one_per_period")
        ]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.period} {self.starts_on}"
