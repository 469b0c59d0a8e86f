"""The interface every tenant database provider implements. Every call is idempotent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class ProvisioningError(Exception):
    """The provider could not finish; safe to retry later (the call is idempotent)."""


class DatabaseMissing(ProvisioningError):
    """The database (or Neon project) the registry points at is not on its server any more."""


class QuotaExceeded(ProvisioningError):
    """The provider refuses to create more databases (e.g. Neon's PROJECTS_LIMIT_EXCEEDED). Retrying will not help."""


@dataclass(frozen=True)
class ProvisionedDatabase:
    """Where a tenant's database is and how to reach it. `dsn`/`migration_dsn` hold credentials: never log them."""

    external_id: str  # database name (postgres provider) or Neon project id
    region: str
    server: str  # administered server's name, or "neon"
    dsn: str  # for application traffic (Neon: the pooled endpoint)
    migration_dsn: str  # direct connection, for schema migrations
    new_database: bool = False  # made empty by this very call: no schema in it yet
    # Neon: the branch whose role the credentials are for, kept with them so a claim's password reset needs no
    # look-up (other providers: empty).
    branch_id: str = ""
    # What the provider answered about the database, for callers that need more than where it is (Neon: the
    # project, with its period counters; other providers: empty).
    details: dict = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:  # keep credentials out of logs and tracebacks
        return f"ProvisionedDatabase(external_id={self.external_id!r}, region={self.region!r}, server={self.server!r})"


class Provisioner(Protocol):
    name: str

    def create(
        self, tenant_key: str, region: str | None = None, *, first_attempt: bool = False, pooled: bool = False
    ) -> ProvisionedDatabase:
        """Create the tenant's database, or find the one a previous attempt created; pgvector installed or installable
        by the database's owner (the tenant schema's first migration installs it). `first_attempt`: no earlier
        attempt for this tenant key can have created anything, so a provider may skip looking for it. `pooled`: for
        the warm pool, named as such until a claim names it for its tenant."""

    def credentials_rotate(
        self,
        external_id: str,
        server: str,
        tenant_key: str,
        *,
        current: dict[str, str] | None = None,
        quota: dict[str, int] | None = None,
    ) -> ProvisionedDatabase:
        """After a claim from the warm pool: a new password (the old one stops working and its sessions end) and
        the database named for its tenant. `current`: the credentials the registry holds (a provider may take what
        does not change from them instead of asking). `quota`: the tenant's plan's quota, for a provider that
        enforces one (Neon's `settings.quota`), set in the same step. Idempotent; raises DatabaseMissing when the
        database is gone."""

    def locate(self, tenant_key: str) -> tuple[str, str] | None:
        """(server, external_id) of the database an attempt for this tenant key made, if there is one: for erasing a
        tenant whose provisioning died before the registry learnt where its database was."""

    def delete(self, external_id: str, server: str) -> None:
        """Drop the tenant's database (and role / project). Deleting what is already gone succeeds."""

    def dsn(self, external_id: str, server: str) -> ProvisionedDatabase:
        """Fresh connection details for an existing database (e.g. after a failed login)."""

    def list_databases(self) -> list[tuple[str, str]]:
        """(server, external_id) of every tenant database the provider has, for reconciliation."""
