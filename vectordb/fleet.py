"""Migrating many tenant databases at once: bounded concurrency, every failure collected, nothing stops the run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import psycopg
from django.db import DatabaseError, connections

from vectordb.connections import ConnectionCapacityExhausted, TenantTarget
from vectordb.schema import BreakingMigrationRefused, tenant_database_migrate, tenant_database_plan


@dataclass(frozen=True)
class FleetMember:
    label: str  # what operators recognise (an email)
    target: TenantTarget  # a schema target (vectordb.schema.schema_target): credentials that may change the schema

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

    @property
    def ok(self) -> bool:
        return not self.error


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]


def _run_all(
    members: Iterable[FleetMember],
    work: Callable[[FleetMember], FleetOutcome],
    jobs: int,
    on_done: Callable[[FleetOutcome], None] | None,
) -> list[FleetOutcome]:
    outcomes = []
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="migrate-tenant") as pool:
        futures = [pool.submit(_closing_main_database_connection, work, member) for member in members]
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
) -> list[FleetOutcome]:
    """Apply pending tenant migrations to every member, `jobs` at a time."""
    return _run_all(members, lambda member: _migrate_one(member, allow_breaking), jobs, on_done)


def _plan_one(member: FleetMember) -> FleetOutcome:
    outcome = FleetOutcome(member=member)
    try:
        outcome.pending = tenant_database_plan(member.target)
    except UNREACHABLE_OR_FAILING as error:
        outcome.error = _describe(error)
    return outcome


def fleet_plan(
    members: Iterable[FleetMember], jobs: int, on_done: Callable[[FleetOutcome], None] | None = None
) -> list[FleetOutcome]:
    """What each member still needs, changing nothing."""
    return _run_all(members, _plan_one, jobs, on_done)
