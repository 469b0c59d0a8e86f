"""Fleet migration: `migrate_tenants` applying one new migration, against a naive sequential `migrate` loop.

One fleet, provisioned untimed at the real schema. With the test migration package (0003 adds a column) in place:
1. the baseline, timed: for each tenant, register a connection alias and `call_command("migrate", "vectordb")`,
   one after another, as a hand-written script would;
2. rolled back to 0002 per tenant, untimed;
3. ours, timed: `tenants_migrate(fleet_members(), jobs=settings.TENANT_MIGRATION_JOBS)`, which includes bringing the
   template up to date afterwards, as the `migrate_tenants` command does;
4. rolled back, then the same with compiling switched off (every tenant through Django's executor, in the same
   threads): what the compiled SQL is worth (`compiled_speedup`), the reason vectordb/schema/compiled.py exists.
Both apply exactly the same migration to the same databases; steps 1-3 run REPETITIONS times, interleaved, and the
best time of each is reported (the runs are kept too). The fleet and the template are dropped afterwards.
"""

from __future__ import annotations

from unittest import mock

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test.utils import override_settings

from bench.common import (
    create_tenants,
    drop_database,
    progress,
    remove_tenants,
    stopwatch,
)
from bench.framework import Target
from tenants import services
from tenants.models import VectorDatabase
from tenants.provisioners import get_provisioner
from tenants.provisioners.postgres import TEMPLATE_DATABASE
from vectordb.dsn import Dsn
from vectordb.fleet import FleetMember
from vectordb.routers import TENANT_ALIAS_PREFIX
from vectordb.schema.compiled import NotCompilable

TARGETS = [Target("speedup", at_least=3, unit="x", label="speedup vs sequential")]

TENANTS, QUICK_TENANTS = 300, 60
PREFIX = "bench-fleet"
FLEET_MIGRATIONS = {"vectordb": "tests.vectordb.fleet_migrations"}
BASE_MIGRATION = "0002_embedding_created_at_default"
NEW_MIGRATION = "0003_embedding_language"
NEW_COLUMN = "language"
REPETITIONS = 2  # each: baseline, roll back, ours (best of each reported)


def run(quick: bool) -> dict:
    count = QUICK_TENANTS if quick else TENANTS
    remove_tenants(PREFIX)
    _drop_template()  # a crashed earlier run may have left it at the test schema
    try:
        members = _provision_fleet(count)
        jobs = settings.TENANT_MIGRATION_JOBS
        sequential_runs, concurrent_runs, executor_runs = [], [], []
        with override_settings(MIGRATION_MODULES=FLEET_MIGRATIONS):
            for repetition in range(1, REPETITIONS + 1):
                # Interleaved and best-of: a load spike from elsewhere on the machine hits one run, not the figure.
                progress(f"[{repetition}/{REPETITIONS}] baseline: `migrate vectordb` on {count} tenants in turn")
                with stopwatch() as sequential:
                    _naive_migrate(members)
                sequential_runs.append(sequential.seconds)
                _expect_column(members, present=True)
                progress("rolling the fleet back to 0002 (untimed)")
                _naive_migrate(members, BASE_MIGRATION)
                _expect_column(members, present=False)
                progress(f"[{repetition}/{REPETITIONS}] migrate_tenants with {jobs} jobs")
                with stopwatch() as concurrent:
                    outcomes = services.tenants_migrate(members, jobs=jobs).outcomes
                concurrent_runs.append(concurrent.seconds)
                failed = [outcome for outcome in outcomes if not outcome.ok or outcome.applied != [NEW_MIGRATION]]
                if failed:
                    raise RuntimeError(f"{len(failed)} tenants not migrated as expected, e.g. {failed[0]}")
                _expect_column(members, present=True)
                _naive_migrate(members, BASE_MIGRATION)
                progress(f"[{repetition}/{REPETITIONS}] migrate_tenants with {jobs} jobs, Django's executor per tenant")
                with mock.patch("vectordb.schema.compile_migrations", side_effect=_not_compilable):
                    with stopwatch() as executor:
                        executed = services.tenants_migrate(members, jobs=jobs).outcomes
                executor_runs.append(executor.seconds)
                if [outcome for outcome in executed if not outcome.ok or outcome.applied != [NEW_MIGRATION]]:
                    raise RuntimeError("tenants not migrated as expected through Django's executor")
                _expect_column(members, present=True)
                if repetition < REPETITIONS:
                    _naive_migrate(members, BASE_MIGRATION)
    finally:
        with stopwatch() as removal:
            dropped = remove_tenants(PREFIX)
            _drop_template()
        progress(f"dropped {dropped} tenant databases and the template in {removal.seconds:.1f}s")
    per_tenant = sorted(outcome.seconds for outcome in outcomes)
    return {
        "tenants": count,
        "seconds": round(min(concurrent_runs), 2),
        "sequential_seconds": round(min(sequential_runs), 2),
        "speedup": round(min(sequential_runs) / min(concurrent_runs), 2),
        "executor_threads_seconds": round(min(executor_runs), 2),
        "compiled_speedup": round(min(executor_runs) / min(concurrent_runs), 2),
        "runs_seconds": [round(value, 2) for value in concurrent_runs],
        "runs_sequential_seconds": [round(value, 2) for value in sequential_runs],
        "jobs": jobs,
        "per_tenant_p50_ms": round(per_tenant[len(per_tenant) // 2] * 1000, 1),
    }


def _not_compilable(names: tuple[str, ...], with_recorder: bool) -> None:
    raise NotCompilable(names[0])


def _provision_fleet(count: int) -> list[FleetMember]:
    rows = create_tenants(PREFIX, count, provider="postgres")
    progress(f"provisioning {count} tenant databases (untimed)")
    with stopwatch() as watch:
        for number, row in enumerate(rows, 1):
            if services.vector_database_provision(row.id).status != VectorDatabase.Status.READY:
                raise RuntimeError(f"tenant {row.tenant_key} could not be provisioned")
            if number % 100 == 0:
                progress(f"  {number}/{count}")
    progress(f"provisioned in {watch.seconds:.1f}s")
    keys = {row.tenant_key for row in rows}
    members = [member for member in services.fleet_members() if member.key in keys]
    if len(members) != count:
        raise RuntimeError(f"expected {count} ready tenant databases, found {len(members)}")
    return members


def _naive_migrate(members: list[FleetMember], target: str | None = None) -> None:
    """What a hand-written script does: one tenant after another, a connection alias each, Django's migrate."""
    arguments = ["vectordb"] + ([target] if target else [])
    for member in members:
        alias = f"{TENANT_ALIAS_PREFIX}bench_{member.key}"
        connections.settings[alias] = connections.configure_settings(
            {"default": connections.settings["default"], alias: Dsn.parse(_dsn(member)).django_settings()}
        )[alias]
        try:
            call_command("migrate", *arguments, database=alias, verbosity=0, interactive=False)
        finally:
            connections[alias].close()
            del connections[alias]
            del connections.settings[alias]
    if target:  # behind the registry's back: tell it, or the catalog-driven migration would skip these tenants
        VectorDatabase.objects.filter(tenant_key__in=[member.key for member in members]).update(schema_version=target)


def _expect_column(members: list[FleetMember], present: bool) -> None:
    wrong = []
    for member in members:
        with psycopg.connect(_dsn(member)) as connection:
            found = connection.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_name = 'embeddings' AND column_name = %s",
                [NEW_COLUMN],
            ).fetchone()
        if bool(found) != present:
            wrong.append(member.key)
    if wrong:
        raise RuntimeError(f"{len(wrong)} tenants {'lack' if present else 'still have'} the {NEW_COLUMN} column")


def _dsn(member: FleetMember) -> str:
    return member.target.resolve_dsn(False)


def _drop_template() -> None:
    # The template follows the fleet to the test schema: drop it so the next provisioning rebuilds it at the real one.
    drop_database(TEMPLATE_DATABASE)
    get_provisioner("postgres")._templates_ready.clear()
