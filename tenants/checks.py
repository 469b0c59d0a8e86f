"""`manage.py check`: what the fleet's settings add up to across processes."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

# The server keeps a few for superusers; operators' commands (migrations, verify) need theirs.
RESERVED_CONNECTIONS = 3


def tenant_connection_total() -> int:
    """The most connections every app process together may open to one administered tenant server."""
    return settings.SILO_APP_PROCESSES * settings.TENANT_POOL_MAX_TOTAL_CONNECTIONS + settings.TENANT_MIGRATION_JOBS


@register()
def tenant_connections_fit_the_servers(app_configs, **kwargs) -> list[CheckMessage]:
    if settings.TENANT_PROVIDER != "postgres":
        return []  # Neon: every tenant has a compute and a pooler of its own
    total = tenant_connection_total()
    room = settings.TENANT_SERVER_MAX_CONNECTIONS - RESERVED_CONNECTIONS
    if total <= room:
        return []
    return [
        Error(
            f"{settings.SILO_APP_PROCESSES} processes x {settings.TENANT_POOL_MAX_TOTAL_CONNECTIONS} tenant connections "
            f"+ {settings.TENANT_MIGRATION_JOBS} migration jobs = {total}, more than the {room} a tenant server "
            f"takes (TENANT_SERVER_MAX_CONNECTIONS={settings.TENANT_SERVER_MAX_CONNECTIONS}, "
            f"{RESERVED_CONNECTIONS} reserved)",
            hint="Lower TENANT_POOL_MAX_TOTAL_CONNECTIONS, raise the servers' max_connections, or put PgBouncer "
            "in front of them and set TENANT_SERVER_MAX_CONNECTIONS to its pool size.",
            id="silo.E001",
        )
    ]
