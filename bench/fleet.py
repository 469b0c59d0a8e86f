"""Fleet: how the operator's figures grow from 100 to 1,000 real tenant databases on one server.

For each size (100 and 1,000; quick: 20 and 100), from an empty fleet: provisioning with PROVISIONING_JOBS threads
(databases per second), disk per empty tenant (pg_database_size), `migrate_tenants --plan` and a no-op
`migrate_tenants` (both decided from the registry: no tenant connection), a real migration across all of them with
`--jobs` (the test migration package's 0003 adds a column), `tenants reconcile` and `tenants list`. The README's
"growing past one machine" table extrapolates these to 100,000 tenants across servers. The fleet and the template
are dropped afterwards.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test.utils import override_settings

from bench.common import admin_dsn, create_tenants, drop_database, progress, remove_tenants, stopwatch
from bench.framework import Target
from tenants import services
from tenants.models import MigrationRun, VectorDatabase
from tenants.provisioners import get_provisioner
from tenants.provisioners.postgres import DATABASE_PREFIX, TEMPLATE_DATABASE

TARGETS = [
    Target("plan_seconds_largest", at_most=1.0, unit=" s", label="plan at the largest size"),
    Target("noop_migrate_seconds_largest", at_most=1.0, unit=" s", label="no-op migrate at the largest size"),
]

SIZES, QUICK_SIZES = (100, 1000), (20, 100)
PREFIX = "bench-fleetsize"
PROVISIONING_JOBS = 4
FLEET_MIGRATIONS = {"vectordb": "tests.vectordb.fleet_migrations"}
BASE_MIGRATION = "0002_embedding_created_at_default"


def run(quick: bool) -> dict:
    sizes = QUICK_SIZES if quick else SIZES
    result: dict = {
        "sizes": list(sizes), "provisioning_jobs": PROVISIONING_JOBS, "migration_jobs": settings.TENANT_MIGRATION_JOBS,
    }  # fmt: skip
    for size in sizes:
        for name, value in _measure(size).items():
            result[f"{name}_{size}"] = value
    largest = sizes[-1]
    result["plan_seconds_largest"] = result[f"plan_seconds_{largest}"]
    result["noop_migrate_seconds_largest"] = result[f"noop_migrate_seconds_{largest}"]
    return result


def _measure(size: int) -> dict:
    remove_tenants(PREFIX)
    _drop_template()
    try:
        rows = create_tenants(PREFIX, size, provider="postgres")
        progress(f"provisioning {size} tenant databases, {PROVISIONING_JOBS} at a time")
        with stopwatch() as provisioning:
            with ThreadPoolExecutor(PROVISIONING_JOBS) as pool:
                statuses = list(pool.map(_provision, [row.id for row in rows]))
        if statuses.count(VectorDatabase.Status.READY) != size:
            raise RuntimeError(f"{size - statuses.count(VectorDatabase.Status.READY)} tenants not provisioned")
        disk = _tenant_disk_bytes()
        with stopwatch() as plan:
            plan_out = _command("migrate_tenants", "--plan")
        with stopwatch() as noop:
            _command("migrate_tenants")
        noop_run = MigrationRun.objects.order_by("-id").first()
        with override_settings(MIGRATION_MODULES=FLEET_MIGRATIONS):
            # The fleet is at the real schema; the test package's 0003 is the one migration every tenant lacks.
            keys = [row.tenant_key for row in rows]
            VectorDatabase.objects.filter(tenant_key__in=keys).update(schema_version=BASE_MIGRATION)
            progress(f"a real migration (add a column) across {size} tenants")
            with stopwatch() as migration:
                _command("migrate_tenants", "--jobs", str(settings.TENANT_MIGRATION_JOBS))
        with stopwatch() as reconcile:
            report = services.tenants_reconcile()
        with stopwatch() as listing:
            _command("tenants", "list")
    finally:
        with stopwatch() as removal:
            dropped = remove_tenants(PREFIX)
            _drop_template()
        progress(f"dropped {dropped} tenant databases in {removal.seconds:.1f}s")
    if plan_out.strip() != "nothing pending" or noop_run is None or noop_run.tenants_to_migrate:
        raise RuntimeError(f"the fleet was not at the latest schema after provisioning: {plan_out[:200]}")
    return {
        "provisioning_seconds": round(provisioning.seconds, 1),
        "databases_per_second": round(size / provisioning.seconds, 1),
        "disk_mb_per_tenant": round(disk / size / 1e6, 2),
        "plan_seconds": round(plan.seconds, 3),
        "noop_migrate_seconds": round(noop.seconds, 3),
        "migration_seconds": round(migration.seconds, 1),
        "reconcile_seconds": round(reconcile.seconds, 2),
        "reconcile_orphans_or_missing": len(report.orphans) + len(report.missing),
        "list_seconds": round(listing.seconds, 2),
    }


def _provision(row_id: int) -> str:
    try:
        return services.vector_database_provision(row_id).status
    finally:
        connections.close_all()


def _command(*arguments: str) -> str:
    out = io.StringIO()
    call_command(*arguments, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _tenant_disk_bytes() -> int:
    with psycopg.connect(admin_dsn()) as admin:
        (size,) = admin.execute(
            "SELECT coalesce(sum(pg_database_size(datname)), 0)::bigint FROM pg_database WHERE starts_with(datname, %s)",
            [DATABASE_PREFIX],
        ).fetchone() or (0,)
    return int(size)


def _drop_template() -> None:
    drop_database(TEMPLATE_DATABASE)
    get_provisioner("postgres")._templates_ready.clear()
