"""Reads about tenants and their databases."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import Count

from tenants.models import TenantServer, User, VectorDatabase, Workspace
from tenants.provisioners import ProvisioningError
from tenants.services import Tenant, default_region, tenant_workspace, vector_database_target
from vectordb.connections import database_size_bytes, get_registry


def user_by_email(email: str) -> User | None:
    """The user with this email, case and surrounding spaces ignored (emails are unique case-insensitively)."""
    return User.objects.filter(email__iexact=email.strip()).first()


def vector_database_for_tenant(tenant: Tenant) -> VectorDatabase | None:
    return VectorDatabase.objects.filter(workspace=tenant_workspace(tenant)).first()


def workspace_region(workspace_id: int) -> str:
    """The region the workspace's data lives in: its database's, else where a new one would go."""
    region = VectorDatabase.objects.filter(workspace_id=workspace_id).values_list("region", flat=True).first()
    return region or default_region()


def vector_database_embedding_model(tenant: Tenant) -> tuple[str, int | None]:
    """The embedding model and dimension the registry records for the workspace's database ("", None: none yet)."""
    recorded = VectorDatabase.objects.filter(workspace=tenant_workspace(tenant)).values_list(
        "embedding_model", "embedding_dimensions"
    )
    return recorded.first() or ("", None)


def vector_database_status_payload(vector_database: VectorDatabase | None) -> dict:
    """What the browser may know about the tenant's database: never credentials or internal errors."""
    if vector_database is None:
        return {"status": "missing", "label": "Not requested", "busy": False, "can_retry": False}
    Status = VectorDatabase.Status
    labels = {
        Status.PENDING: "Queued",
        Status.PROVISIONING: "Provisioning",
        Status.READY: "Ready",
        Status.FAILED: "Failed",
        Status.DELETING: "Deleting",
        Status.DELETED: "Deleted",
        Status.POOLED: "Pooled",
    }
    return {
        "status": vector_database.status,
        "label": labels[Status(vector_database.status)],
        "busy": vector_database.is_busy,
        "can_retry": vector_database.status == Status.FAILED,
        "provider": vector_database.provider,
        "region": vector_database.region,
        "schema_version": vector_database.schema_version,
        "embedding_model": vector_database.embedding_model,
        "error": vector_database.last_error if vector_database.status == Status.FAILED else "",
    }


SIZE_READ_TIMEOUT_SECONDS = 2.0


def vector_database_size_bytes(vector_database: VectorDatabase) -> int | None:
    """On-disk size of a ready tenant database, asked over the registry with the tenant's own credentials."""
    if vector_database.status != VectorDatabase.Status.READY:
        return None
    # A figure on the dashboard: not worth waiting long for a connection when the tenant's are all busy.
    with get_registry().connection(
        vector_database_target(vector_database), timeout=SIZE_READ_TIMEOUT_SECONDS
    ) as connection:
        return database_size_bytes(connection)


def vector_database_summary(vector_database: VectorDatabase, with_size: bool = False) -> dict:
    """For operators (the `tenants` command): where the database is, never its credentials."""
    workspace = vector_database.workspace
    summary = {
        "workspace": workspace_summary(workspace) if workspace else None,
        "email": workspace.owner.email if workspace else None,
        "tenant_key": vector_database.tenant_key,
        "provider": vector_database.provider,
        "server": vector_database.server,
        "region": vector_database.region,
        "status": vector_database.status,
        "external_id": vector_database.external_id,
        "schema_version": vector_database.schema_version,
        "embedding_model": vector_database.embedding_model,
        "embedding_dimensions": vector_database.embedding_dimensions,
        "last_error": vector_database.last_error,
        "claimed_at": vector_database.claimed_at,
        # A restore or move in progress, and its step (tenants.archives).
        "operation": f"{vector_database.operation}: {vector_database.operation_step}"
        if vector_database.operation
        else "",
    }
    if with_size:
        summary["size_bytes"] = vector_database_size_bytes(vector_database)
    return summary


def workspace_summary(workspace: Workspace) -> dict:
    """How operators and the pages name a workspace."""
    return {"slug": workspace.slug, "name": workspace.name, "owner": workspace.owner.email}


def workspace_by_slug_or_email(identifier: str) -> Workspace | None:
    """A workspace by its slug, or a person's personal workspace by their email (commands take either)."""
    identifier = identifier.strip()
    if "@" in identifier:
        user = user_by_email(identifier)
        return Workspace.objects.personal_for(user) if user is not None else None
    return Workspace.objects.select_related("owner").filter(slug=identifier.lower()).first()


@dataclass(frozen=True)
class ServerUsage:
    name: str
    region: str
    draining: bool
    tenants: int  # live registry rows placed on it
    size_bytes: int | None  # its tenant databases on disk (None: unreachable)
    max_tenants: int | None
    error: str = ""  # why it could not be reached

    @property
    def free(self) -> int | None:
        return None if self.max_tenants is None else max(0, self.max_tenants - self.tenants)

    @property
    def state(self) -> str:
        return "DOWN" if self.error else "draining" if self.draining else "open"


def tenant_servers() -> list[ServerUsage]:
    """Every administered server: its tenants by the registry, their size on disk and the room left."""
    if not settings.TENANT_POSTGRES_SERVERS:
        return []
    from tenants.provisioners.postgres import PostgresProvisioner

    provisioner = PostgresProvisioner.from_settings()
    placed = dict(
        VectorDatabase.objects.filter(provider="postgres")
        .exclude(status=VectorDatabase.Status.DELETED)
        .values_list("server")
        .annotate(count=Count("id"))
        .values_list("server", "count")
    )
    draining = set(TenantServer.objects.filter(draining=True).values_list("name", flat=True))
    usage = []
    for server in provisioner.servers.values():
        size, error = None, ""
        try:
            _count, size = provisioner.server_usage(server.name)
        except ProvisioningError as failure:
            error = str(failure)
        usage.append(
            ServerUsage(
                name=server.name,
                region=server.region,
                draining=server.name in draining,
                tenants=placed.get(server.name, 0),
                size_bytes=size,
                max_tenants=server.max_tenants,
                error=error,
            )
        )
    return usage
