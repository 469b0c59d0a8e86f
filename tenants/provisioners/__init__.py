"""Providers that create and delete tenant databases, chosen by settings.TENANT_PROVIDER."""

from __future__ import annotations

from django.conf import settings

from tenants.provisioners.base import (
    DatabaseMissing,
    ProvisionedDatabase,
    Provisioner,
    ProvisioningError,
    QuotaExceeded,
)


def get_provisioner(name: str | None = None) -> Provisioner:
    name = name or settings.TENANT_PROVIDER
    if name == "postgres":
        from tenants.provisioners.postgres import PostgresProvisioner

        return PostgresProvisioner.from_settings()
    if name == "neon":
        from tenants.provisioners.neon import NeonProvisioner

        return NeonProvisioner.from_settings()
    raise ValueError(f"unknown tenant database provider {name!r}")


__all__ = [
    "DatabaseMissing",
    "ProvisionedDatabase",
    "Provisioner",
    "ProvisioningError",
    "QuotaExceeded",
    "get_provisioner",
]
