"""Tenant lifecycle: request, provision, retry, erase and reconcile tenant databases.

Views, Celery tasks and the `tenants` command all call these functions; signals only enqueue.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.dispatch import Signal
from django.utils import timezone

from config.celery import enqueue
from tenants.crypto import decrypt_credentials, encrypt_credentials
from tenants.models import Membership, MigrationRun, MigrationRunTenant, TenantServer, User, VectorDatabase, Workspace
from tenants.permissions import MOVING_MESSAGE, WorkspaceMoving
from tenants.provisioners import (
    DatabaseMissing,
    ProvisionedDatabase,
    ProvisioningError,
    QuotaExceeded,
    get_provisioner,
)
from vectordb.advisory_locks import advisory_lock
from vectordb.connections import TargetPurpose, TenantTarget, get_registry
from vectordb.fleet import FleetMember, FleetOutcome, fleet_migrate, fleet_needing_contact, fleet_verify
from vectordb.schema import (
    BreakingMigrationRefused,
    SchemaInspection,
    latest_schema_version,
    schema_target,
    tenant_database_migrate,
    tenant_database_prepare,
)
from vectordb.tenant_embedding_model import (
    EmbeddingModel,
    EmbeddingModelMismatch,
    embedding_column_dimensions,
    embedding_dimension_change,
    embedding_model_record,
    embedding_model_recorded,
)

logger = logging.getLogger(__name__)
Status = VectorDatabase.Status

# Sent while a workspace is erased, after its database is gone and before its row is deleted, so apps that keep its
# files (documents) remove them without `tenants` importing those apps.
tenant_erasing = Signal()  # kwargs: workspace

TRANSIENT_ERRORS = (ProvisioningError, psycopg.Error, DatabaseError)
QUOTA_MESSAGE = "Silo has reached its limit of databases for now; our team has been told. Please try again later."
USER_FACING_PROVISIONING_ERROR = "Your database could not be created yet. Please try again in a minute."


class ProvisioningFailed(Exception):
    """Provisioning failed in a way a retry may fix (the task retries with back-off)."""


def _enqueue_provisioning(vector_database_id: int) -> None:
    transaction.on_commit(lambda: enqueue("tenants.tasks.provision_vector_database", vector_database_id))


Tenant = Workspace | User  # a person stands for their personal workspace


def tenant_workspace(tenant: Tenant) -> Workspace:
    """The workspace a tenant-level operation acts on: the workspace itself, or a person's personal workspace (made
    the first time it is needed; commands take an email for it too)."""
    return tenant if isinstance(tenant, Workspace) else Workspace.objects.personal_for(tenant)


def vector_database_bind(workspace: Workspace, region: str | None = None) -> VectorDatabase:
    """The one place a registry row is bound to the workspace that owns it: its existing row, else a database claimed
    from the warm pool (its credentials still to rotate), else a new one (pending). Idempotent: one row per workspace
    (a unique constraint)."""
    region = region or default_region()
    existing = VectorDatabase.objects.filter(workspace=workspace).first()
    if existing is not None:
        return existing
    claimed = vector_database_claim(workspace, region)
    if claimed is not None:
        return claimed
    vector_database, _created = VectorDatabase.objects.get_or_create(
        workspace=workspace, defaults={"provider": settings.TENANT_PROVIDER, "region": region}
    )
    return vector_database


def vector_database_request(tenant: Tenant, region: str | None = None) -> VectorDatabase:
    """Give the workspace a database: claim one from the warm pool, else register a new one; either way enqueue the
    provisioning task, which rotates a claimed database's credentials or creates a new one (idempotent: one row per
    workspace)."""
    vector_database = vector_database_bind(tenant_workspace(tenant), region)
    if vector_database.status == Status.PENDING:
        _enqueue_provisioning(vector_database.id)
    return vector_database


def vector_database_retry(tenant: Tenant) -> VectorDatabase:
    """The dashboard's retry button: a failed database goes back to pending and is provisioned again."""
    workspace = tenant_workspace(tenant)
    updated = VectorDatabase.objects.filter(workspace=workspace, status=Status.FAILED).update(
        status=Status.PENDING, last_error="", updated_at=timezone.now()
    )
    vector_database = VectorDatabase.objects.get(workspace=workspace)
    if updated:
        _enqueue_provisioning(vector_database.id)
    return vector_database


def default_region() -> str:
    return settings.NEON_REGION if settings.TENANT_PROVIDER == "neon" else settings.TENANT_DEFAULT_REGION


def _tenant_lifecycle_lock(vector_database_id: int):
    """One lifecycle operation (provision, erase) per tenant database at a time."""
    return advisory_lock(f"tenant-lifecycle:{vector_database_id}")


def vector_database_provision(vector_database_id: int) -> VectorDatabase:
    """Create (or finish creating) the tenant's database and bring its schema to the latest version.

    Idempotent: a retried or re-delivered task finds what an earlier attempt made and completes it.
    """
    with _tenant_lifecycle_lock(vector_database_id):
        vector_database = VectorDatabase.objects.get(id=vector_database_id)
        if vector_database.status in {Status.READY, Status.POOLED, Status.DELETING, Status.DELETED}:
            return vector_database
        if vector_database.rotation_pending:
            return _claim_finish(vector_database)
        pool_member = vector_database.is_pool_member
        vector_database.status = Status.PROVISIONING
        vector_database.attempts += 1  # under the tenant lock: no concurrent increment to lose
        vector_database.save(update_fields=["status", "attempts", "updated_at"])
        provisioner = get_provisioner(vector_database.provider)
        try:
            placed = provisioner.create(
                vector_database.tenant_key,
                vector_database.region or None,
                first_attempt=vector_database.attempts == 1 and not vector_database.external_id,
                pooled=pool_member,
            )
            # Saved with the outcome, ready or failed, in one write. A worker that dies before then leaves a database
            # the registry has no id for: the next attempt finds it by name, and so does erasure (`locate`).
            _set_location(vector_database, placed)
            # Over the direct connection: DDL does not belong on a transaction-mode pooler.
            schema_version = tenant_database_prepare(
                schema_target(vector_database.tenant_key, placed.migration_dsn),
                model=settings.EMBEDDING_MODEL,
                dimensions=settings.EMBEDDING_DIMENSIONS,
                new_database=placed.new_database,
            )
        except QuotaExceeded as error:
            logger.error("tenant database %s refused by the provider: %s", vector_database.tenant_key, error)
            return _mark_failed(vector_database, QUOTA_MESSAGE)
        except (BreakingMigrationRefused, EmbeddingModelMismatch) as error:
            return _mark_failed(vector_database, str(error))
        except TRANSIENT_ERRORS as error:
            logger.warning(
                "provisioning tenant database %s failed: %s", vector_database.tenant_key, type(error).__name__
            )
            _mark_failed(vector_database, USER_FACING_PROVISIONING_ERROR)
            raise ProvisioningFailed(str(error)) from error
        # A pool member waits, created, migrated and checked, for a claim; a tenant's database is theirs now.
        vector_database.status = Status.POOLED if pool_member else Status.READY
        vector_database.schema_version = schema_version
        vector_database.embedding_model = settings.EMBEDDING_MODEL
        vector_database.embedding_dimensions = settings.EMBEDDING_DIMENSIONS
        vector_database.last_error = ""
        vector_database.ready_at = timezone.now()
        vector_database.save(
            update_fields=[
                "status", "schema_version", "embedding_model", "embedding_dimensions", "last_error", "ready_at",
                *LOCATION_FIELDS, "updated_at",
            ]
        )  # fmt: skip
        logger.info(
            "tenant database %s %s on %s", vector_database.tenant_key, vector_database.status, vector_database.server
        )
        _quota_apply(vector_database)
        return vector_database


def _quota_apply(vector_database: VectorDatabase) -> None:
    """A workspace's new Neon project gets its plan's quota (a pooled one gets it when claimed)."""
    if vector_database.provider == "neon" and vector_database.workspace_id and vector_database.is_ready:
        from tenants.plans import neon_quota_sync

        neon_quota_sync(vector_database.workspace, get_provisioner(vector_database.provider))  # type: ignore[arg-type]


LOCATION_FIELDS = ("external_id", "server", "region", "encrypted_credentials")


def _set_location(vector_database: VectorDatabase, placed: ProvisionedDatabase) -> None:
    """Where the database is and how to log in (encrypted); the caller saves LOCATION_FIELDS."""
    vector_database.external_id = placed.external_id
    vector_database.server = placed.server
    vector_database.region = placed.region
    credentials = {"dsn": placed.dsn, "migration_dsn": placed.migration_dsn}
    if placed.branch_id:
        credentials["branch_id"] = placed.branch_id
    vector_database.encrypted_credentials = encrypt_credentials(credentials)


def _mark_failed(vector_database: VectorDatabase, message: str) -> VectorDatabase:
    """Failed, with a message for the user; a database made before the failure stays recorded for the retry."""
    vector_database.status = Status.FAILED
    vector_database.last_error = message[:2000]
    vector_database.save(update_fields=["status", "last_error", *LOCATION_FIELDS, "updated_at"])
    return vector_database


def vector_database_credentials(vector_database: VectorDatabase, refresh: bool = False) -> dict[str, str]:
    """The tenant's connection details, decrypted; `refresh` asks the provider for new ones and stores them."""
    if refresh and vector_database.external_id:
        placed = get_provisioner(vector_database.provider).dsn(vector_database.external_id, vector_database.server)
        _set_location(vector_database, placed)
        vector_database.save(update_fields=[*LOCATION_FIELDS, "updated_at"])
    return decrypt_credentials(vector_database.encrypted_credentials)


def workspaces_solely_owned(user: User) -> list[Workspace]:
    """The workspaces that go with this person's account: their personal one, and those where no one else is an
    owner."""
    workspaces = Workspace.objects.filter(memberships__user=user).distinct().order_by("id")
    return [
        workspace
        for workspace in workspaces
        if (workspace.personal and workspace.owner_id == user.id)
        or not workspace.memberships.filter(role=Membership.Role.OWNER).exclude(user=user).exists()
    ]


def account_delete_request(user: User) -> None:
    """The person asked to delete their account: lock it now, erase everything in the background."""
    User.objects.filter(id=user.id).update(is_active=False)
    VectorDatabase.objects.filter(workspace__in=workspaces_solely_owned(user)).exclude(status=Status.DELETED).update(
        status=Status.DELETING, updated_at=timezone.now()
    )
    user_id = user.id
    transaction.on_commit(lambda: enqueue("tenants.tasks.erase_tenant", user_id))


def tenant_erase(user_id: int) -> bool:
    """Delete an account: the workspaces it solely owns are erased (database, documents, files, rows); it leaves the
    others, taking its private conversations there along. Idempotent."""
    user = User.objects.filter(id=user_id).first()
    if user is None:
        return False
    solely_owned = workspaces_solely_owned(user)
    for workspace in solely_owned:
        workspace_erase(workspace.id)
    for membership in Membership.objects.filter(user=user).select_related("workspace__owner"):
        _private_conversations_erase(membership.workspace, user.id)
        membership_end(membership)
    user.delete()
    logger.info("account %s erased (%d workspaces with it)", user_id, len(solely_owned))
    return True


def membership_end(membership: Membership) -> None:
    """Remove a member; when they were the workspace's listed owner, the longest-standing other owner is listed."""
    workspace = membership.workspace
    with transaction.atomic():
        membership.delete()
        if workspace.owner_id == membership.user_id:
            successor = workspace.memberships.filter(role=Membership.Role.OWNER).order_by("created_at", "id").first()
            if successor is not None:
                Workspace.objects.filter(id=workspace.id).update(owner=successor.user_id)


def _private_conversations_erase(workspace: Workspace, user_id: int) -> None:
    from vectordb.conversations import conversations_delete_private

    try:
        with get_registry().connection(tenant_target(workspace)) as connection:
            conversations_delete_private(connection, user_id)
    except (TenantDatabaseNotReady, psycopg.OperationalError) as error:
        logger.warning(
            "private conversations of account %s left in workspace %s: %s", user_id, workspace.id, type(error).__name__
        )


def workspace_delete_request(workspace: Workspace) -> None:
    """Lock the workspace's database now (its pages say it is being deleted) and erase everything in the background.
    The caller checked the role (tenants.permissions)."""
    VectorDatabase.objects.filter(workspace=workspace).exclude(status=Status.DELETED).update(
        status=Status.DELETING, updated_at=timezone.now()
    )
    Membership.objects.filter(workspace=workspace).delete()  # no one reaches it any more, at once
    workspace_id = workspace.id
    transaction.on_commit(lambda: enqueue("tenants.tasks.erase_workspace", workspace_id))


def workspace_erase(workspace_id: int) -> bool:
    """Drop the workspace's database (or Neon project), then its documents and files, then its rows. Idempotent."""
    workspace = Workspace.objects.filter(id=workspace_id).first()
    if workspace is None:
        return False
    vector_database = VectorDatabase.objects.filter(workspace_id=workspace_id).first()
    if vector_database is not None:
        vector_database_deprovision(vector_database.id)
    tenant_erasing.send(sender=Workspace, workspace=workspace)
    workspace.delete()
    logger.info("workspace %s erased", workspace_id)
    return True


def vector_database_deprovision(vector_database_id: int) -> VectorDatabase:
    with _tenant_lifecycle_lock(vector_database_id):
        vector_database = VectorDatabase.objects.get(id=vector_database_id)
        if vector_database.status == Status.DELETED:
            return vector_database
        VectorDatabase.objects.filter(id=vector_database_id).update(status=Status.DELETING, updated_at=timezone.now())
        get_registry().close_tenant(vector_database.tenant_key)
        provisioner = get_provisioner(vector_database.provider)
        location = (vector_database.server, vector_database.external_id)
        if not vector_database.external_id and vector_database.attempts:
            # An attempt may have made the database and died before recording it: look for it by the tenant's key.
            location = provisioner.locate(vector_database.tenant_key) or ("", "")
        if location[1]:
            provisioner.delete(location[1], location[0])
        VectorDatabase.objects.filter(id=vector_database_id).update(
            status=Status.DELETED,
            encrypted_credentials="",
            workspace=None,
            deleted_at=timezone.now(),
            updated_at=timezone.now(),
        )
        vector_database.refresh_from_db()
        return vector_database


@dataclass
class ReconcileReport:
    orphans: list[tuple[str, str]] = field(default_factory=list)  # (server, external_id) with no live registry row
    missing: list[str] = field(default_factory=list)  # tenant keys marked ready whose database is gone
    stuck: list[str] = field(default_factory=list)  # pending/provisioning for too long
    pooled_missing: list[str] = field(default_factory=list)  # warm-pool rows whose database is gone
    pooled_stuck: list[str] = field(default_factory=list)  # warm-pool rows being made (or failed) for too long
    fixed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.orphans or self.missing or self.stuck or self.pooled_missing or self.pooled_stuck)


def tenants_reconcile(apply: bool = False, stuck_after_seconds: int = 600) -> ReconcileReport:
    """Compare the registry with what the provider really has; with `apply`, delete orphans and re-provision. Pool
    rows whose database is gone, or that never became pooled, are dropped from the pool (the refill replaces them)."""
    provisioner = get_provisioner()
    existing = set(provisioner.list_databases())
    live_rows = VectorDatabase.objects.filter(provider=provisioner.name).exclude(status=Status.DELETED)
    known = {(row.server, row.external_id) for row in live_rows if row.external_id}
    report = ReconcileReport()
    report.orphans = sorted(existing - known)
    for row in live_rows:
        if row.replaces_id is not None and row.workspace_id is None:
            continue  # a restore or move's (tenants.archive_reconcile reports it): never re-provisioned as stuck
        long_unchanged = (timezone.now() - row.updated_at).total_seconds() > stuck_after_seconds
        if row.status in {Status.READY, Status.POOLED} and (row.server, row.external_id) not in existing:
            (report.pooled_missing if row.status == Status.POOLED else report.missing).append(row.tenant_key)
        elif row.is_pool_member and row.status in {Status.PENDING, Status.PROVISIONING, Status.FAILED}:
            if long_unchanged:
                report.pooled_stuck.append(row.tenant_key)
        elif row.status in {Status.PENDING, Status.PROVISIONING} and long_unchanged:
            report.stuck.append(row.tenant_key)
    if apply:
        for server, external_id in report.orphans:
            provisioner.delete(external_id, server)
            report.fixed.append(f"deleted orphan {external_id}")
        for tenant_key in report.missing + report.stuck:
            row = VectorDatabase.objects.get(tenant_key=tenant_key)
            VectorDatabase.objects.filter(id=row.id).update(status=Status.PENDING, updated_at=timezone.now())
            _enqueue_provisioning(row.id)
            report.fixed.append(f"re-provisioning {tenant_key}")
        stuck_statuses = (Status.PENDING, Status.PROVISIONING, Status.FAILED)
        for tenant_key, statuses in [(key, (Status.POOLED,)) for key in report.pooled_missing] + [
            (key, stuck_statuses) for key in report.pooled_stuck
        ]:
            row = VectorDatabase.objects.get(tenant_key=tenant_key)
            if _pool_row_take(row.id, statuses):  # still in the pool: a claim may have taken it since
                vector_database_deprovision(row.id)
                report.fixed.append(f"removed {tenant_key} from the pool")
    return report


@dataclass
class BoundsReport:
    outside: dict[str, list[str]] = field(default_factory=dict)  # tenant label -> what its role or database lacks
    fixed: list[str] = field(default_factory=list)  # tenant labels


def tenants_bound(apply: bool = False) -> BoundsReport:
    """Check every ready tenant database on servers we administer against what one tenant may take of the server
    (connection limit, session limits, no advisory locks, no way into the server's own databases); with `apply`,
    bring those outside under the bounds. Databases made before the bounds existed are the ones found."""
    report = BoundsReport()
    if not settings.TENANT_POSTGRES_SERVERS:
        return report  # Neon: every tenant has a server (a compute) of its own
    from tenants.provisioners.postgres import PostgresProvisioner

    provisioner = PostgresProvisioner.from_settings()
    rows = VectorDatabase.objects.filter(status=Status.READY, provider="postgres").select_related("workspace__owner")
    for row in rows.order_by("id"):
        label = row.workspace.label if row.workspace else row.tenant_key
        missing = provisioner.bounds_missing(row.external_id, row.server)
        if not missing:
            continue
        report.outside[label] = missing
        if apply:
            provisioner.bounds_apply(row.external_id, row.server)
            report.fixed.append(label)
    return report


def _fleet_rows(workspace: Workspace | None = None):
    # Pooled databases too: a pooled database is never handed out behind the latest schema.
    rows = VectorDatabase.objects.filter(status__in=[Status.READY, Status.POOLED])
    if workspace is not None:
        rows = rows.filter(workspace=workspace)
    return rows


def _fleet_label(tenant_key: str, slug: str | None, personal: bool | None, owner_email: str | None) -> str:
    """How commands name a fleet member: its workspace as they accept it (Workspace.label), else the pool's key."""
    if slug is None:
        return f"pool:{tenant_key}"
    return (owner_email or slug) if personal else slug


def fleet_members(workspace: Workspace | None = None, *, behind_only: bool = False) -> list[FleetMember]:
    """Every ready and pooled tenant database (or one workspace's), with credentials that may change its schema
    (decrypted only if a connection is made) and the schema version the registry records for it. `behind_only`: those
    the registry does not record at the latest migration, selected by the database: a fleet at the latest version
    loads no row."""
    rows = _fleet_rows(workspace)
    if behind_only:
        rows = rows.exclude(schema_version=latest_schema_version())
    return [
        FleetMember(
            label=_fleet_label(tenant_key, slug, personal, owner_email),
            target=_schema_target(tenant_key),
            schema_version=schema_version,
        )
        for tenant_key, slug, personal, owner_email, schema_version in rows.order_by("id").values_list(
            "tenant_key", "workspace__slug", "workspace__personal", "workspace__owner__email", "schema_version"
        )
    ]


def fleet_size(workspace: Workspace | None = None) -> int:
    """How many ready and pooled tenant databases the registry has (or the workspace's: 0 or 1)."""
    return _fleet_rows(workspace).count()


def _schema_target(tenant_key: str) -> TenantTarget:
    """Credentials are read and decrypted only when a connection is made: a fleet decided from the registry reads
    none (at 10,000 tenants they would be most of what the plan loads)."""

    def resolve_dsn(_refresh: bool) -> str:
        encrypted = VectorDatabase.objects.values_list("encrypted_credentials", flat=True).get(tenant_key=tenant_key)
        return decrypt_credentials(encrypted)["migration_dsn"]

    return TenantTarget(key=tenant_key, resolve_dsn=resolve_dsn, purpose=TargetPurpose.SCHEMA)


@dataclass
class FleetMigration:
    run: MigrationRun
    outcomes: list[FleetOutcome]  # the members that had to be reached: migrated, failed or not started
    up_to_date: int  # members the registry already records at the latest version: not contacted

    @property
    def failures(self) -> list[FleetOutcome]:
        return [outcome for outcome in self.outcomes if outcome.error]

    @property
    def not_started(self) -> list[FleetOutcome]:
        return [outcome for outcome in self.outcomes if outcome.not_started]


def tenants_migrate(
    members: list[FleetMember],
    jobs: int,
    allow_breaking: bool = False,
    on_done: Callable[[FleetOutcome], None] | None = None,
    *,
    canary: int | None = None,
    max_failures: int | None = None,
    fleet_total: int | None = None,
) -> FleetMigration:
    """Migrate the members the registry records behind the latest migration (or at a version it cannot vouch for),
    record each one's new schema version and a run record with every tenant's outcome, then bring the new-tenant
    template up to date. Members already at the latest version are not contacted.

    `canary`: migrate that many first and stop if any of them fails. `max_failures`: stop starting tenants once that
    many have failed. Tenants a stop leaves out are recorded as not started; running again resumes.
    `fleet_total`: how many ready tenants the registry has, when `members` holds only those behind."""
    behind = fleet_needing_contact(members)
    in_registry = len(members) if fleet_total is None else fleet_total
    run = MigrationRun.objects.create(
        target_version=latest_schema_version(),
        tenants_in_registry=in_registry,
        tenants_to_migrate=len(behind),
        jobs=jobs,
        canary=canary,
        max_failures=max_failures,
        allow_breaking=allow_breaking,
    )

    def record(outcome: FleetOutcome) -> None:
        _migration_run_record(run, outcome)
        if on_done:
            on_done(outcome)

    first, rest = (behind[:canary], behind[canary:]) if canary else ([], behind)
    outcomes = fleet_migrate(first, jobs=jobs, allow_breaking=allow_breaking, on_done=record) if first else []
    canary_failures = sum(1 for outcome in outcomes if outcome.error)
    if canary_failures:
        run.stop_reason = f"canary: {canary_failures} of {len(first)} tenants failed; the rest were not started"
        for member in rest:
            left_out = FleetOutcome(member=member, contacted=False, not_started=True)
            record(left_out)
            outcomes.append(left_out)
    elif rest:
        outcomes += fleet_migrate(
            rest, jobs=jobs, allow_breaking=allow_breaking, on_done=record, stop_after_failures=max_failures
        )
        if max_failures is not None and any(outcome.not_started for outcome in outcomes):
            run.stop_reason = f"{max_failures} tenants failed (--max-failures): the rest were not started"
    outcomes.sort(key=lambda outcome: outcome.member.label)
    if not run.stop_reason:
        _template_refresh(allow_breaking)
    run.refresh_from_db(fields=["migrated", "failed", "not_started"])
    run.status = (
        MigrationRun.Status.STOPPED if run.stop_reason
        else MigrationRun.Status.FAILED if run.failed
        else MigrationRun.Status.SUCCEEDED
    )  # fmt: skip
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "finished_at", "stop_reason"])
    return FleetMigration(run=run, outcomes=outcomes, up_to_date=in_registry - len(behind))


def _migration_run_record(run: MigrationRun, outcome: FleetOutcome) -> None:
    """One tenant's outcome in the run record and its progress counters; the registry learns a new schema version."""
    if outcome.not_started:
        result, counter = MigrationRunTenant.Outcome.NOT_STARTED, "not_started"
    elif outcome.error:
        result, counter = MigrationRunTenant.Outcome.FAILED, "failed"
    else:
        result, counter = MigrationRunTenant.Outcome.MIGRATED, "migrated"
        VectorDatabase.objects.filter(tenant_key=outcome.member.key).update(
            schema_version=outcome.schema_version, updated_at=timezone.now()
        )
    MigrationRunTenant.objects.create(
        run=run,
        tenant_key=outcome.member.key,
        label=outcome.member.label[:254],
        outcome=result,
        applied=", ".join(outcome.applied),
        error=outcome.error,
        seconds=round(outcome.seconds, 3),
    )
    MigrationRun.objects.filter(id=run.id).update(**{counter: F(counter) + 1})


def _template_refresh(allow_breaking: bool) -> None:
    provisioner = get_provisioner()
    if hasattr(provisioner, "template_refresh"):  # new tenants are cloned from it: same version as the fleet
        try:
            provisioner.template_refresh(allow_breaking=allow_breaking)
        except BreakingMigrationRefused:
            logger.warning("tenant template left at its version: the pending migrations are destructive")


@dataclass
class FleetVerification:
    checked: int = 0
    repaired: list[str] = field(default_factory=list)  # registry corrections, one line each
    problems: dict[str, list[str]] = field(default_factory=dict)  # tenant label -> what its database lacks
    unreachable: dict[str, str] = field(default_factory=dict)  # tenant label -> error

    @property
    def clean(self) -> bool:
        return not (self.problems or self.unreachable)


def tenants_verify(
    jobs: int, per_second: float | None = None, on_done: Callable[[FleetOutcome], None] | None = None
) -> FleetVerification:
    """Connect to every ready tenant database (`jobs` at a time, at most `per_second` a second) and compare what it
    has with the registry: schema version, pgvector, the indexes its version declares, its embedding model. The
    registry is corrected to what the database says; what the database lacks is reported."""
    members = fleet_members()
    rows = {row.tenant_key: row for row in VectorDatabase.objects.filter(tenant_key__in=[m.key for m in members])}
    report = FleetVerification()

    def compare(outcome: FleetOutcome) -> None:
        report.checked += 1
        label = outcome.member.label
        if outcome.error or outcome.inspection is None:
            report.unreachable[label] = outcome.error
        else:
            report.repaired += _registry_repair(rows[outcome.member.key], label, outcome.inspection)
            problems = list(outcome.inspection.problems)
            if outcome.inspection.pending:
                problems.append(f"{len(outcome.inspection.pending)} migration(s) pending: run migrate_tenants")
            if problems:
                report.problems[label] = problems
        if on_done:
            on_done(outcome)

    fleet_verify(members, jobs=jobs, per_second=per_second, on_done=compare)
    return report


def _registry_repair(row: VectorDatabase, label: str, found: SchemaInspection) -> list[str]:
    """Makes the registry row say what the database has; one line per correction."""
    changes: dict[str, object] = {}
    if row.schema_version != found.schema_version:
        changes["schema_version"] = found.schema_version
    if found.embedding_model and (row.embedding_model, row.embedding_dimensions) != (
        found.embedding_model.name,
        found.embedding_model.dimensions,
    ):
        changes["embedding_model"] = found.embedding_model.name
        changes["embedding_dimensions"] = found.embedding_model.dimensions
    if not changes:
        return []
    VectorDatabase.objects.filter(id=row.id).update(**changes, updated_at=timezone.now())
    return [
        f"{label}: {name} {getattr(row, name) or '(none)'} -> {value or '(none)'}" for name, value in changes.items()
    ]


class UnknownServer(Exception):
    pass


def tenant_server_drain(name: str, draining: bool) -> TenantServer:
    """Mark an administered server draining (placement skips it) or open again; its tenants stay where they are."""
    known = [server["name"] for server in settings.TENANT_POSTGRES_SERVERS]
    if name not in known:
        raise UnknownServer(f"no server {name!r} in TENANT_POSTGRES_SERVERS (known: {', '.join(known) or 'none'})")
    server, _created = TenantServer.objects.update_or_create(name=name, defaults={"draining": draining})
    logger.info("tenant database server %s %s", name, "draining" if draining else "open")
    return server


class TenantDatabaseNotReady(Exception):
    """The tenant's database is not ready yet (provisioning, failed or erased)."""

    def __init__(self, status: str):
        self.status = status
        super().__init__(f"tenant database is {status}")


def tenant_target(tenant: Tenant) -> TenantTarget:
    """How `vectordb` reaches this workspace's database. Credentials are decrypted once per process (cached there).
    Callers checked the person's role first (tenants.permissions)."""
    vector_database = VectorDatabase.objects.filter(workspace=tenant_workspace(tenant)).first()
    if vector_database is None or vector_database.status != Status.READY:
        raise TenantDatabaseNotReady(vector_database.status if vector_database else "missing")
    return vector_database_target(vector_database)


def tenant_target_for_writing(workspace: Workspace) -> TenantTarget:
    """tenant_target for work that writes there (a chat turn), from the same read of the registry: WorkspaceMoving
    while a restore or move runs (tenants.archives), as tenants.permissions.workspace_writable_require says."""
    vector_database = VectorDatabase.objects.filter(workspace=workspace).first()
    if vector_database is not None and vector_database.operation:
        raise WorkspaceMoving(MOVING_MESSAGE)
    if vector_database is None or vector_database.status != Status.READY:
        raise TenantDatabaseNotReady(vector_database.status if vector_database else "missing")
    return vector_database_target(vector_database)


def vector_database_target(vector_database: VectorDatabase) -> TenantTarget:
    """How `vectordb` reaches this (ready) database for the app's traffic."""
    vector_database_id = vector_database.id

    def resolve_dsn(refresh: bool) -> str:
        row = VectorDatabase.objects.get(id=vector_database_id)
        return vector_database_credentials(row, refresh=refresh)["dsn"]

    return TenantTarget(key=vector_database.tenant_key, resolve_dsn=resolve_dsn)


@dataclass(frozen=True)
class EmbeddingModelSwitch:
    previous: EmbeddingModel | None  # what the tenant database recorded before
    changed: bool  # the chunks were deleted and the column set to the configured model's dimension
    chunks_deleted: int


def vector_database_embedding_model_switch(tenant: Tenant) -> EmbeddingModelSwitch:
    """Make the tenant database hold the configured embedding model: when it records another model (or its column
    has another dimension) every chunk is deleted, the column changed and the new model recorded; then the registry
    records it too, and only from then on may ingest use it. Raises TenantDatabaseNotReady."""
    target = tenant_target(tenant)
    configured = EmbeddingModel(settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSIONS)
    with get_registry().connection(target) as connection:
        previous = embedding_model_recorded(connection)
        changed = previous != configured or embedding_column_dimensions(connection) != configured.dimensions
        deleted = embedding_dimension_change(connection, configured.dimensions) if changed else 0
        if changed:
            embedding_model_record(connection, configured, replace=True)
    if changed:
        logger.info(
            "tenant database %s switched from %s to %s (%d chunks deleted)", target.key, previous, configured, deleted
        )
    VectorDatabase.objects.filter(workspace=tenant_workspace(tenant)).update(
        embedding_model=configured.name, embedding_dimensions=configured.dimensions, updated_at=timezone.now()
    )
    return EmbeddingModelSwitch(previous=previous, changed=changed, chunks_deleted=deleted)


# --- the warm pool -------------------------------------------------------------------------------------------------
# Databases made ahead of sign-up: ordinary registry rows in state `pooled`, owned by no tenant, at the latest schema
# with the embedding model recorded. A sign-up claims one (`vector_database_claim`), the provisioning task rotates its
# credentials and names it for its tenant (`_claim_finish`), the worker refills the pool (`tenant_pool_refill`).


def _pool_rows(provider: str, region: str):
    """The pool's rows of one provider and region: pooled, or being made for the pool."""
    return VectorDatabase.objects.filter(
        provider=provider, region=region, workspace__isnull=True, claimed_at__isnull=True
    ).exclude(status=Status.DELETED)


def _claimable(provider: str, region: str):
    """Pooled rows a claim may take: at the latest schema and holding the configured embedding model."""
    return _pool_rows(provider, region).filter(
        status=Status.POOLED,
        schema_version=latest_schema_version(),
        embedding_model=settings.EMBEDDING_MODEL,
        embedding_dimensions=settings.EMBEDDING_DIMENSIONS,
    )


def vector_database_claim(workspace: Workspace, region: str) -> VectorDatabase | None:
    """Take a pooled database for the workspace in one transaction (`SKIP LOCKED`: two sign-ups never wait for, nor
    take, the same row), pending until the provisioning task rotates its credentials (vector_database_request
    enqueues it); then a refill. None when the region's pool has nothing to give (or the claim failed): the caller
    (vector_database_bind, the one place a row gets its workspace) falls back to creating a database."""
    # One statement, so one round trip and its own transaction: lock the first claimable row no other claim holds
    # (SKIP LOCKED), bind it, and return it. Not ready until its credentials are rotated: nothing may connect with
    # the pool's password.
    claimable, parameters = (
        _claimable(settings.TENANT_PROVIDER, region).order_by("id").values("id")[:1].query.sql_with_params()
    )
    now = timezone.now()
    # Inside a caller's transaction, a savepoint, so a failed claim leaves that transaction usable.
    savepoint = transaction.atomic() if transaction.get_connection().in_atomic_block else contextlib.nullcontext()
    try:
        with savepoint:
            claimed = list(
                VectorDatabase.objects.raw(
                    f"UPDATE {VectorDatabase._meta.db_table} SET workspace_id = %s, status = %s, "
                    f"rotation_pending = true, claimed_at = %s, updated_at = %s "
                    f"WHERE id = ({claimable} FOR UPDATE SKIP LOCKED) RETURNING *",
                    [workspace.id, Status.PENDING, now, now, *parameters],
                )
            )
    except IntegrityError:  # the workspace got a database meanwhile (a concurrent request): that one stands
        return None
    except DatabaseError:
        logger.exception("claiming a pooled database in %s failed; creating one instead", region)
        return None
    if not claimed:
        return None
    [row] = claimed
    transaction.on_commit(lambda: enqueue("tenants.tasks.refill_tenant_pool", region))
    logger.info("tenant database %s claimed from the %s pool", row.tenant_key, region)
    return row


def _claim_finish(vector_database: VectorDatabase) -> VectorDatabase:
    """A claimed database's credentials were made before its owner existed: a new password (the old one stops
    working, its sessions end) and a name for its tenant, then ready. Called under the tenant's lifecycle lock; a
    retry after a crash finishes it. A database gone from its server is dropped from the registry and the tenant
    gets another (claimed or created)."""
    get_registry().close_tenant(vector_database.tenant_key)  # no connection made with the pool's password stays
    provisioner = get_provisioner(vector_database.provider)
    # A Neon project gets its tenant's plan's quota in the request that names it (one request fewer than a sync).
    planned = None
    if vector_database.provider == "neon" and vector_database.workspace_id:
        from tenants.plans import neon_quota_planned

        planned = neon_quota_planned(vector_database.workspace)  # type: ignore[arg-type]
    try:
        placed = provisioner.credentials_rotate(
            vector_database.external_id,
            vector_database.server,
            vector_database.tenant_key,
            current=decrypt_credentials(vector_database.encrypted_credentials),
            quota=planned[1] if planned else None,
        )
    except DatabaseMissing:
        logger.error("claimed pooled database %s is missing on its server; replacing it", vector_database.tenant_key)
        return _claim_replace(vector_database)
    except TRANSIENT_ERRORS as error:
        logger.warning(
            "rotating claimed tenant database %s failed: %s", vector_database.tenant_key, type(error).__name__
        )
        raise ProvisioningFailed(str(error)) from error
    _set_location(vector_database, placed)
    vector_database.status = Status.READY
    vector_database.rotation_pending = False
    vector_database.last_error = ""
    vector_database.ready_at = timezone.now()
    vector_database.save(
        update_fields=["status", "rotation_pending", "last_error", "ready_at", *LOCATION_FIELDS, "updated_at"]
    )
    logger.info("claimed tenant database %s ready on %s", vector_database.tenant_key, vector_database.server)
    if planned:
        from tenants.plans import neon_quota_recorded

        neon_quota_recorded(*planned, placed.details)
    return vector_database


def _claim_replace(vector_database: VectorDatabase) -> VectorDatabase:
    """The claimed database is gone: record that, free the tenant, and provision another for them now."""
    workspace, region = vector_database.workspace, vector_database.region
    VectorDatabase.objects.filter(id=vector_database.id).update(
        status=Status.DELETED,
        workspace=None,
        rotation_pending=False,
        encrypted_credentials="",
        last_error="missing on its server when claimed",
        deleted_at=timezone.now(),
        updated_at=timezone.now(),
    )
    if workspace is None:
        vector_database.refresh_from_db()
        return vector_database
    replacement = vector_database_request(workspace, region)
    return vector_database_provision(replacement.id)


def tenant_pool_target(region: str) -> int:
    """How many pooled databases the region should hold (TENANT_WARM_POOL_SIZE, or its entry in
    TENANT_WARM_POOL_REGION_SIZES; 0: no pool)."""
    return settings.TENANT_WARM_POOL_REGION_SIZES.get(region, settings.TENANT_WARM_POOL_SIZE)


def tenant_pool_regions() -> list[str]:
    """The regions of the configured provider that may have a pool."""
    regions = {default_region(), *settings.TENANT_WARM_POOL_REGION_SIZES}
    if settings.TENANT_PROVIDER == "postgres":
        regions |= {server["region"] for server in settings.TENANT_POSTGRES_SERVERS}
    return sorted(regions)


@dataclass
class PoolState:
    provider: str
    region: str
    target: int
    pooled: int  # claimable now
    filling: int  # being made for the pool
    stale: int  # pooled but behind the latest schema or on another embedding model: not claimable
    quota_note: str = ""  # why the provider's quota keeps the pool below its target, if it does

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def tenant_pool_status() -> list[PoolState]:
    """Per region of the configured provider: the target, what is claimable, being made, or stale."""
    provider = settings.TENANT_PROVIDER
    states = []
    for region in tenant_pool_regions():
        rows = _pool_rows(provider, region)
        pooled = _claimable(provider, region).count()
        states.append(
            PoolState(
                provider=provider,
                region=region,
                target=tenant_pool_target(region),
                pooled=pooled,
                filling=rows.filter(status__in=[Status.PENDING, Status.PROVISIONING]).count(),
                stale=rows.filter(status=Status.POOLED).count() - pooled,
                quota_note=_quota_note(provider, tenant_pool_target(region)),
            )
        )
    return states


def _quota_room(provider: str) -> int | None:
    """How many more databases the pool may make before reaching the provider's quota less the headroom kept for
    sign-ups that find the pool empty; None: no known quota. Neon counts pooled projects against its limit."""
    if provider != "neon" or not settings.NEON_PROJECTS_LIMIT:
        return None
    in_use = VectorDatabase.objects.filter(provider="neon").exclude(status=Status.DELETED).count()
    return max(0, settings.NEON_PROJECTS_LIMIT - settings.TENANT_WARM_POOL_QUOTA_HEADROOM - in_use)


def _quota_note(provider: str, wanted: int) -> str:
    room = _quota_room(provider)
    if room is None or room >= wanted:
        return ""
    return (
        f"refill stopped by Neon's project quota: NEON_PROJECTS_LIMIT={settings.NEON_PROJECTS_LIMIT} with "
        f"{settings.TENANT_WARM_POOL_QUOTA_HEADROOM} kept free for sign-ups; raise the plan's limit or shrink the pool"
    )


@dataclass
class PoolRefill:
    provider: str
    region: str
    target: int
    created: int = 0
    migrated: int = 0
    removed: int = 0  # failed, stale beyond repair, or over the target
    failed: int = 0
    seconds: float = 0.0
    stopped: str = ""  # why it made fewer than the target asked for
    skipped: bool = False  # another process was refilling this pool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def tenant_pool_refill(region: str | None = None) -> list[PoolRefill]:
    """Bring the pool of one region (or of every region) to its target, in this process: remove pool rows that
    failed, migrate pooled databases behind the latest schema, then make new ones one after another. Never makes
    more than the provider's quota allows (less the headroom). One refill per pool at a time; another finds it busy
    and returns at once."""
    provider = settings.TENANT_PROVIDER
    return [_pool_refill_region(provider, name) for name in ([region] if region else tenant_pool_regions())]


def _pool_refill_region(provider: str, region: str) -> PoolRefill:
    refill = PoolRefill(provider=provider, region=region, target=tenant_pool_target(region))
    started = time.perf_counter()
    with advisory_lock(f"tenant-pool:{provider}:{region}", wait=False) as acquired:
        if not acquired:
            refill.skipped = True
            return refill
        _pool_tidy(provider, region, refill)
        count = _pool_rows(provider, region).count()
        wanted = max(0, refill.target - count)
        room = _quota_room(provider)
        if room is not None and room < wanted:
            wanted = room
            refill.stopped = _quota_note(provider, refill.target - count)
            logger.warning("tenant pool %s/%s: %s", provider, region, refill.stopped)
        for _ in range(wanted):
            row = VectorDatabase.objects.create(provider=provider, region=region)
            try:
                made = vector_database_provision(row.id)
            except ProvisioningFailed:
                made = VectorDatabase.objects.get(id=row.id)
            if made.status == Status.POOLED:
                refill.created += 1
                continue
            refill.failed += 1
            try:
                vector_database_deprovision(row.id)
            except TRANSIENT_ERRORS:  # the provider is unreachable: the next refill removes the failed row
                logger.warning("tenant pool %s/%s: could not remove failed row %s", provider, region, row.tenant_key)
            refill.stopped = made.last_error or "provisioning failed"
            if made.last_error == QUOTA_MESSAGE:
                refill.stopped = "refill stopped: Neon refused another project (its project quota is reached)"
            logger.warning("tenant pool %s/%s: %s", provider, region, refill.stopped)
            break
    refill.seconds = time.perf_counter() - started
    return refill


def _pool_tidy(provider: str, region: str, refill: PoolRefill) -> None:
    """Before refilling: failed pool rows go; pooled databases behind the latest schema are migrated (those on
    another embedding model, or whose migration is refused, go); a pool above its target shrinks."""
    rows = _pool_rows(provider, region)
    for row in rows.filter(status=Status.FAILED):
        if _pool_row_take(row.id, (Status.FAILED,)):
            vector_database_deprovision(row.id)
            refill.removed += 1
    latest = latest_schema_version()
    for row in rows.filter(status=Status.POOLED).exclude(schema_version=latest):
        try:
            migrated = tenant_database_migrate(
                schema_target(row.tenant_key, decrypt_credentials(row.encrypted_credentials)["migration_dsn"])
            )
        except (BreakingMigrationRefused, *TRANSIENT_ERRORS):
            if _pool_row_take(row.id):  # unless a claim took it meanwhile (its rotation ends our session)
                logger.warning("pooled database %s could not be migrated; removing it", row.tenant_key)
                vector_database_deprovision(row.id)
                refill.removed += 1
            continue
        # Only while still pooled: a claim may have taken it meanwhile (the fleet migration records claimed rows).
        VectorDatabase.objects.filter(id=row.id, status=Status.POOLED).update(
            schema_version=migrated.schema_version, updated_at=timezone.now()
        )
        refill.migrated += 1
    other_model = rows.filter(status=Status.POOLED).exclude(
        embedding_model=settings.EMBEDDING_MODEL, embedding_dimensions=settings.EMBEDDING_DIMENSIONS
    )
    surplus = max(0, rows.count() - refill.target)
    doomed = list(other_model) + list(rows.filter(status=Status.POOLED).order_by("-id")[:surplus])
    for row in {row.id: row for row in doomed}.values():
        if _pool_row_take(row.id):
            vector_database_deprovision(row.id)
            refill.removed += 1


def _pool_row_take(vector_database_id: int, statuses: tuple[str, ...] = (Status.POOLED,)) -> bool:
    """Take a pool row (in one of `statuses`) out of the pool for erasure, unless a claim has it (the claim's lock
    or its result): erasure never reaches a database a tenant has claimed meanwhile."""
    with transaction.atomic():
        row = (
            VectorDatabase.objects.select_for_update(skip_locked=True)
            .filter(id=vector_database_id, status__in=statuses, workspace__isnull=True, claimed_at__isnull=True)
            .first()
        )
        if row is None:
            return False
        VectorDatabase.objects.filter(id=row.id).update(status=Status.DELETING, updated_at=timezone.now())
        return True


def tenant_pool_drain(region: str | None = None) -> int:
    """Erase every pooled database of the configured provider (of one region, or all); rows being made are left to
    finish (a later drain or reconcile takes them). Returns how many were erased."""
    rows = VectorDatabase.objects.filter(
        provider=settings.TENANT_PROVIDER, status=Status.POOLED, workspace__isnull=True, claimed_at__isnull=True
    )
    if region:
        rows = rows.filter(region=region)
    drained = 0
    for vector_database_id in list(rows.values_list("id", flat=True)):
        if _pool_row_take(vector_database_id):
            vector_database_deprovision(vector_database_id)
            drained += 1
    return drained
