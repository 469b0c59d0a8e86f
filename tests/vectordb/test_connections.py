"""The tenant connection registry: right database, one cap across tenants, LRU eviction, credentials resolved once.

Real databases on the test server: a dozen small tenant databases, each with its own LOGIN role and password and a
marker row naming its tenant, so a query that reached the wrong database is caught.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
import time
from dataclasses import dataclass

import numpy
import psycopg
import pytest
from asgiref.sync import sync_to_async
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from vectordb import connections
from vectordb.connections import (
    ConnectionCapacityExhausted,
    TenantConnectionRegistry,
    TenantTarget,
    get_registry,
    redact_dsn,
)

TENANT_COUNT = 12
# The first half of the databases have pgvector installed, the others not (yet).
TENANTS_WITH_VECTOR = 6
BACKEND_WAIT_SECONDS = 5.0


@dataclass
class TenantDatabase:
    key: str
    name: str
    role: str
    password: str
    server: dict

    def dsn(self, password: str | None = None) -> str:
        return make_conninfo(**dict(self.server, user=self.role, password=password or self.password, dbname=self.name))


class RecordingResolver:
    """A credentials provider that records each call; `refresh` says whether fresh credentials were asked for."""

    def __init__(self, database: TenantDatabase, password: str | None = None, refreshed_password: str | None = None):
        self.database = database
        self.password = password
        self.refreshed_password = refreshed_password
        self.calls: list[bool] = []
        self._lock = threading.Lock()

    def __call__(self, refresh: bool) -> str:
        with self._lock:
            self.calls.append(refresh)
        if refresh and self.refreshed_password:
            return self.database.dsn(self.refreshed_password)
        return self.database.dsn(self.password)

    def target(self) -> TenantTarget:
        return TenantTarget(key=self.database.key, resolve_dsn=self)


def admin_connect(admin_dsn: str, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(make_conninfo(admin_dsn, dbname=dbname), autocommit=True)


def create_tenant_database(admin: psycopg.Connection, admin_dsn: str, name: str, with_vector: bool) -> TenantDatabase:
    password = secrets.token_urlsafe(16)
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
    admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    admin.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    with admin_connect(admin_dsn, name) as tenant_admin:
        if with_vector:
            tenant_admin.execute("CREATE EXTENSION vector")
        tenant_admin.execute("CREATE TABLE tenant_marker (tenant_key text PRIMARY KEY)")
        tenant_admin.execute("INSERT INTO tenant_marker VALUES (%s)", [name])
        tenant_admin.execute("CREATE TABLE notes (body text NOT NULL)")
        tenant_admin.execute(sql.SQL("ALTER TABLE tenant_marker OWNER TO {}").format(sql.Identifier(name)))
        tenant_admin.execute(sql.SQL("ALTER TABLE notes OWNER TO {}").format(sql.Identifier(name)))
    server = {key: value for key, value in conninfo_to_dict(admin_dsn).items() if key in ("host", "port")}
    return TenantDatabase(key=name, name=name, role=name, password=password, server=server)


def drop_tenant_database(admin: psycopg.Connection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def admin(admin_dsn):
    with admin_connect(admin_dsn) as connection:
        yield connection


@pytest.fixture(scope="module")
def tenant_databases(admin, admin_dsn) -> list[TenantDatabase]:
    prefix = f"silo_conn_{secrets.token_hex(3)}"
    names = [f"{prefix}_{index:02d}" for index in range(TENANT_COUNT)]
    try:
        databases = [
            create_tenant_database(admin, admin_dsn, name, with_vector=index < TENANTS_WITH_VECTOR)
            for index, name in enumerate(names)
        ]
        yield databases
    finally:
        for name in names:
            drop_tenant_database(admin, name)


@pytest.fixture
def spare_database(admin, admin_dsn) -> TenantDatabase:
    """A tenant database of its own, for tests that change its password or drop it."""
    name = f"silo_conn_spare_{secrets.token_hex(4)}"
    try:
        yield create_tenant_database(admin, admin_dsn, name, with_vector=True)
    finally:
        drop_tenant_database(admin, name)


@pytest.fixture
def make_registry():
    registries: list[TenantConnectionRegistry] = []

    def make(**options) -> TenantConnectionRegistry:
        options = {"max_total_connections": 10, "max_connections_per_tenant": 2, "idle_seconds": 300, **options}
        registry = TenantConnectionRegistry(**options)
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        registry.close_all(timeout=5)


def backend_counts(admin: psycopg.Connection, databases: list[TenantDatabase]) -> dict[str, int]:
    """Server-side truth: client backends per database in pg_stat_activity (databases with none are left out).

    Autovacuum workers visit the fresh databases too; they are not ours to count.
    """
    rows = admin.execute(
        "SELECT datname, count(*) FROM pg_stat_activity"
        " WHERE datname = ANY(%s) AND backend_type = 'client backend' GROUP BY datname",
        [[database.name for database in databases]],
    ).fetchall()
    return dict(rows)


def wait_for_backend_counts(
    admin: psycopg.Connection, databases: list[TenantDatabase], expected: dict[str, int]
) -> dict[str, int]:
    """A closed connection's backend leaves pg_stat_activity a moment after the client hangs up."""
    deadline = time.monotonic() + BACKEND_WAIT_SECONDS
    while (counts := backend_counts(admin, databases)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return counts


def terminate_backends(admin: psycopg.Connection, database: TenantDatabase) -> None:
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [database.name])
    assert wait_for_backend_counts(admin, [database], {}) == {}


def marker(registry: TenantConnectionRegistry, target: TenantTarget, **options) -> str:
    with registry.connection(target, **options) as connection:
        return connection.execute("SELECT tenant_key FROM tenant_marker").fetchone()[0]


def backend_pid(registry: TenantConnectionRegistry, target: TenantTarget, timeout: float) -> int:
    with registry.connection(target, timeout=timeout) as connection:
        return connection.info.backend_pid


# -- routing -----------------------------------------------------------------------------------------------------------


def test_each_query_reaches_its_own_tenant_database(make_registry, tenant_databases):
    registry = make_registry()
    resolvers = [RecordingResolver(database) for database in tenant_databases]

    for resolver in resolvers + list(reversed(resolvers)):
        assert marker(registry, resolver.target()) == resolver.database.key

    assert registry.tenant_count() == TENANT_COUNT - 2
    assert registry.open_connection_count() == 10


def test_connection_is_transactional_committed_on_success_and_rolled_back_on_error(make_registry, spare_database):
    registry = make_registry()
    target = RecordingResolver(spare_database).target()

    with registry.connection(target) as connection:
        assert connection.autocommit is False
        connection.execute("INSERT INTO notes VALUES ('kept')")
    with pytest.raises(RuntimeError, match="changed my mind"):
        with registry.connection(target) as connection:
            connection.execute("INSERT INTO notes VALUES ('discarded')")
            raise RuntimeError("changed my mind")

    with registry.connection(target) as connection:
        assert connection.execute("SELECT body FROM notes").fetchall() == [("kept",)]
    assert registry.open_connection_count() == 1


def test_vector_type_is_registered_where_pgvector_is_installed(make_registry, tenant_databases, monkeypatch):
    registrations: list[str] = []
    real_register_vector = connections.register_vector

    def counting_register_vector(connection):
        registrations.append(connection.info.dbname)
        real_register_vector(connection)

    monkeypatch.setattr(connections, "register_vector", counting_register_vector)
    registry = make_registry(max_connections_per_tenant=1)
    with_vector = RecordingResolver(tenant_databases[0]).target()
    without_vector = RecordingResolver(tenant_databases[TENANTS_WITH_VECTOR]).target()

    for _ in range(20):
        with registry.connection(with_vector) as connection:
            embedding = connection.execute("SELECT '[1,2,3]'::vector").fetchone()[0]
            assert isinstance(embedding, numpy.ndarray)
            assert embedding.tolist() == [1.0, 2.0, 3.0]
        assert marker(registry, without_vector) == tenant_databases[TENANTS_WITH_VECTOR].key

    assert registrations == [tenant_databases[0].name, tenant_databases[TENANTS_WITH_VECTOR].name]


# -- the cap across tenants --------------------------------------------------------------------------------------------


def test_fifty_threads_on_twelve_tenants_never_exceed_the_cap(make_registry, tenant_databases, admin):
    cap, per_tenant = 5, 2
    registry = make_registry(max_total_connections=cap, max_connections_per_tenant=per_tenant)
    resolvers = [RecordingResolver(database) for database in tenant_databases]
    wrong_answers: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()
    seen_by_registry: list[int] = []
    seen_by_server: list[dict[str, int]] = []

    def sample() -> None:
        while not done.is_set():
            seen_by_registry.append(registry.open_connection_count())
            seen_by_server.append(backend_counts(admin, tenant_databases))

    def work(seed: int) -> None:
        chooser = random.Random(seed)
        try:
            for _ in range(10):
                resolver = chooser.choice(resolvers)
                with registry.connection(resolver.target()) as connection:
                    key = connection.execute("SELECT tenant_key, pg_sleep(0.002) FROM tenant_marker").fetchone()[0]
                if key != resolver.database.key:
                    wrong_answers.append((resolver.database.key, key))
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(50)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    sampler.join()

    assert errors == []
    assert wrong_answers == []
    assert max(seen_by_registry) == cap
    assert max(sum(counts.values()) for counts in seen_by_server) <= cap
    assert max(max(counts.values(), default=0) for counts in seen_by_server) <= per_tenant
    assert len(seen_by_server) > 50
    assert registry.open_connection_count() <= cap
    assert sum(backend_counts(admin, tenant_databases).values()) == registry.open_connection_count()


def test_many_sync_to_async_callers_share_one_registry(make_registry, tenant_databases):
    """The chat view calls through sync_to_async(thread_sensitive=False): one executor thread per call."""
    registry = make_registry(max_total_connections=4, max_connections_per_tenant=1)
    targets = [RecordingResolver(database).target() for database in tenant_databases] * 3

    async def ask_everyone() -> list[str]:
        ask = sync_to_async(marker, thread_sensitive=False)
        return await asyncio.gather(*(ask(registry, target) for target in targets))

    assert asyncio.run(ask_everyone()) == [target.key for target in targets]
    assert registry.open_connection_count() <= 4


def test_least_recently_used_idle_tenant_is_evicted_first(make_registry, tenant_databases, admin):
    registry = make_registry(max_total_connections=3, max_connections_per_tenant=1)
    a, b, c, d, e = (RecordingResolver(database).target() for database in tenant_databases[:5])

    for target in (a, b, c, a):
        marker(registry, target)
    marker(registry, d)

    assert wait_for_backend_counts(admin, tenant_databases, {a.key: 1, c.key: 1, d.key: 1}) == {
        a.key: 1,
        c.key: 1,
        d.key: 1,
    }
    assert registry.open_connection_count() == 3
    assert registry.tenant_count() == 3

    marker(registry, e)

    assert wait_for_backend_counts(admin, tenant_databases, {a.key: 1, d.key: 1, e.key: 1}) == {
        a.key: 1,
        d.key: 1,
        e.key: 1,
    }
    assert registry.open_connection_count() == 3


def test_per_tenant_limit_makes_callers_wait_while_other_tenants_still_connect(make_registry, tenant_databases, admin):
    registry = make_registry(max_total_connections=10, max_connections_per_tenant=2)
    busy_tenant = RecordingResolver(tenant_databases[0]).target()
    other_tenant = RecordingResolver(tenant_databases[1]).target()

    with registry.connection(busy_tenant) as first, registry.connection(busy_tenant) as second:
        held_pids = {first.info.backend_pid, second.info.backend_pid}
        with pytest.raises(
            ConnectionCapacityExhausted,
            match=rf"no connection for tenant {busy_tenant.key} within 0.2s: "
            r"its 2 connections \(the per-tenant limit\) are busy",
        ):
            with registry.connection(busy_tenant, timeout=0.2):
                pass
        assert marker(registry, other_tenant) == other_tenant.key
        assert registry.open_connection_count() == 3

        waiter_pids: list[int] = []
        waiter = threading.Thread(
            target=lambda: waiter_pids.append(backend_pid(registry, busy_tenant, timeout=5)), daemon=True
        )
        waiter.start()
        waiter.join(timeout=0.2)
        assert waiter.is_alive()
    waiter.join(timeout=5)

    assert len(waiter_pids) == 1
    assert waiter_pids[0] in held_pids
    assert backend_counts(admin, tenant_databases[:2]) == {busy_tenant.key: 2, other_tenant.key: 1}


def test_when_every_connection_is_busy_a_new_tenant_waits_then_gets_capacity_exhausted(
    make_registry, tenant_databases, admin
):
    registry = make_registry(max_total_connections=2, max_connections_per_tenant=2)
    a, b = (RecordingResolver(database).target() for database in tenant_databases[:2])
    newcomer = RecordingResolver(tenant_databases[2])

    with registry.connection(a), registry.connection(b):
        started = time.monotonic()
        with pytest.raises(
            ConnectionCapacityExhausted,
            match=rf"no connection for tenant {newcomer.database.key} within 0.3s: "
            "all 2 connections across tenants are busy",
        ):
            marker(registry, newcomer.target(), timeout=0.3)
        assert time.monotonic() - started >= 0.3

    assert newcomer.calls == []
    assert registry.open_connection_count() == 2
    assert registry.tenant_count() == 2
    assert backend_counts(admin, tenant_databases[:3]) == {a.key: 1, b.key: 1}

    assert marker(registry, newcomer.target()) == newcomer.database.key
    assert registry.open_connection_count() == 2


# -- credentials -------------------------------------------------------------------------------------------------------


def test_credentials_are_resolved_once_per_tenant_for_many_queries(make_registry, tenant_databases):
    registry = make_registry(max_total_connections=6, max_connections_per_tenant=2)
    resolvers = [RecordingResolver(database) for database in tenant_databases[:3]]
    start = threading.Barrier(20)

    def work(seed: int) -> None:
        chooser = random.Random(seed)
        start.wait()
        for _ in range(10):
            resolver = chooser.choice(resolvers)
            assert marker(registry, resolver.target()) == resolver.database.key

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert [resolver.calls for resolver in resolvers] == [[False], [False], [False]]


def test_after_a_password_change_the_next_query_refreshes_credentials_once(
    make_registry, spare_database, admin, caplog
):
    registry = make_registry()
    resolver = RecordingResolver(spare_database)
    assert marker(registry, resolver.target()) == spare_database.key

    old_password, spare_database.password = spare_database.password, secrets.token_urlsafe(16)
    admin.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(spare_database.role), sql.Literal(spare_database.password)
        )
    )
    # A session outlives a password change; a new login is what the new password is needed for.
    terminate_backends(admin, spare_database)

    with caplog.at_level("DEBUG", logger="vectordb.connections"):
        assert marker(registry, resolver.target()) == spare_database.key
        assert marker(registry, resolver.target()) == spare_database.key

    assert resolver.calls == [False, True]
    assert registry.open_connection_count() == 1
    assert "asking for fresh credentials once" in caplog.text
    assert old_password not in caplog.text
    assert spare_database.password not in caplog.text


def test_a_password_still_wrong_after_refresh_raises_and_leaves_nothing_open(make_registry, spare_database, admin):
    registry = make_registry()
    resolver = RecordingResolver(spare_database, password="not-the-password")

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        marker(registry, resolver.target())
    assert resolver.calls == [False, True]
    assert registry.open_connection_count() == 0
    assert registry.tenant_count() == 0
    assert backend_counts(admin, [spare_database]) == {}

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        marker(registry, resolver.target())
    assert resolver.calls == [False, True, True]


def test_stale_credentials_are_replaced_by_the_refreshed_ones(make_registry, spare_database):
    registry = make_registry()
    resolver = RecordingResolver(spare_database, password="stale-password", refreshed_password=spare_database.password)

    assert marker(registry, resolver.target()) == spare_database.key
    assert marker(registry, resolver.target()) == spare_database.key
    assert resolver.calls == [False, True]


def test_a_missing_database_is_not_retried_with_fresh_credentials(make_registry, spare_database):
    registry = make_registry()
    database = TenantDatabase(
        key="missing",
        name="silo_conn_no_such_database",
        role=spare_database.role,
        password=spare_database.password,
        server=spare_database.server,
    )
    resolver = RecordingResolver(database)

    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        marker(registry, resolver.target())
    assert resolver.calls == [False]
    assert registry.open_connection_count() == 0


# -- closing -----------------------------------------------------------------------------------------------------------


def test_close_tenant_leaves_no_backend_so_its_database_can_be_dropped(make_registry, spare_database, admin):
    registry = make_registry(max_connections_per_tenant=3)
    target = RecordingResolver(spare_database).target()
    together = threading.Barrier(3)

    def hold_one() -> None:
        with registry.connection(target) as connection:
            connection.execute("SELECT 1")
            together.wait()

    holders = [threading.Thread(target=hold_one) for _ in range(3)]
    for holder in holders:
        holder.start()
    for holder in holders:
        holder.join()
    assert backend_counts(admin, [spare_database]) == {spare_database.name: 3}

    in_use = threading.Event()

    def hold_while_closing() -> None:
        with registry.connection(target) as connection:
            in_use.set()
            connection.execute("SELECT pg_sleep(0.3)")

    late_holder = threading.Thread(target=hold_while_closing)
    late_holder.start()
    in_use.wait(timeout=5)
    registry.close_tenant(spare_database.key)

    assert not late_holder.is_alive()
    assert registry.open_connection_count() == 0
    assert registry.tenant_count() == 0
    assert wait_for_backend_counts(admin, [spare_database], {}) == {}
    admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(spare_database.name)))


def test_close_tenant_gives_up_after_its_timeout_and_closes_the_connection_when_returned(
    make_registry, spare_database, admin
):
    registry = make_registry()
    target = RecordingResolver(spare_database).target()

    with registry.connection(target) as connection:
        with pytest.raises(TimeoutError, match=r"1 tenant connection\(s\) still in use after 0.1s"):
            registry.close_tenant(spare_database.key, timeout=0.1)
        connection.execute("SELECT 1")

    assert registry.open_connection_count() == 0
    assert wait_for_backend_counts(admin, [spare_database], {}) == {}


def test_close_tenant_forgets_credentials(make_registry, spare_database):
    registry = make_registry()
    resolver = RecordingResolver(spare_database)

    marker(registry, resolver.target())
    registry.close_tenant(spare_database.key)
    marker(registry, resolver.target())

    assert resolver.calls == [False, False]


def test_close_all_closes_every_tenant(make_registry, tenant_databases, admin):
    registry = make_registry()
    for database in tenant_databases[:4]:
        marker(registry, RecordingResolver(database).target())

    registry.close_all()

    assert registry.open_connection_count() == 0
    assert registry.tenant_count() == 0
    assert wait_for_backend_counts(admin, tenant_databases, {}) == {}


def test_idle_connections_are_closed_after_idle_seconds(make_registry, tenant_databases, admin):
    registry = make_registry(idle_seconds=1.5)  # long enough to open both first, on a busy machine too
    for database in tenant_databases[:2]:
        marker(registry, RecordingResolver(database).target())
    assert registry.open_connection_count() == 2

    # Nothing else touches the registry: its sweeper closes them.
    deadline = time.monotonic() + BACKEND_WAIT_SECONDS
    while registry.open_connection_count() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert registry.open_connection_count() == 0
    assert registry.tenant_count() == 0
    assert wait_for_backend_counts(admin, tenant_databases, {}) == {}


def test_connections_younger_than_idle_seconds_stay_open(make_registry, tenant_databases, admin):
    registry = make_registry(idle_seconds=300)
    marker(registry, RecordingResolver(tenant_databases[0]).target())

    assert registry.close_idle_connections() == 0
    assert registry.open_connection_count() == 1
    assert backend_counts(admin, tenant_databases) == {tenant_databases[0].name: 1}


# -- broken connections ------------------------------------------------------------------------------------------------


def test_an_idle_connection_terminated_by_the_server_is_replaced_transparently(make_registry, spare_database, admin):
    registry = make_registry()
    resolver = RecordingResolver(spare_database)
    first_pid = backend_pid(registry, resolver.target(), timeout=5)

    terminate_backends(admin, spare_database)

    second_pid = backend_pid(registry, resolver.target(), timeout=5)
    assert second_pid != first_pid
    assert registry.open_connection_count() == 1
    assert resolver.calls == [False]
    assert backend_counts(admin, [spare_database]) == {spare_database.name: 1}


def test_a_connection_broken_while_in_use_is_discarded_and_the_next_use_works(make_registry, spare_database, admin):
    registry = make_registry()
    target = RecordingResolver(spare_database).target()

    with pytest.raises(psycopg.OperationalError):
        with registry.connection(target) as connection:
            terminate_backends(admin, spare_database)
            connection.execute("SELECT 1")

    assert registry.open_connection_count() == 0
    assert registry.tenant_count() == 0
    assert marker(registry, target) == spare_database.key
    assert registry.open_connection_count() == 1


# -- helpers and settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn, redacted",
    [
        (
            "postgresql://alice:s3cret@db.example.com:5432/tenant_1",
            {"user": "alice", "password": "***", "host": "db.example.com", "port": "5432", "dbname": "tenant_1"},
        ),
        (
            "host=db.example.com user=alice password=s3cret dbname=tenant_1",
            {"user": "alice", "password": "***", "host": "db.example.com", "dbname": "tenant_1"},
        ),
        ("postgresql://db.example.com/tenant_1", {"host": "db.example.com", "dbname": "tenant_1"}),
    ],
)
def test_redact_dsn_hides_the_password(dsn, redacted):
    assert "s3cret" not in redact_dsn(dsn)
    assert conninfo_to_dict(redact_dsn(dsn)) == redacted


def test_redact_dsn_of_an_unparseable_dsn_reveals_nothing():
    assert redact_dsn("host=db.example.com password='s3cret") == "<unparseable dsn>"


def test_get_registry_builds_one_registry_from_settings(settings, monkeypatch):
    monkeypatch.setattr(connections, "_registry", None)
    settings.TENANT_POOL_MAX_TOTAL_CONNECTIONS = 7
    settings.TENANT_POOL_MAX_PER_TENANT = 3
    settings.TENANT_POOL_IDLE_SECONDS = 42.0

    registry = get_registry()

    assert get_registry() is registry
    assert (registry.max_total_connections, registry.max_connections_per_tenant, registry.idle_seconds) == (7, 3, 42.0)
    registry.close_all()
