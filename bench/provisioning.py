"""Provisioning latency: `vector_database_provision` end to end, postgres provider and through the Neon emulator.

End to end means what the Celery task does: lock the registry row, create the role and the database (cloned from the
template for `postgres`; a Neon project for `neon`), check/apply migrations, record the embedding model, mark ready.

The Neon figure that has a target is our own overhead: provision time minus the emulator's own work, with operations
that finish at once and no added latency. The emulator's work is its API: each request from the parsed request line
to the response ready to send (its CREATE DATABASE, JSON, ...) and each finishing of operations in the background,
counted once where they overlap. Everything else is ours, including what the new database's server spends on our
session: backend start, login and our schema's DDL, which depend on our design.

Beside it, for information, the same figure without that server's time (the session's wall time minus our thread's
CPU in it): how much is our own code. That split counts any off-CPU wait in the session (run queue, GIL) as the
server's, so it is a lower bound of our share, not a target.

The warm pool, per provider in the same run: the refill's throughput (pooled databases made per second, one after
another as the worker makes them), then sign-up-to-ready from the pool: `vector_database_request` (the claim, in one
locked transaction, and the tasks it enqueues) followed by `vector_database_provision` (what the task does for a
claimed database: rotate its credentials and name it for its tenant, then mark it ready). Through the Neon emulator
that is a rename, a password reset and waiting for the reset's operation; `pool_claim_neon_overhead_*` subtracts the
emulator's own work, as the cold path does.
"""

from __future__ import annotations

import time
from unittest import mock

from django.conf import settings
from django.db import connection
from django.test import override_settings

from bench.common import (
    admin_dsn,
    bench_email,
    create_tenants,
    drop_database,
    milliseconds,
    percentile,
    progress,
    remove_tenants,
    stopwatch,
)
from bench.framework import Target
from tenants import services
from tenants.models import User, VectorDatabase
from tenants.provisioners import get_provisioner
from tenants.provisioners.neon import NeonProvisioner
from tenants.provisioners.postgres import TEMPLATE_DATABASE
from tests.emulators import neon as neon_emulator

TARGETS = [
    Target("p50_ms", at_most=100, unit=" ms", label="p50_ms (postgres provider)"),
    # Was 20 ms: the new database's schema DDL alone takes 14-18 ms here. Sign-up waits on the warm pool instead.
    Target("neon_emulator_overhead_p50_ms", at_most=30, unit=" ms"),
    # Sign-up to a ready database with rotated credentials, from the warm pool: the slower provider's figure.
    Target("pool_claim_p50_ms", at_most=10, unit=" ms"),
    Target("pool_claim_p99_ms", at_most=30, unit=" ms"),
]
POOL_CLAIMS, QUICK_POOL_CLAIMS = 30, 10

TENANTS, QUICK_TENANTS = 50, 15
WARM_UP_TENANTS = 2  # untimed: build the template, load the migration graph, open the main database connection
# With operations that finish at once, the only wait left is the poll interval: keep it short so the figure is
# our work, not our sleeping (production polls every 2 s against operations that take seconds).
NEON_POLL_INTERVAL_SECONDS = 0.005
# The emulator's http.server writes a response's headers and body in two segments; with Nagle's algorithm on, the
# second waits for the client's delayed ACK (~40 ms on Linux) on every request. Real Neon does not do that, and the
# stall happens after `handle()` returns, so it would be counted as our overhead: switch it off (TCP_NODELAY).
EMULATOR_TCP_NODELAY = True


def run(quick: bool) -> dict:
    count = QUICK_TENANTS if quick else TENANTS
    result: dict = {"n": count}
    result.update(_postgres_provider(count))
    result.update(_neon_provider(count))
    claims = QUICK_POOL_CLAIMS if quick else POOL_CLAIMS
    result.update(_pool_postgres(claims))
    result.update(_pool_neon(claims))
    # The target holds for every provider: the headline figure is the slower one's.
    for name in ("p50", "p99"):
        result[f"pool_claim_{name}_ms"] = max(result[f"pool_claim_postgres_{name}_ms"],
                                              result[f"pool_claim_neon_{name}_ms"])  # fmt: skip
    return result


def _provision_timed(rows: list[VectorDatabase]) -> list[float]:
    seconds = []
    for row in rows:
        with stopwatch() as watch:
            provisioned = services.vector_database_provision(row.id)
        if provisioned.status != VectorDatabase.Status.READY:
            raise RuntimeError(f"tenant {row.tenant_key} ended {provisioned.status}: {provisioned.last_error}")
        seconds.append(watch.seconds)
    return seconds


def _fresh_template() -> None:
    # A crashed fleet benchmark may have left the template at a test schema: start from the real one.
    drop_database(TEMPLATE_DATABASE)
    get_provisioner("postgres")._templates_ready.clear()


def _postgres_provider(count: int) -> dict:
    prefix = "bench-provision-pg"
    remove_tenants(prefix)
    _fresh_template()
    try:
        rows = create_tenants(prefix, WARM_UP_TENANTS + count, provider="postgres")
        _provision_timed(rows[:WARM_UP_TENANTS])
        progress(f"postgres provider: provisioning {count} tenants one after another")
        seconds = _provision_timed(rows[WARM_UP_TENANTS:])
    finally:
        progress(f"postgres provider: dropped {remove_tenants(prefix)} tenant databases")
    return {
        "p50_ms": _ms(seconds),
        "p99_ms": _ms(seconds, 0.99),
        "max_ms": milliseconds(max(seconds)),
    }


def _neon_provider(count: int) -> dict:
    prefix = "bench-provision-neon"
    nagle_was_disabled = neon_emulator._Handler.disable_nagle_algorithm
    neon_emulator._Handler.disable_nagle_algorithm = EMULATOR_TCP_NODELAY
    emulator = neon_emulator.NeonEmulator(admin_dsn(), operation_delay_seconds=0, latency_seconds=0).start()
    provisioner = _bench_neon_provisioner(emulator)
    create_seconds: list[float] = []
    provisioner.create = _timed(provisioner.create, create_seconds)
    prepare_seconds: list[float] = []
    prepare_cpu_seconds: list[float] = []
    timed_prepare = _timed(services.tenant_database_prepare, prepare_seconds, cpu_seconds=prepare_cpu_seconds)
    real_get_provisioner = services.get_provisioner

    def get_bench_provisioner(name: str | None = None):
        return provisioner if (name or settings.TENANT_PROVIDER) == "neon" else real_get_provisioner(name)

    totals, emulator_seconds, requests, polls = [], [], [], []
    try:
        with (
            mock.patch.object(services, "get_provisioner", get_bench_provisioner),
            mock.patch.object(services, "tenant_database_prepare", timed_prepare),
        ):
            remove_tenants(prefix)
            rows = create_tenants(prefix, WARM_UP_TENANTS + count, provider="neon")
            _provision_timed(rows[:WARM_UP_TENANTS])
            progress(f"neon provider: provisioning {count} tenants one after another through the emulator")
            create_seconds.clear()
            prepare_seconds.clear()
            prepare_cpu_seconds.clear()
            for row in rows[WARM_UP_TENANTS:]:
                first_request, first_interval = len(emulator.requests), len(emulator.work_intervals)
                window_start = time.perf_counter()
                [total] = _provision_timed([row])
                window = (window_start, time.perf_counter())
                recorded = emulator.requests[first_request:]
                totals.append(total)
                emulator_seconds.append(_covered_seconds(emulator.work_intervals[first_interval:], window))
                requests.append(len(recorded))
                polls.append(sum(1 for r in recorded if r.method == "GET" and _is_operations_path(r.path)))
            progress(f"neon provider: dropped {remove_tenants(prefix)} projects")
    finally:
        emulator.stop()  # drops whatever projects are left
        neon_emulator._Handler.disable_nagle_algorithm = nagle_was_disabled
    overheads = _minus(totals, emulator_seconds)
    # Of the tenant-database session, the time our thread was off the CPU: mostly waiting on that database's server.
    server_wait = _minus(prepare_seconds, prepare_cpu_seconds)
    without_server = _minus(overheads, server_wait)
    client = _minus(create_seconds, emulator_seconds)
    after_create = _minus(totals, create_seconds)
    outside_tenant_database = _minus(overheads, prepare_seconds)
    return {
        "neon_emulator_overhead_p50_ms": _ms(overheads),
        "neon_emulator_overhead_p99_ms": _ms(overheads, 0.99),
        "neon_total_p50_ms": _ms(totals),
        "neon_total_p99_ms": _ms(totals, 0.99),
        "neon_emulator_handling_p50_ms": _ms(emulator_seconds),
        # The overhead split: NeonProvisioner.create() minus the emulator's work (HTTP client, waiting for
        # operations), and what follows create() (the new database's schema, embedding model record, registry).
        "neon_client_overhead_p50_ms": _ms(client),
        "neon_after_create_p50_ms": _ms(after_create),
        # `tenant_database_prepare`: one connection to the new database (TLS-less SCRAM login here), pgvector, the
        # schema's DDL, the migration record and the embedding model in one round trip, commit. Its wall time splits
        # into our thread off the CPU (waiting on that server) and on it (libpq's SCRAM, psycopg, our Python).
        "neon_tenant_prepare_p50_ms": _ms(prepare_seconds),
        "neon_tenant_database_server_wait_p50_ms": _ms(server_wait),
        "neon_tenant_prepare_our_cpu_p50_ms": _ms(prepare_cpu_seconds),
        "neon_overhead_outside_tenant_database_p50_ms": _ms(outside_tenant_database),
        # For information (no target): the overhead without the tenant database server's time, a lower bound of
        # our own code's share.
        "neon_overhead_without_tenant_database_server_p50_ms": _ms(without_server),
        "neon_overhead_without_tenant_database_server_p99_ms": _ms(without_server, 0.99),
        "neon_emulator_tcp_nodelay": EMULATOR_TCP_NODELAY,
        "neon_requests_per_provision_p50": percentile(requests, 0.50),
        "neon_operation_polls_per_provision_p50": percentile(polls, 0.50),
    }


def _pool_fill_and_claim(provider: str, region: str, count: int, prefix: str) -> tuple[dict, list[tuple[float, float]]]:
    """Fill `region`'s pool with `count` databases (timed), then sign `count` new users up from it, each timed from
    the request to a ready database with rotated credentials. Returns (figures, each claim's (start, end))."""
    size = WARM_UP_TENANTS + count
    with override_settings(TENANT_PROVIDER=provider, TENANT_WARM_POOL_SIZE=size, TENANT_WARM_POOL_REGION_SIZES={}):
        services.tenant_pool_drain(region)
        remove_tenants(prefix)
        progress(f"{provider} pool: filling {size} databases")
        [refill] = services.tenant_pool_refill(region)
        if refill.created != size:
            raise RuntimeError(f"{provider} pool refill made {refill.created} of {size}: {refill.stopped}")
        users = User.objects.bulk_create(
            [User(email=bench_email(prefix, number), password="!") for number in range(size)]
        )
        progress(f"{provider} pool: {count} sign-ups claiming from it (after {WARM_UP_TENANTS} untimed)")
        windows, cpu_seconds, statements = [], [], []
        counted = [0]

        def count_statement(execute, sql, params, many, context):
            counted[0] += 1
            return execute(sql, params, many, context)

        for number, user in enumerate(users):
            counted[0] = 0
            with connection.execute_wrapper(count_statement):
                started, cpu_started = time.perf_counter(), time.thread_time()
                claimed = services.vector_database_request(user, region)
                ready = services.vector_database_provision(claimed.id)
                ended, cpu_ended = time.perf_counter(), time.thread_time()
            if number >= WARM_UP_TENANTS:  # the first open the broker connection and the kept admin connection
                windows.append((started, ended))
                cpu_seconds.append(cpu_ended - cpu_started)
                statements.append(counted[0])
            if ready.status != VectorDatabase.Status.READY or ready.claimed_at is None:
                raise RuntimeError(f"{user.email}: not ready from the pool ({ready.status}, {ready.last_error})")
        progress(f"{provider} pool: dropped {remove_tenants(prefix)} claimed databases")
        services.tenant_pool_drain(region)
    seconds = [end - start for start, end in windows]
    figures = {
        f"pool_refill_{provider}_databases_per_second": round(refill.created / refill.seconds, 2),
        f"pool_claim_{provider}_p50_ms": _ms(seconds),
        f"pool_claim_{provider}_p99_ms": _ms(seconds, 0.99),
        # Where the time goes, for information: our thread's CPU in a claim (the rest is waiting: on the main
        # database, Redis, the tenant's server or Neon), and the statements sent to the main database.
        f"pool_claim_{provider}_our_cpu_p50_ms": _ms(cpu_seconds),
        f"pool_claim_{provider}_main_database_statements_p50": percentile(statements, 0.50),
    }
    return figures, windows


def _pool_postgres(count: int) -> dict:
    figures, _ = _pool_fill_and_claim("postgres", settings.TENANT_DEFAULT_REGION, count, "bench-pool-pg")
    return figures


def _pool_neon(count: int) -> dict:
    """The same through the Neon emulator (operations that finish at once, no added latency, as the cold path)."""
    nagle_was_disabled = neon_emulator._Handler.disable_nagle_algorithm
    neon_emulator._Handler.disable_nagle_algorithm = EMULATOR_TCP_NODELAY
    emulator = neon_emulator.NeonEmulator(admin_dsn(), operation_delay_seconds=0, latency_seconds=0).start()
    provisioner = _bench_neon_provisioner(emulator)
    real_get_provisioner = services.get_provisioner

    def get_bench_provisioner(name: str | None = None):
        return provisioner if (name or settings.TENANT_PROVIDER) == "neon" else real_get_provisioner(name)

    try:
        with mock.patch.object(services, "get_provisioner", get_bench_provisioner):
            figures, windows = _pool_fill_and_claim("neon", settings.NEON_REGION, count, "bench-pool-neon")
        intervals = list(emulator.work_intervals)
        # Each request is recorded as its answer leaves: those inside a claim's window are the claim's.
        requests = [[r for r in emulator.requests if start <= r.at <= end] for start, end in windows]
    finally:
        emulator.stop()
        neon_emulator._Handler.disable_nagle_algorithm = nagle_was_disabled
    # The emulator's work in each claim: the rename, the reset and its finishing (ALTER ROLE on a new admin
    # connection), the polls and the connection URIs.
    overheads = [end - start - _covered_seconds(intervals, (start, end)) for start, end in windows]
    figures["pool_claim_neon_overhead_p50_ms"] = _ms(overheads)
    figures["pool_claim_neon_overhead_p99_ms"] = _ms(overheads, 0.99)
    figures["pool_claim_neon_requests_p50"] = percentile([len(claim) for claim in requests], 0.50)
    figures["pool_claim_neon_operation_polls_p50"] = percentile(
        [sum(1 for r in claim if r.method == "GET" and _is_operations_path(r.path)) for claim in requests], 0.50
    )
    return figures


def _bench_neon_provisioner(emulator) -> NeonProvisioner:
    return NeonProvisioner.from_settings(
        api_key=emulator.api_key,
        api_url=emulator.base_url,
        poll_interval_seconds=NEON_POLL_INTERVAL_SECONDS,
        retry_base_delay_seconds=0.01,
        retry_max_delay_seconds=0.05,
        request_timeout_seconds=10,
        operation_timeout_seconds=30,
    )


def _minus(minuends: list[float], subtrahends: list[float]) -> list[float]:
    """Per provision: one measured duration minus another."""
    return [minuend - subtrahend for minuend, subtrahend in zip(minuends, subtrahends, strict=True)]


def _ms(seconds: list[float], quantile: float = 0.50) -> float:
    return milliseconds(percentile(seconds, quantile))


def _covered_seconds(intervals: list[tuple[float, float]], window: tuple[float, float]) -> float:
    """How long at least one of `intervals` was running inside `window`: overlapping stretches count once."""
    covered, reached = 0.0, window[0]
    for start, end in sorted(intervals):
        start, end = max(start, reached), min(end, window[1])
        if end > start:
            covered += end - start
            reached = end
    return covered


def _timed(function, seconds: list[float], *, cpu_seconds: list[float] | None = None):
    """`function`, appending each call's duration to `seconds` and, if given, this thread's CPU time in the call to
    `cpu_seconds` (psycopg and libpq run in the calling thread, so that is all of our own work in it)."""

    def timed(*arguments, **options):
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            return function(*arguments, **options)
        finally:
            seconds.append(time.perf_counter() - started)
            if cpu_seconds is not None:
                cpu_seconds.append(time.thread_time() - cpu_started)

    return timed


def _is_operations_path(path: str) -> bool:
    return path.split("?")[0].endswith("/operations")
