"""Migrating and checking many tenant databases at once: bounded concurrency, every failure collected.

The registry (kept by the caller) says which schema version each tenant database has; the plan and the decision to
contact a tenant are made from that record (`catalog_pending`), so a fleet with nothing to do is never woken (on Neon
every connection would wake a scaled-to-zero compute). Only members behind the latest migration, or whose recorded
version this code does not know, are contacted. `fleet_verify` is the explicit, rate-limited check that does connect.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import psycopg
from django.db import DatabaseError, connections

from vectordb.connections import ConnectionCapacityExhausted, TenantTarget
from vectordb.schema import (
    BreakingMigrationRefused,
    SchemaInspection,
    tenant_database_inspect,
    tenant_database_migrate,
    tenant_database_plan,
    tenant_migration_order,
)


@dataclass(frozen=True)
class FleetMember:
    label: str  # what operators recognise (an email)
    target: TenantTarget  # a schema target (vectordb.schema.schema_target): credentials that may change the schema
    schema_version: str = ""  # what the registry records as the database's last applied migration ("" unknown)

    @property
    def key(self) -> str:
        return self.target.key


UNREACHABLE_OR_FAILING = (DatabaseError, psycopg.Error, OSError, ConnectionCapacityExhausted)


@dataclass
class FleetOutcome:
    member: FleetMember
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    schema_version: str = ""
    error: str = ""
    seconds: float = 0.0
    contacted: bool = True  # False: decided from the registry alone
    not_started: bool = False  # the rollout stopped (canary, --max-failures) before this member's turn
    inspection: SchemaInspection | None = None  # fleet_verify's findings

    @property
    def ok(self) -> bool:
        return not self.error and not self.not_started


def catalog_pending(recorded_version: str) -> list[str] | None:
    """The migrations a database recorded at `recorded_version` still needs, from the migration order alone; None
    when the version is unknown to this code (never recorded, or from other migrations): only the database can say."""
    order = tenant_migration_order()
    if recorded_version not in order:
        return None
    return list(order[order.index(recorded_version) + 1 :])


def fleet_needing_contact(members: Iterable[FleetMember]) -> list[FleetMember]:
    """The members a migration must reach: behind the latest migration, or at a version the registry cannot vouch for."""
    return [member for member in members if catalog_pending(member.schema_version) != []]


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]


class _RateLimit:
    """At most `per_second` starts per second across threads (None: no limit); starts are spaced evenly."""

    def __init__(self, per_second: float | None):
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start_at = max(now, self._next)
            self._next = start_at + self._interval
        time.sleep(max(0.0, start_at - now))  # an operator's command, never request code


def _run_all(
    members: Iterable[FleetMember],
    work: Callable[[FleetMember], FleetOutcome],
    jobs: int,
    on_done: Callable[[FleetOutcome], None] | None,
    *,
    stop_after_failures: int | None = None,
    per_second: float | None = None,
) -> list[FleetOutcome]:
    """Runs `work` for each member, `jobs` at a time. With `stop_after_failures`, no member starts once that many
    have failed (those running finish); the rest come back `not_started`."""
    outcomes = []
    failures = 0
    failures_lock = threading.Lock()
    stopped = threading.Event()
    rate = _RateLimit(per_second)

    def guarded(member: FleetMember) -> FleetOutcome:
        nonlocal failures
        if stopped.is_set():
            return FleetOutcome(member=member, contacted=False, not_started=True)
        rate.wait()
        if stopped.is_set():
            return FleetOutcome(member=member, contacted=False, not_started=True)
        outcome = _closing_main_database_connection(work, member)
        if outcome.error and stop_after_failures is not None:
            with failures_lock:  # counted before this thread takes the next member: with one job, none slips past
                failures += 1
                if failures >= stop_after_failures:
                    stopped.set()
        return outcome

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="migrate-tenant") as pool:
        futures = [pool.submit(guarded, member) for member in members]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
    return sorted(outcomes, key=lambda outcome: outcome.member.label)


def _closing_main_database_connection(work: Callable[[FleetMember], FleetOutcome], member: FleetMember) -> FleetOutcome:
    """The work, then this thread's main-database connection (the migration lock's) goes back to Django's pool: the
    pool's threads end without closing what they hold."""
    try:
        return work(member)
    finally:
        connections.close_all()


def _migrate_one(member: FleetMember, allow_breaking: bool) -> FleetOutcome:
    started = time.monotonic()
    outcome = FleetOutcome(member=member)
    try:
        result = tenant_database_migrate(member.target, allow_breaking=allow_breaking)
        outcome.applied, outcome.schema_version = result.applied, result.schema_version
    except BreakingMigrationRefused as error:
        outcome.error = str(error)
    except UNREACHABLE_OR_FAILING as error:  # record it, go on
        outcome.error = _describe(error)
    outcome.seconds = time.monotonic() - started
    return outcome


def fleet_migrate(
    members: Iterable[FleetMember],
    jobs: int,
    allow_breaking: bool = False,
    on_done: Callable[[FleetOutcome], None] | None = None,
    stop_after_failures: int | None = None,
) -> list[FleetOutcome]:
    """Apply pending tenant migrations to every member given, `jobs` at a time (the caller picks who needs it:
    `fleet_needing_contact`). With `stop_after_failures`, the rollout stops starting members after that many failed."""
    return _run_all(
        members, lambda member: _migrate_one(member, allow_breaking), jobs, on_done,
        stop_after_failures=stop_after_failures,
    )  # fmt: skip


def _plan_one(member: FleetMember) -> FleetOutcome:
    pending = catalog_pending(member.schema_version)
    if pending is not None:
        return FleetOutcome(member=member, pending=pending, contacted=False)
    outcome = FleetOutcome(member=member)
    try:
        outcome.pending = tenant_database_plan(member.target)
    except UNREACHABLE_OR_FAILING as error:
        outcome.error = _describe(error)
    return outcome


def fleet_plan(
    members: Iterable[FleetMember], jobs: int, on_done: Callable[[FleetOutcome], None] | None = None
) -> list[FleetOutcome]:
    """What each member still needs, changing nothing: from the registry's record, asking only the databases whose
    recorded version this code does not know."""
    decided, unknown = [], []
    for member in members:
        pending = catalog_pending(member.schema_version)
        if pending is None:
            unknown.append(member)
        else:
            decided.append(FleetOutcome(member=member, pending=pending, contacted=False))
    if on_done:
        for outcome in decided:
            on_done(outcome)
    asked = _run_all(unknown, _plan_one, jobs, on_done) if unknown else []
    return sorted(decided + asked, key=lambda outcome: outcome.member.label)


def _verify_one(member: FleetMember) -> FleetOutcome:
    started = time.monotonic()
    outcome = FleetOutcome(member=member)
    try:
        outcome.inspection = tenant_database_inspect(member.target)
        outcome.schema_version = outcome.inspection.schema_version
        outcome.pending = list(outcome.inspection.pending)
    except UNREACHABLE_OR_FAILING as error:
        outcome.error = _describe(error)
    outcome.seconds = time.monotonic() - started
    return outcome


def fleet_verify(
    members: Iterable[FleetMember],
    jobs: int,
    per_second: float | None = None,
    on_done: Callable[[FleetOutcome], None] | None = None,
) -> list[FleetOutcome]:
    """Connect to every member and read what it really has (schema, extension, indexes, embedding model), `jobs` at a
    time and at most `per_second` new connections a second, so the check never floods a server."""
    return _run_all(members, _verify_one, jobs, on_done, per_second=per_second)
