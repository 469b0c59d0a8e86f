"""Tenant lifecycle: request, provision, retry, erase and reconcile tenant databases.

Views, Celery tasks and the `tenants` command all call these functions; signals only enqueue.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.dispatch import Signal
from django.utils import timezone

from tenants.crypto import decrypt_credentials, encrypt_credentials
from tenants.models import User, VectorDatabase
from tenants.provisioners import ProvisionedDatabase, ProvisioningError, QuotaExceeded, get_provisioner
from vectordb.connections import TenantTarget, get_registry
from vectordb.fleet import FleetMember, FleetOutcome, fleet_migrate
from vectordb.store import embedding_column_dimensions, embedding_dimension_change
from vectordb.schema import (
    BreakingMigrationRefused,
    EmbeddingModelMismatch,
    embedding_model_record,
    NotCompilable,
    latest_schema_version,
    migrate_tenant_database,
    migrate_tenant_database_fast,
)

logger = logging.getLogger(__name__)
Status = VectorDatabase.Status

# Sent while a tenant is erased, after its database is gone and before the account row is deleted, so apps that
# keep tenant files (documents) remove them without `tenants` importing those apps.
tenant_erasing = Signal()  # kwargs: tenant

TRANSIENT_ERRORS = (ProvisioningError, psycopg.Error, DatabaseError)
QUOTA_MESSAGE = "Silo has reached its limit of databases for now; our team has been told. Please try again later."
USER_FACING_PROVISIONING_ERROR = "Your database could not be created yet. Please try again in a minute."


class ProvisioningFailed(Exception):
    """Provisioning failed in a way a retry may fix (the task retries with back-off)."""


def _enqueue_provisioning(vector_database_id: int) -> None:
    from tenants.tasks import provision_vector_database

    transaction.on_commit(lambda: provision_vector_database.delay(vector_database_id))


def vector_database_request(tenant: User, region: str | None = None) -> VectorDatabase:
    """Register the tenant's database and enqueue its provisioning (idempotent: one row per tenant)."""
    vector_database, _created = VectorDatabase.objects.get_or_create(
        tenant=tenant,
        defaults={"provider": settings.TENANT_PROVIDER, "region": region or _default_region()},
    )
    if vector_database.status == Status.PENDING:
        _enqueue_provisioning(vector_database.id)
    return vector_database


def vector_database_retry(tenant: User) -> VectorDatabase:
    """The dashboard's retry button: a failed database goes back to pending and is provisioned again."""
    updated = VectorDatabase.objects.filter(tenant=tenant, status=Status.FAILED).update(
        status=Status.PENDING, last_error="", updated_at=timezone.now()
    )
    vector_database = VectorDatabase.objects.get(tenant=tenant)
    if updated:
        _enqueue_provisioning(vector_database.id)
    return vector_database


def _default_region() -> str:
    return settings.NEON_REGION if settings.TENANT_PROVIDER == "neon" else settings.TENANT_DEFAULT_REGION


class _TenantLock:
    """A session-level advisory lock in the main database: one lifecycle operation per tenant at a time."""

    def __init__(self, vector_database_id: int):
        self.key = zlib.crc32(f"silo-tenant-{vector_database_id}".encode())

    def __enter__(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [self.key])

    def __exit__(self, *exc):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])


def vector_database_provision(vector_database_id: int) -> VectorDatabase:
    """Create (or finish creating) the tenant's database and bring its schema to the latest version.

    Idempotent: a retried or re-delivered task finds what an earlier attempt made and completes it.
    """
    with _TenantLock(vector_database_id):
        vector_database = VectorDatabase.objects.get(id=vector_database_id)
        if vector_database.status in {Status.READY, Status.DELETING, Status.DELETED}:
            return vector_database
        VectorDatabase.objects.filter(id=vector_database_id).update(
            status=Status.PROVISIONING, attempts=vector_database.attempts + 1, updated_at=timezone.now()
        )
        vector_database.refresh_from_db()
        provisioner = get_provisioner(vector_database.provider)
        try:
            placed = provisioner.create(vector_database.tenant_key, vector_database.region or None)
            _store_location(vector_database, placed)
            if placed.schema_version and placed.schema_version == latest_schema_version():
                schema_version = placed.schema_version  # cloned from a current template: nothing to migrate
            else:
                schema_version = _migrate_new_database(vector_database.tenant_key, placed.migration_dsn)
            _prepare_embedding_column(placed.dsn)
            embedding_model_record(placed.dsn, settings.EMBEDDING_MODEL, settings.EMBEDDING_DIMENSIONS)
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
        VectorDatabase.objects.filter(id=vector_database_id).update(
            status=Status.READY,
            schema_version=schema_version,
            embedding_model=settings.EMBEDDING_MODEL,
            embedding_dimensions=settings.EMBEDDING_DIMENSIONS,
            last_error="",
            ready_at=timezone.now(),
            updated_at=timezone.now(),
        )
        vector_database.refresh_from_db()
        logger.info("tenant database %s ready on %s", vector_database.tenant_key, vector_database.server)
        return vector_database


def _migrate_new_database(tenant_key: str, dsn: str) -> str:
    """Bring a new tenant database to the latest schema; compiled SQL when possible (fast), else the executor."""
    try:
        return migrate_tenant_database_fast(tenant_key, dsn).schema_version
    except NotCompilable:
        return migrate_tenant_database(tenant_key, dsn).schema_version


def _prepare_embedding_column(dsn: str) -> None:
    """A new database's vector column has the dimension of the schema it was made from (a template migrated under
    another model, say): match it to the configured model while the table is still empty."""
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        if embedding_column_dimensions(connection) == settings.EMBEDDING_DIMENSIONS:
            return
        if connection.execute("SELECT EXISTS (SELECT 1 FROM embeddings)").fetchone()[0]:
            return  # holds chunks: `embedding_model_record` reports the mismatch, `reembed` fixes it
        connection.rollback()
        embedding_dimension_change(connection, settings.EMBEDDING_DIMENSIONS)


def _store_location(vector_database: VectorDatabase, placed: ProvisionedDatabase) -> None:
    vector_database.external_id = placed.external_id
    vector_database.server = placed.server
    vector_database.region = placed.region
    vector_database.encrypted_credentials = encrypt_credentials(
        {"dsn": placed.dsn, "migration_dsn": placed.migration_dsn}
    )
    vector_database.save(
        update_fields=["external_id", "server", "region", "encrypted_credentials", "updated_at"]
    )


def _mark_failed(vector_database: VectorDatabase, message: str) -> VectorDatabase:
    VectorDatabase.objects.filter(id=vector_database.id).update(
        status=Status.FAILED, last_error=message[:2000], updated_at=timezone.now()
    )
    vector_database.refresh_from_db()
    return vector_database


def vector_database_credentials(vector_database: VectorDatabase, refresh: bool = False) -> dict[str, str]:
    """The tenant's connection details, decrypted; `refresh` asks the provider for new ones and stores them."""
    if refresh and vector_database.external_id:
        placed = get_provisioner(vector_database.provider).dsn(vector_database.external_id, vector_database.server)
        _store_location(vector_database, placed)
    return decrypt_credentials(vector_database.encrypted_credentials)


def account_delete_request(tenant: User) -> None:
    """The user asked to delete their account: lock it now, erase everything in the background."""
    from tenants.tasks import erase_tenant

    User.objects.filter(id=tenant.id).update(is_active=False)
    VectorDatabase.objects.filter(tenant=tenant).exclude(status=Status.DELETED).update(
        status=Status.DELETING, updated_at=timezone.now()
    )
    tenant_id = tenant.id
    transaction.on_commit(lambda: erase_tenant.delay(tenant_id))


def tenant_erase(tenant_id: int) -> bool:
    """Drop the tenant's database (or Neon project), its documents and files, then the account. Idempotent."""
    tenant = User.objects.filter(id=tenant_id).first()
    vector_database = VectorDatabase.objects.filter(tenant_id=tenant_id).first()
    if vector_database is not None:
        vector_database_deprovision(vector_database.id)
    if tenant is None:
        return False
    tenant_erasing.send(sender=User, tenant=tenant)
    tenant.delete()
    logger.info("tenant %s erased", tenant_id)
    return True


def vector_database_deprovision(vector_database_id: int) -> VectorDatabase:
    with _TenantLock(vector_database_id):
        vector_database = VectorDatabase.objects.get(id=vector_database_id)
        if vector_database.status == Status.DELETED:
            return vector_database
        VectorDatabase.objects.filter(id=vector_database_id).update(status=Status.DELETING, updated_at=timezone.now())
        get_registry().close_tenant(vector_database.tenant_key)
        if vector_database.external_id:
            get_provisioner(vector_database.provider).delete(vector_database.external_id, vector_database.server)
        VectorDatabase.objects.filter(id=vector_database_id).update(
            status=Status.DELETED,
            encrypted_credentials="",
            tenant=None,
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
    fixed: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.orphans or self.missing or self.stuck)


def tenants_reconcile(apply: bool = False, stuck_after_seconds: int = 600) -> ReconcileReport:
    """Compare the registry with what the provider really has; with `apply`, delete orphans and re-provision."""
    provisioner = get_provisioner()
    existing = set(provisioner.list_databases())
    live_rows = VectorDatabase.objects.filter(provider=provisioner.name).exclude(status=Status.DELETED)
    known = {(row.server, row.external_id) for row in live_rows if row.external_id}
    report = ReconcileReport()
    report.orphans = sorted(existing - known)
    for row in live_rows:
        if row.status == Status.READY and (row.server, row.external_id) not in existing:
            report.missing.append(row.tenant_key)
        elif row.status in {Status.PENDING, Status.PROVISIONING} and (
            timezone.now() - row.updated_at
        ).total_seconds() > stuck_after_seconds:
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
    return report


def fleet_members(tenant_email: str | None = None) -> list[FleetMember]:
    """Every ready tenant database (or one tenant's), with credentials that may change its schema."""
    rows = VectorDatabase.objects.filter(status=Status.READY).select_related("tenant").order_by("id")
    if tenant_email:
        rows = rows.filter(tenant__email__iexact=tenant_email.strip())
    return [
        FleetMember(
            key=row.tenant_key,
            label=row.tenant.email if row.tenant else row.tenant_key,
            dsn=decrypt_credentials(row.encrypted_credentials)["migration_dsn"],
        )
        for row in rows
    ]


def tenants_migrate(
    members: list[FleetMember],
    jobs: int,
    allow_breaking: bool = False,
    on_done: Callable[[FleetOutcome], None] | None = None,
) -> list[FleetOutcome]:
    """Migrate the fleet, record each tenant's schema version, then bring the new-tenant template up to date."""

    def record(outcome: FleetOutcome) -> None:
        if outcome.ok:
            VectorDatabase.objects.filter(tenant_key=outcome.member.key).update(
                schema_version=outcome.schema_version, updated_at=timezone.now()
            )
        if on_done:
            on_done(outcome)

    outcomes = fleet_migrate(members, jobs=jobs, allow_breaking=allow_breaking, on_done=record)
    provisioner = get_provisioner()
    if hasattr(provisioner, "template_refresh"):  # new tenants are cloned from it: same version as the fleet
        try:
            provisioner.template_refresh(allow_breaking=allow_breaking)
        except BreakingMigrationRefused:
            logger.warning("tenant template left at its version: the pending migrations are destructive")
    return outcomes


class TenantDatabaseNotReady(Exception):
    """The tenant's database is not ready yet (provisioning, failed or erased)."""

    def __init__(self, status: str):
        self.status = status
        super().__init__(f"tenant database is {status}")


def tenant_target(tenant: User) -> TenantTarget:
    """How `vectordb` reaches this tenant's database. Credentials are decrypted once per process (cached there)."""
    vector_database = VectorDatabase.objects.filter(tenant=tenant).first()
    if vector_database is None or vector_database.status != Status.READY:
        raise TenantDatabaseNotReady(vector_database.status if vector_database else "missing")
    vector_database_id = vector_database.id

    def resolve_dsn(refresh: bool) -> str:
        row = VectorDatabase.objects.get(id=vector_database_id)
        return vector_database_credentials(row, refresh=refresh)["dsn"]

    return TenantTarget(key=vector_database.tenant_key, resolve_dsn=resolve_dsn)
