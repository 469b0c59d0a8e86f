"""The one place that yields a connection to a tenant database.

A process-wide `TenantConnectionRegistry` keeps a small pool per tenant and caps the number of open physical
connections across all tenants: thousands of tenants must not mean thousands of open connections. When a new
connection is needed and the cap is reached, an idle connection of the least-recently-used tenant is closed first;
when every connection is busy, the caller waits (bounded) and then gets `ConnectionCapacityExhausted`.

Why not one `psycopg_pool.ConnectionPool` per tenant: each of those runs its own scheduler and worker threads and opens
connections in the background, so a cap across pools could only be enforced from inside its private methods, and
closing one idle connection of another tenant's pool has no public API. The pool here is small and keeps every count
under one lock, so the cap is exact. A slot is given back only after its connection is closed and the server has hung
up (a "synchronous close"), so even pg_stat_activity never shows more than the cap.

`vectordb` imports none of the other apps: callers hand over a `TenantTarget` (a stable key and a function that
returns the DSN). Credentials are resolved once per tenant and cached; a failed login asks for fresh ones once.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from pgvector.psycopg import register_vector
from psycopg import pq
from psycopg_pool import ConnectionPool

from vectordb.dsn import redact_dsn

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_SECONDS = 10
DEFAULT_ACQUIRE_TIMEOUT_SECONDS = 30.0
DEFAULT_CLOSE_TIMEOUT_SECONDS = 30.0
# How long closing a connection waits for the server to hang up (one round trip, normally).
SERVER_HANGUP_TIMEOUT_SECONDS = 2.0

# SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification.
LOGIN_FAILURE_SQLSTATES = frozenset({"28P01", "28000"})
# libpq does not expose the SQLSTATE of an error raised while connecting (psycopg/psycopg#1188), so psycopg's
# OperationalError has sqlstate None there; these texts identify a refused login instead.
LOGIN_FAILURE_MESSAGES = ("password authentication failed", "fe_sendauth: no password supplied")


class ConnectionCapacityExhausted(Exception):
    """Every allowed connection is busy and none came free within the timeout."""


class TargetPurpose(enum.Enum):
    APP = "app"  # the app's traffic: pooled, kept idle for reuse, pgvector types registered
    SCHEMA = "schema"  # migrations: credentials that may change the schema, closed after each use


@dataclass(frozen=True)
class TenantTarget:
    """Where a tenant's database is: a stable key and a function returning its DSN.

    `resolve_dsn(refresh)` is called with False the first time and with True once after a refused login, when the
    provider may reissue credentials. The registry caches its result per key and purpose.
    """

    key: str
    resolve_dsn: Callable[[bool], str] = field(repr=False, compare=False)
    purpose: TargetPurpose = TargetPurpose.APP

    @property
    def pool_key(self) -> str:
        return self.key if self.purpose is TargetPurpose.APP else f"{self.key}\x00{self.purpose.value}"


def is_login_failure(error: psycopg.OperationalError) -> bool:
    """Whether the server refused the credentials (as opposed to being unreachable, missing a database, ...)."""
    if error.sqlstate is not None:
        return error.sqlstate in LOGIN_FAILURE_SQLSTATES
    message = str(error)
    return any(text in message for text in LOGIN_FAILURE_MESSAGES)


class _IdleConnection:
    __slots__ = ("connection", "idle_since")

    def __init__(self, connection: psycopg.Connection, idle_since: float):
        self.connection = connection
        self.idle_since = idle_since


class _TenantPool:
    """One tenant's connections. Every field is guarded by the registry's lock."""

    def __init__(self, key: str):
        self.key = key
        # Connections held by callers, plus slots reserved by callers that are connecting right now.
        self.busy = 0
        # Oldest first: callers take the most recent one (warm), expiry and eviction take the oldest.
        self.idle: list[_IdleConnection] = []
        # Set by close_tenant/close_all: connections coming back are closed instead of kept.
        self.closed = False

    @property
    def size(self) -> int:
        return self.busy + len(self.idle)


class _CachedCredentials:
    __slots__ = ("dsn", "lock")

    def __init__(self) -> None:
        # Serialises resolve_dsn per tenant, so many threads asking at once cause one lookup.
        self.lock = threading.Lock()
        self.dsn: str | None = None


class TenantConnectionRegistry:
    """Process-wide, thread-safe pools of connections per tenant under one cap on open connections.

    `with registry.connection(target) as conn:` yields a psycopg connection (autocommit off) to the tenant's database;
    the transaction is committed when the block ends normally and rolled back when it raises.
    """

    def __init__(
        self,
        max_total_connections: int,
        max_connections_per_tenant: int,
        idle_seconds: float,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT_SECONDS,
    ):
        if max_total_connections < 1:
            raise ValueError("max_total_connections must be at least 1")
        if max_connections_per_tenant < 1:
            raise ValueError("max_connections_per_tenant must be at least 1")
        if idle_seconds <= 0:
            raise ValueError("idle_seconds must be positive")
        self.max_total_connections = max_total_connections
        self.max_connections_per_tenant = min(max_connections_per_tenant, max_total_connections)
        self.idle_seconds = idle_seconds
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout

        self._condition = threading.Condition(threading.Lock())
        # Least recently used first.
        self._pools: OrderedDict[str, _TenantPool] = OrderedDict()
        # Physical connections open, being opened, or taken out of a pool and not yet closed: never above the cap.
        self._open_count = 0
        self._credentials: dict[str, _CachedCredentials] = {}
        self._sweeper_stop: threading.Event | None = None

    # -- public API --------------------------------------------------------------------------------------------------

    @contextmanager
    def connection(self, target: TenantTarget, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A connection to the tenant's database for the duration of the block.

        Waits up to `timeout` seconds (default: the registry's acquire_timeout) when all allowed connections are busy,
        then raises ConnectionCapacityExhausted.
        """
        pool, connection = self._acquire(target, self.acquire_timeout if timeout is None else timeout)
        try:
            yield connection
        except BaseException:
            with suppress(psycopg.Error):
                connection.rollback()
            raise
        else:
            connection.commit()
        finally:
            self._release(pool, connection, keep=target.purpose is TargetPurpose.APP)

    @contextmanager
    def slot_for_own_connection(self, target: TenantTarget, timeout: float | None = None) -> Iterator[str]:
        """A slot under the cap, and the DSN, for a caller that must open a connection of another kind (Django's
        migration executor). The caller closes that connection before the block ends."""
        pool, reused, victim = self._reserve(target, self.acquire_timeout if timeout is None else timeout)
        try:
            for connection in (reused, victim):
                if connection is not None:
                    _close_and_wait_for_server(connection)
            yield self._dsn(target, refresh=False)
        finally:
            self._give_back_slot(pool)

    def open_connection_count(self) -> int:
        """Physical connections open (or being opened) across all tenants."""
        with self._condition:
            return self._open_count

    def tenant_count(self) -> int:
        """Tenants that hold at least one connection, idle or busy."""
        with self._condition:
            return len(self._pools)

    def close_tenant(self, key: str, timeout: float = DEFAULT_CLOSE_TIMEOUT_SECONDS) -> None:
        """Close every connection of the tenant and forget its credentials, e.g. before its database is dropped.

        Idle connections close now; connections in use close when their block ends, which this waits for (up to
        `timeout` seconds, then TimeoutError). Callers must stop new work for the tenant first: a later
        `connection()` opens a new pool.
        """
        pool_keys = [TenantTarget(key, _no_dsn, purpose).pool_key for purpose in TargetPurpose]
        with self._condition:
            pools = [pool for pool_key in pool_keys if (pool := self._pools.pop(pool_key, None)) is not None]
            idle: list[psycopg.Connection] = []
            for pool_key in pool_keys:
                self._credentials.pop(pool_key, None)
            for pool in pools:
                pool.closed = True
                idle.extend(self._take_all_idle_locked(pool))
        self._close_and_free_slots(idle)
        self._wait_until_returned(pools, timeout)

    def close_all(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_SECONDS) -> None:
        """Close every connection of every tenant and forget all credentials (shutdown, tests)."""
        with self._condition:
            pools = list(self._pools.values())
            self._pools.clear()
            self._credentials.clear()
            idle: list[psycopg.Connection] = []
            for pool in pools:
                pool.closed = True
                idle.extend(self._take_all_idle_locked(pool))
            if self._sweeper_stop is not None:
                self._sweeper_stop.set()
                self._sweeper_stop = None
        self._close_and_free_slots(idle)
        self._wait_until_returned(pools, timeout)

    def close_idle_connections(self) -> int:
        """Close connections idle for longer than idle_seconds; return how many were closed."""
        with self._condition:
            expired = self._take_expired_locked(time.monotonic())
        self._close_and_free_slots(expired)
        return len(expired)

    # -- acquiring and releasing -------------------------------------------------------------------------------------

    def _acquire(self, target: TenantTarget, timeout: float) -> tuple[_TenantPool, psycopg.Connection]:
        pool, reused, victim = self._reserve(target, timeout)
        # From here this caller holds one slot in `pool` and in the total; it is given back if no connection results.
        try:
            if victim is not None:
                _close_and_wait_for_server(victim)
            if reused is not None:
                try:
                    ConnectionPool.check_connection(reused)
                    return pool, reused
                except psycopg.Error as error:
                    # Terminated by the server, a restart, a network cut: replace it within the same slot.
                    logger.info("discarding a broken idle connection of tenant %s: %s", target.key, error)
                    _close_quietly(reused)
            return pool, self._connect(target)
        except BaseException:
            self._give_back_slot(pool)
            raise

    def _reserve(
        self, target: TenantTarget, timeout: float
    ) -> tuple[_TenantPool, psycopg.Connection | None, psycopg.Connection | None]:
        """Takes one slot of the tenant's pool and of the total, waiting up to `timeout`: (pool, an idle connection of
        this tenant to reuse, or an idle connection of another tenant to close first, or neither)."""
        deadline = time.monotonic() + timeout
        key = target.pool_key
        with self._condition:
            self._start_sweeper_locked()
            while True:
                pool = self._pools.get(key)
                if pool is None:
                    pool = self._pools[key] = _TenantPool(key)
                self._pools.move_to_end(key)
                if pool.idle:
                    pool.busy += 1
                    return pool, pool.idle.pop().connection, None
                if pool.busy < self.max_connections_per_tenant:
                    if self._open_count < self.max_total_connections:
                        self._open_count += 1
                        pool.busy += 1
                        return pool, None, None
                    victim = self._take_least_recently_used_idle_locked(excluding=pool)
                    if victim is not None:
                        # The victim's slot passes to this caller, who closes it before connecting.
                        pool.busy += 1
                        return pool, None, victim
                self._forget_pool_if_empty_locked(pool)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if pool.busy >= self.max_connections_per_tenant:
                        reason = f"its {pool.busy} connections (the per-tenant limit) are busy"
                    else:
                        reason = f"all {self.max_total_connections} connections across tenants are busy"
                    raise ConnectionCapacityExhausted(
                        f"no connection for tenant {target.key} within {timeout:g}s: {reason}"
                    )
                self._condition.wait(remaining)

    def _give_back_slot(self, pool: _TenantPool) -> None:
        with self._condition:
            pool.busy -= 1
            self._open_count -= 1
            self._forget_pool_if_empty_locked(pool)
            self._condition.notify_all()

    def _release(self, pool: _TenantPool, connection: psycopg.Connection, keep: bool = True) -> None:
        reusable = (
            keep
            and not connection.closed
            and not connection.broken
            and connection.info.transaction_status == pq.TransactionStatus.IDLE
        )
        if reusable and connection.autocommit:
            try:
                connection.autocommit = False
            except psycopg.Error:
                reusable = False
        with self._condition:
            if reusable and not pool.closed:
                pool.busy -= 1
                pool.idle.append(_IdleConnection(connection, time.monotonic()))
                self._condition.notify_all()
                return
        if not keep:
            # Used once by design (a migration): its caller need not wait for the server to hang up. The slot still
            # comes back only after the hang-up, in the background.
            threading.Thread(
                target=self._close_and_give_back_slot, args=(pool, connection), name="tenant-connection-close"
            ).start()
            return
        self._close_and_give_back_slot(pool, connection)

    def _close_and_give_back_slot(self, pool: _TenantPool, connection: psycopg.Connection) -> None:
        # Closed before its slot is given back, so the server never sees more connections than the cap.
        _close_and_wait_for_server(connection)
        self._give_back_slot(pool)

    # -- helpers (the *_locked ones run under self._condition) -------------------------------------------------------

    def _take_least_recently_used_idle_locked(self, excluding: _TenantPool) -> psycopg.Connection | None:
        for pool in self._pools.values():
            if pool is not excluding and pool.idle:
                connection = pool.idle.pop(0).connection
                self._forget_pool_if_empty_locked(pool)
                return connection
        return None

    def _take_expired_locked(self, now: float) -> list[psycopg.Connection]:
        expired: list[psycopg.Connection] = []
        for pool in list(self._pools.values()):
            while pool.idle and now - pool.idle[0].idle_since >= self.idle_seconds:
                expired.append(pool.idle.pop(0).connection)
            self._forget_pool_if_empty_locked(pool)
        return expired

    def _take_all_idle_locked(self, pool: _TenantPool) -> list[psycopg.Connection]:
        taken = [idle.connection for idle in pool.idle]
        pool.idle.clear()
        return taken

    def _forget_pool_if_empty_locked(self, pool: _TenantPool) -> None:
        if not pool.size and self._pools.get(pool.key) is pool:
            del self._pools[pool.key]

    def _close_and_free_slots(self, connections: list[psycopg.Connection]) -> None:
        if not connections:
            return
        for connection in connections:
            _close_and_wait_for_server(connection)
        with self._condition:
            self._open_count -= len(connections)
            self._condition.notify_all()

    def _wait_until_returned(self, pools: list[_TenantPool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._condition:
            while busy := sum(pool.busy for pool in pools):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{busy} tenant connection(s) still in use after {timeout:g}s")
                self._condition.wait(remaining)

    def _start_sweeper_locked(self) -> None:
        if self._sweeper_stop is not None:
            return
        self._sweeper_stop = threading.Event()
        threading.Thread(
            target=_sweep_idle_connections,
            args=(weakref.ref(self), self._sweeper_stop, min(self.idle_seconds / 2, 30.0)),
            name="tenant-connection-sweeper",
            daemon=True,
        ).start()

    # -- credentials and physical connections ------------------------------------------------------------------------

    def _connect(self, target: TenantTarget) -> psycopg.Connection:
        dsn = self._dsn(target, refresh=False)
        with_vector_types = target.purpose is TargetPurpose.APP
        try:
            return self._open_physical_connection(dsn, with_vector_types)
        except psycopg.OperationalError as error:
            if not is_login_failure(error):
                raise
            logger.warning(
                "login refused for tenant %s (%s); asking for fresh credentials once", target.key, redact_dsn(dsn)
            )
        return self._open_physical_connection(self._dsn(target, refresh=True, refused_dsn=dsn), with_vector_types)

    def _dsn(self, target: TenantTarget, refresh: bool, refused_dsn: str | None = None) -> str:
        if target.purpose is TargetPurpose.SCHEMA:
            return target.resolve_dsn(refresh)  # handed over by the caller each time: nothing to cache
        with self._condition:
            credentials = self._credentials.get(target.pool_key)
            if credentials is None:
                credentials = self._credentials[target.pool_key] = _CachedCredentials()
        with credentials.lock:
            # After a refused login, another thread may already have fetched fresh credentials: use those.
            if credentials.dsn is not None and (not refresh or credentials.dsn != refused_dsn):
                return credentials.dsn
            credentials.dsn = target.resolve_dsn(refresh)
            return credentials.dsn

    def _open_physical_connection(self, dsn: str, with_vector_types: bool = True) -> psycopg.Connection:
        connection = psycopg.connect(dsn, autocommit=False, connect_timeout=self.connect_timeout)
        if not with_vector_types:
            return connection
        try:
            try:
                register_vector(connection)
            except psycopg.ProgrammingError:
                # No `vector` extension in this database: a plain connection still serves everything else.
                pass
            # The type lookups opened a transaction; hand the connection out idle.
            connection.rollback()
        except BaseException:
            _close_quietly(connection)
            raise
        return connection


def database_size_bytes(connection: psycopg.Connection) -> int:
    """On-disk size of the database this connection is in."""
    (size,) = connection.execute("SELECT pg_database_size(current_database())").fetchone() or (0,)
    return size


def _no_dsn(refresh: bool) -> str:
    raise AssertionError("a key-only target is never connected")


def _close_quietly(connection: psycopg.Connection) -> None:
    with suppress(psycopg.Error, OSError):
        connection.close()


def _close_and_wait_for_server(connection: psycopg.Connection) -> None:
    """Close the connection, then wait briefly until the server hangs up.

    A backend leaves pg_stat_activity (and frees its server slot) only as it exits, after the client has gone. The
    server closes the socket after that, so waiting for end-of-file on it means a connection opened in the freed
    slot never overlaps the old one on the server.
    """
    if connection.closed or connection.broken:
        _close_quietly(connection)
        return
    try:
        # A duplicate of the socket keeps it readable after psycopg has sent Terminate and closed its own.
        watcher = socket.socket(fileno=os.dup(connection.fileno()))
    except (OSError, psycopg.Error):
        _close_quietly(connection)
        return
    with watcher:
        _close_quietly(connection)
        deadline = time.monotonic() + SERVER_HANGUP_TIMEOUT_SECONDS
        with suppress(OSError):
            while (remaining := deadline - time.monotonic()) > 0:
                watcher.settimeout(remaining)
                if not watcher.recv(4096):
                    return


def _sweep_idle_connections(
    registry_reference: weakref.ref[TenantConnectionRegistry], stop: threading.Event, interval: float
) -> None:
    """Closes expired idle connections even when no request comes to trigger it (e.g. so Neon computes can suspend)."""
    while not stop.wait(interval):
        registry = registry_reference()
        if registry is None:
            return
        registry.close_idle_connections()
        del registry


_registry: TenantConnectionRegistry | None = None
_registry_lock = threading.Lock()
# Registries inherited over fork() stay referenced: finalising them would close sockets the parent still uses.
_registries_inherited_from_parent: list[TenantConnectionRegistry] = []


def get_registry() -> TenantConnectionRegistry:
    """The process-wide registry, built from settings on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = TenantConnectionRegistry(
                max_total_connections=settings.TENANT_POOL_MAX_TOTAL_CONNECTIONS,
                max_connections_per_tenant=settings.TENANT_POOL_MAX_PER_TENANT,
                idle_seconds=settings.TENANT_POOL_IDLE_SECONDS,
            )
        return _registry


def _forget_registry_in_child() -> None:
    global _registry, _registry_lock
    if _registry is not None:
        _registries_inherited_from_parent.append(_registry)
    _registry = None
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_registry_in_child)
