"""Fleet decisions from the registry: `migrate_tenants --plan` and a no-op `migrate_tenants` over synthetic rows.

10,000 registry rows (2,000 quick), all ready and recorded at the latest tenant schema, whose credentials point at a
port where nothing listens: 10,000 real databases would need about 79 GB of disk, and a command that contacted a
single tenant would fail, so a passing run is also the proof that none was contacted. Timed: the two commands as an
operator runs them (including the run record and the template check of the no-op migration), then the plan again with
every tenant one migration behind (all listed, still without a connection). Rows and users are removed afterwards.
"""

from __future__ import annotations

import io

from django.core.management import call_command
from django.db import transaction

from bench.common import EMAIL_DOMAIN, bench_email, progress, stopwatch
from bench.framework import Target
from tenants.crypto import encrypt_credentials
from tenants.models import MigrationRun, User, VectorDatabase, Workspace, new_workspace_slug
from vectordb.schema import latest_schema_version, tenant_migration_order

TARGETS = [
    Target("plan_seconds", at_most=1.0, unit=" s", label="plan, 10,000 tenants"),
    Target("noop_migrate_seconds", at_most=1.0, unit=" s", label="no-op migrate, 10,000 tenants"),
    Target("plan_all_behind_seconds", at_most=1.0, unit=" s", label="plan, 10,000 tenants one migration behind"),
    Target("tenants_contacted", at_most=0, label="tenant connections"),
]

TENANTS, QUICK_TENANTS = 10_000, 2_000
PREFIX = "bench-catalog"
NOWHERE = "postgresql://nobody:nothing@127.0.0.1:1/nowhere?connect_timeout=2"


def run(quick: bool) -> dict:
    count = QUICK_TENANTS if quick else TENANTS
    _remove()
    try:
        progress(f"writing {count} synthetic registry rows (untimed)")
        _create(count)
        with stopwatch() as plan:
            plan_out = _command("--plan")
        if plan_out.strip() != "nothing pending":
            raise RuntimeError(f"the plan should find nothing pending, said: {plan_out[:200]}")
        with stopwatch() as noop:
            migrate_out = _command()
        run_record = MigrationRun.objects.order_by("-id").first()
        if run_record is None or run_record.tenants_in_registry < count:
            raise RuntimeError(f"no run record for the no-op migration: {migrate_out[-300:]}")
        # After a deploy that adds a migration: every tenant is behind, and the plan still reads only the registry.
        order = tenant_migration_order()
        VectorDatabase.objects.filter(server="nowhere").update(schema_version=order[-2] if len(order) > 1 else "")
        with stopwatch() as behind:
            behind_lines = _command("--plan").splitlines()
        if len(behind_lines) < count:
            raise RuntimeError(f"the plan should list {count} tenants behind, listed {len(behind_lines)}")
    finally:
        _remove()
    return {
        "tenants": count,
        "plan_seconds": round(plan.seconds, 3),
        "noop_migrate_seconds": round(noop.seconds, 3),
        "plan_all_behind_seconds": round(behind.seconds, 3),
        "tenants_contacted": run_record.tenants_to_migrate,
        "plan_microseconds_per_tenant": round(plan.seconds / count * 1e6, 1),
    }


def _command(*arguments: str) -> str:
    out = io.StringIO()
    call_command("migrate_tenants", *arguments, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _create(count: int) -> None:
    credentials = encrypt_credentials({"dsn": NOWHERE, "migration_dsn": NOWHERE})
    version = latest_schema_version()
    with transaction.atomic():
        users = User.objects.bulk_create(
            [User(email=bench_email(PREFIX, number), password="!") for number in range(count)], batch_size=2000
        )
        workspaces = Workspace.objects.bulk_create(
            [
                Workspace(name=user.email, slug=new_workspace_slug(user.email.split("@")[0]), owner=user, personal=True)
                for user in users
            ],
            batch_size=2000,
        )
        VectorDatabase.objects.bulk_create(
            [
                VectorDatabase(
                    workspace=workspace,
                    provider="postgres",
                    server="nowhere",
                    external_id=f"silo_t_catalog{number:05d}",
                    status=VectorDatabase.Status.READY,
                    encrypted_credentials=credentials,
                    schema_version=version,
                )
                for number, workspace in enumerate(workspaces)
            ],
            batch_size=2000,
        )


def _remove() -> None:
    users = User.objects.filter(email__startswith=f"{PREFIX}-", email__endswith=f"@{EMAIL_DOMAIN}")
    VectorDatabase.objects.filter(workspace__owner__in=users).delete()
    Workspace.objects.filter(owner__in=users).delete()
    users.delete()
