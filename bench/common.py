"""Helpers shared by sections: bench tenants (users + registry rows), clean-up, statistics, a stopwatch.

Imported by sections only, after `bench/__main__.py` has set Django up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psycopg
from django.conf import settings
from django.db import transaction
from psycopg import sql

from tenants import services
from tenants.models import Membership, User, VectorDatabase, Workspace, new_workspace_slug

Status = VectorDatabase.Status
EMAIL_DOMAIN = "bench.invalid"


def admin_dsn() -> str:
    """Superuser DSN of the server that holds tenant databases (the benchmark's embedded server)."""
    return settings.TENANT_POSTGRES_SERVERS[0]["admin_url"]


def bench_email(prefix: str, number: int) -> str:
    return f"{prefix}-{number:05d}@{EMAIL_DOMAIN}"


def create_tenants(prefix: str, count: int, provider: str = "postgres") -> list[VectorDatabase]:
    """`count` users with a pending registry row each. No password hashing: that is sign-up's cost, not ours."""
    with transaction.atomic():
        users = User.objects.bulk_create(
            [User(email=bench_email(prefix, number), password="!") for number in range(count)]
        )
        workspaces = Workspace.objects.bulk_create(
            [
                Workspace(name=user.email, slug=new_workspace_slug(user.email.split("@")[0]), owner=user, personal=True)
                for user in users
            ]
        )
        Membership.objects.bulk_create(
            [
                Membership(workspace=workspace, user=workspace.owner, role=Membership.Role.OWNER)
                for workspace in workspaces
            ]
        )
        rows = VectorDatabase.objects.bulk_create(
            [
                VectorDatabase(workspace=workspace, provider=provider, region=_region(provider))
                for workspace in workspaces
            ]
        )
    return rows


def _region(provider: str) -> str:
    return settings.TENANT_DEFAULT_REGION if provider == "postgres" else ""


def remove_tenants(prefix: str) -> int:
    """Deprovision every tenant database of this prefix's users (including leftovers of a crashed run), then delete
    the users and the registry rows. Returns how many databases were dropped."""
    users = User.objects.filter(email__startswith=f"{prefix}-", email__endswith=f"@{EMAIL_DOMAIN}")
    row_ids = list(VectorDatabase.objects.filter(workspace__owner__in=users).values_list("id", flat=True))
    dropped = 0
    for row_id in row_ids:
        if VectorDatabase.objects.filter(id=row_id).exclude(status=Status.DELETED).exists():
            services.vector_database_deprovision(row_id)
            dropped += 1
    VectorDatabase.objects.filter(id__in=row_ids).delete()
    Workspace.objects.filter(owner__in=users).delete()  # their documents and memberships go with them
    users.delete()
    return dropped


def drop_database(name: str) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def percentile(values: Iterable[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), `fraction` in [0, 1]."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 1)


class Stopwatch:
    def __init__(self) -> None:
        self.seconds = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    watch = Stopwatch()
    started = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - started


def progress(message: str) -> None:
    print(f"  {message}", flush=True)
