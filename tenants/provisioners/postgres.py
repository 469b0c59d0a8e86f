"""Tenant databases on PostgreSQL servers we administer (the embedded server by default).

Per tenant: a LOGIN role with a random password, a database owned by it, CONNECT revoked from PUBLIC, pgvector
installed. Fast path: clone a template database kept at the latest tenant schema version.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from functools import lru_cache

import psycopg
from django.conf import settings
from django.db import DatabaseError
from psycopg import sql

from tenants.provisioners.base import DatabaseMissing, ProvisionedDatabase, ProvisioningError
from vectordb.advisory_locks import advisory_lock
from vectordb.dsn import Dsn
from vectordb.schema import schema_target, tenant_database_migrate

logger = logging.getLogger(__name__)

DATABASE_PREFIX = "silo_t_"
TEMPLATE_DATABASE = "silo_tenant_template"
TEMPLATE_OWNER = "silo_template_owner"


@dataclass(frozen=True)
class AdministeredServer:
    name: str
    region: str
    admin_url: str
    max_tenants: int | None = None  # placement skips the server once it holds this many tenant databases
    pooler: str | None = None  # "host:port" of a PgBouncer in front of it: the app connects there, DDL goes direct

    def __repr__(self) -> str:
        return f"AdministeredServer(name={self.name!r}, region={self.region!r})"

    def url_for(self, database: str, user: str | None = None, password: str | None = None) -> str:
        """A URL for `database` on this server: as the administrator, or as `user` with `password`."""
        admin = Dsn.parse(self.admin_url)
        address = admin.replace(database=database, host=admin.host or "127.0.0.1")
        return (address if user is None else address.replace(user=user, password=password or "")).url()

    def app_url_for(self, database: str, user: str, password: str) -> str:
        """Where the app's connections for a tenant go: through the pooler when the server has one."""
        direct = Dsn.parse(self.url_for(database, user, password))
        if not self.pooler:
            return direct.url()
        host, _, port = self.pooler.rpartition(":")
        return direct.replace(host=host, port=int(port)).url()


def database_name(tenant_key: str) -> str:
    return f"{DATABASE_PREFIX}{tenant_key}"


# The SCRAM iteration count of the passwords we make. Stretching a password makes guessing it from a leaked verifier
# slow, which matters for passwords people choose; ours are 256 random bits (`token_urlsafe(32)`) that no number of
# guesses finds, so 4,096 iterations (the server's default) would only cost CPU: ~2.3 ms on the server at every
# password change and, on both sides, at every login of the tenant's connections.
TENANT_PASSWORD_SCRAM_ITERATIONS = 16


def scram_sha_256_verifier(password: str, iterations: int = TENANT_PASSWORD_SCRAM_ITERATIONS) -> str:
    """The verifier PostgreSQL stores for `password` (RFC 5802/7677, the format of `pg_authid.rolpassword`), made
    here: the server stores a verifier it is sent as it is, so the password itself never reaches the server (nor its
    statement log). `password` must be ASCII (SASLprep leaves it unchanged)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def encoded(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{encoded(salt)}${encoded(stored_key)}:{encoded(server_key)}"


# Taking advisory locks is the one thing every role may do that fills a table shared by the whole server: 57,231 of
# them in 0.2 s left every tenant with "out of shared memory". Our own locks live in the main database.
_ADVISORY_LOCK_FUNCTIONS = "SELECT oid::regprocedure FROM pg_proc WHERE proname ~ '^pg_(try_)?advisory_'"
_REVOKE_ADVISORY_LOCKS = f"""
DO $$ DECLARE function regprocedure; BEGIN
    FOR function IN {_ADVISORY_LOCK_FUNCTIONS} LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', function);
    END LOOP;
END $$"""
# Databases every server has that a tenant role must not even connect to.
_SERVER_DATABASES_CLOSED_TO_TENANTS = ("template1", "postgres")


def tenant_role_settings() -> dict[str, str]:
    """Session settings every tenant role logs in with (temp_file_limit only a superuser can change)."""
    return {
        "idle_session_timeout": f"{settings.TENANT_ROLE_IDLE_SESSION_TIMEOUT_SECONDS}s",
        "idle_in_transaction_session_timeout": f"{settings.TENANT_ROLE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS}s",
        "temp_file_limit": f"{settings.TENANT_ROLE_TEMP_FILE_LIMIT_MB}MB",
    }


class PostgresProvisioner:
    name = "postgres"

    def __init__(self, servers: list[AdministeredServer]):
        if not servers:
            raise ProvisioningError("no PostgreSQL server is configured for tenant databases (TENANT_POSTGRES_SERVERS)")
        self.servers = {server.name: server for server in servers}
        self._templates_ready: set[str] = set()
        self._template_lock = threading.Lock()
        # Per server, one administrator connection kept open for claims from the warm pool (a new one costs a
        # backend start and a SCRAM login, more than the rest of the claim); a forked worker opens its own.
        self._kept_admins: dict[str, tuple[int, psycopg.Connection]] = {}
        self._kept_admins_lock = threading.Lock()

    @classmethod
    def from_settings(cls) -> PostgresProvisioner:
        # One instance per process and server list, so the template check runs once, not on every sign-up.
        return _provisioner_for(json.dumps(settings.TENANT_POSTGRES_SERVERS, sort_keys=True))

    # --- administration helpers ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _admin(self, server: AdministeredServer, database: str = "postgres"):
        try:
            connection = psycopg.connect(server.url_for(database), autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise ProvisioningError(
                f"cannot reach PostgreSQL server {server.name!r}: {error.sqlstate or 'offline'}"
            ) from None
        try:
            yield connection
        finally:
            connection.close()

    def _server(self, name: str) -> AdministeredServer:
        try:
            return self.servers[name]
        except KeyError:
            raise ProvisioningError(f"unknown tenant database server {name!r}") from None

    @contextlib.contextmanager
    def _locate(self, database: str, region: str | None, only: str | None = None):
        """(server, admin connection) for the tenant's database: the server that already has it (a retry), else the
        least-loaded server in the requested region that is up, not draining and under its `max_tenants`. One
        connection per server looked at, the chosen one kept."""
        closed = _draining_servers()
        with contextlib.ExitStack() as stack:
            counts: dict[str, int] = {}
            admins: dict[str, psycopg.Connection] = {}
            down: list[str] = []
            for server in self.servers.values():
                try:
                    admin = stack.enter_context(self._admin(server))
                except ProvisioningError:  # a server that is down takes no new tenants; the others still do
                    logger.warning("tenant database server %s is unreachable: placing elsewhere", server.name)
                    down.append(server.name)
                    continue
                admins[server.name] = admin
                exists, count = admin.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s), "
                    "(SELECT count(*) FROM pg_database WHERE starts_with(datname, %s))",
                    [database, DATABASE_PREFIX],
                ).fetchone()
                if exists:
                    yield server, admin
                    return
                counts[server.name] = count
            in_region = [
                s for s in self.servers.values() if (not region or s.region == region) and (not only or s.name == only)
            ]
            if not in_region:
                raise ProvisioningError(f"no tenant database server in region {region!r}")
            candidates = [
                server
                for server in in_region
                if server.name in counts
                and server.name not in closed
                and (server.max_tenants is None or counts[server.name] < server.max_tenants)
            ]
            if not candidates:
                where = f"region {region!r}" if region else "any region"
                raise ProvisioningError(
                    f"no tenant database server in {where} takes new tenants "
                    f"(down: {', '.join(down) or 'none'}; draining: {', '.join(sorted(closed)) or 'none'}; "
                    "the others are full): add a server or raise max_tenants"
                )
            chosen = min(candidates, key=lambda server: (counts[server.name], server.name))
            yield chosen, admins[chosen.name]

    def server_usage(self, server_name: str) -> tuple[int, int]:
        """(tenant databases, their bytes on disk) on one server; ProvisioningError when it cannot be reached."""
        with self._admin(self._server(server_name)) as admin:
            count, size = admin.execute(
                "SELECT count(*), coalesce(sum(pg_database_size(datname)), 0)::bigint FROM pg_database "
                "WHERE starts_with(datname, %s)",
                [DATABASE_PREFIX],
            ).fetchone()
        return count, size

    def _set_login(self, admin: psycopg.Connection, role: str, bounded: bool = True) -> str:
        """A new password for the role (created if missing); `bounded`: with a tenant role's limits."""
        password = secrets.token_urlsafe(32)
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        verb = "ALTER" if exists else "CREATE"
        login = sql.SQL("{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(scram_sha_256_verifier(password))
        )
        # The bounds ride in the same round trip (no parameters: one simple query).
        admin.execute(sql.SQL("; ").join([login, *self._role_bounds(role)]) if bounded else login)
        return password

    def _role_bounds(self, role: str) -> list[sql.Composed]:
        return [
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                sql.Identifier(role), sql.Literal(settings.TENANT_ROLE_CONNECTION_LIMIT)
            ),
            *(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    sql.Identifier(role), sql.Identifier(name), sql.Literal(value)
                )
                for name, value in tenant_role_settings().items()
            ),
        ]

    def _close_server_databases(self, admin: psycopg.Connection) -> None:
        admin.execute(
            sql.SQL("; ").join(
                sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
                for name in _SERVER_DATABASES_CLOSED_TO_TENANTS
            )
        )

    # --- bounds on what one tenant may take of the server ------------------------------------------------------------

    def bounds_missing(self, external_id: str, server: str) -> list[str]:
        """What of a tenant's bounds its role and database lack (databases made before the bounds existed)."""
        administered = self._server(server)
        with self._admin(administered) as admin:
            row = admin.execute(
                "SELECT rolconnlimit, coalesce(rolconfig, '{}'), "
                "array(SELECT datname FROM pg_database WHERE datname = ANY(%s) "
                "AND has_database_privilege(%s, datname, 'CONNECT') ORDER BY 1) "
                "FROM pg_roles WHERE rolname = %s",
                [list(_SERVER_DATABASES_CLOSED_TO_TENANTS), external_id, external_id],
            ).fetchone()
        if row is None:
            return [f"role {external_id} does not exist"]
        connection_limit, role_settings, open_databases = row
        missing = []
        if connection_limit != settings.TENANT_ROLE_CONNECTION_LIMIT:
            missing.append(f"connection limit {connection_limit} instead of {settings.TENANT_ROLE_CONNECTION_LIMIT}")
        missing += [
            f"{name} is not {value}"
            for name, value in tenant_role_settings().items()
            if f"{name}={value}" not in role_settings
        ]
        missing += [f"may connect to {name}" for name in open_databases]
        with self._admin(administered, external_id) as tenant_admin:
            (allowed,) = tenant_admin.execute(
                f"SELECT count(*) FROM ({_ADVISORY_LOCK_FUNCTIONS}) AS functions (oid) "
                "WHERE has_function_privilege(%s, oid, 'EXECUTE')",
                [external_id],
            ).fetchone()
        if allowed:
            missing.append(f"may call {allowed} advisory-lock functions")
        return missing

    def bounds_apply(self, external_id: str, server: str) -> None:
        """Bring an existing tenant's role and database under the bounds new tenants get (idempotent)."""
        administered = self._server(server)
        with self._admin(administered) as admin:
            admin.execute(sql.SQL("; ").join(self._role_bounds(external_id)))
            self._close_server_databases(admin)
        with self._admin(administered, external_id) as tenant_admin:
            tenant_admin.execute(_REVOKE_ADVISORY_LOCKS)

    # --- template ------------------------------------------------------------------------------------------------

    def template_refresh(self, server_name: str | None = None, allow_breaking: bool = False) -> None:
        """Create the template database if missing and bring it to the latest tenant schema."""
        for server in [self._server(server_name)] if server_name else self.servers.values():
            # One process at a time builds a server's template.
            with advisory_lock(f"tenant-template:{server.name}"), self._admin(server) as admin:
                self._close_server_databases(admin)
                password = self._set_login(admin, TEMPLATE_OWNER, bounded=False)
                if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [TEMPLATE_DATABASE]).fetchone():
                    admin.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(TEMPLATE_DATABASE), sql.Identifier(TEMPLATE_OWNER)
                        )
                    )
                    admin.execute(
                        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(TEMPLATE_DATABASE))
                    )
                admin.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(TEMPLATE_DATABASE), sql.Identifier(TEMPLATE_OWNER)
                    )
                )
                with self._admin(server, TEMPLATE_DATABASE) as template:
                    template.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    template.execute(_REVOKE_ADVISORY_LOCKS)  # clones inherit it
                template_dsn = server.url_for(TEMPLATE_DATABASE, TEMPLATE_OWNER, password)
                # Schema connections are closed after use: nothing may stay connected to a template we clone.
                tenant_database_migrate(
                    schema_target(f"template-{server.name}", template_dsn), allow_breaking=allow_breaking
                )
                admin.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(sql.Identifier(TEMPLATE_OWNER)))
            self._templates_ready.add(server.name)

    def _ensure_template(self, server: AdministeredServer) -> bool:
        """Once per process and server: make sure the template exists and is current (a no-op when it is)."""
        if server.name in self._templates_ready:
            return True
        with self._template_lock:
            if server.name not in self._templates_ready:
                try:
                    self.template_refresh(server.name)
                except (psycopg.Error, DatabaseError, ProvisioningError):  # the slow path works without a template
                    logger.exception("could not prepare the tenant template database on %s", server.name)
                    return False
        return True

    # --- the provider interface --------------------------------------------------------------------------------------

    def create(
        self,
        tenant_key: str,
        region: str | None = None,
        *,
        first_attempt: bool = False,
        pooled: bool = False,
        on_server: str | None = None,  # a move to this server (tenants.archives); else the least-loaded in the region
    ) -> ProvisionedDatabase:
        # `first_attempt` changes nothing here: looking for the database by name is part of placing it anyway. Nor
        # does `pooled`: the name comes from the registry row's tenant key, which a claim keeps.
        database = database_name(tenant_key)
        role = database
        with self._locate(database, region, on_server) as (server, admin):
            use_template = self._ensure_template(server)
            password = self._set_login(admin, role)
            cloned = made_empty = False
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
                cloned = use_template and self._clone_template(admin, database, role)
                if not cloned:
                    admin.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role))
                    )
                    made_empty = True
            admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
            admin.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )
        with self._admin(server, database) as tenant_admin:
            # A clone's tables belong to the template owner until handed over. (Not REASSIGN OWNED: that would
            # also hand over the template database itself, a shared object.)
            relations = tenant_admin.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_roles r ON r.oid = c.relowner "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND r.rolname = %s",
                [TEMPLATE_OWNER],
            ).fetchall()
            for (relation,) in relations:
                tenant_admin.execute(
                    sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(relation), sql.Identifier(role))
                )
            tenant_admin.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if not cloned:  # a clone has the template's revocations already
                tenant_admin.execute(_REVOKE_ADVISORY_LOCKS)
        return ProvisionedDatabase(
            external_id=database,
            region=server.region,
            server=server.name,
            dsn=server.app_url_for(database, role, password),
            migration_dsn=server.url_for(database, role, password),
            new_database=made_empty,
        )

    def _clone_template(self, admin: psycopg.Connection, database: str, role: str) -> bool:
        try:
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(database), sql.Identifier(role), sql.Identifier(TEMPLATE_DATABASE)
                )
            )
            return True
        except (psycopg.errors.ObjectInUse, psycopg.errors.InvalidCatalogName):
            # Someone is connected to the template (a fleet migration refreshing it), or it was dropped: take the
            # slow path now and check the template again next time.
            self._templates_ready.clear()
            return False

    def locate(self, tenant_key: str) -> tuple[str, str] | None:
        database = database_name(tenant_key)
        for server in self.servers.values():
            with self._admin(server) as admin:
                if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
                    return server.name, database
        return None

    def delete(self, external_id: str, server: str) -> None:
        administered = self._server(server)
        with self._admin(administered) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(external_id)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(external_id)))

    def dsn(self, external_id: str, server: str) -> ProvisionedDatabase:
        administered = self._server(server)
        with self._admin(administered) as admin:
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [external_id]).fetchone():
                raise DatabaseMissing(f"tenant database {external_id} does not exist on {server}")
            password = self._set_login(admin, external_id)
        return ProvisionedDatabase(
            external_id=external_id,
            region=administered.region,
            server=server,
            dsn=administered.app_url_for(external_id, external_id, password),
            migration_dsn=administered.url_for(external_id, external_id, password),
        )

    def credentials_rotate(
        self,
        external_id: str,
        server: str,
        tenant_key: str,
        *,
        current: dict[str, str] | None = None,
        quota: dict[str, int] | None = None,
    ) -> ProvisionedDatabase:
        # Already named for its tenant: database and role are named after the registry row's key, which the claim
        # keeps. Sessions opened with the pool's password (its checks) end with it. Neither `current` nor `quota`
        # (our servers have no quota) is needed here.
        administered = self._server(server)
        password = secrets.token_urlsafe(32)
        # One simple query, one round trip, one implicit transaction: the database must still be there (else it
        # fails with the message below and changes nothing), the new password (as its SCRAM verifier), then the
        # old password's sessions end.
        rotate = sql.SQL(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = {database}) THEN "
            "RAISE EXCEPTION USING ERRCODE = 'invalid_catalog_name', MESSAGE = {missing}; END IF; END $$; "
            "ALTER ROLE {role} WITH PASSWORD {verifier}; "
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {database}"
        ).format(
            database=sql.Literal(external_id),
            missing=sql.Literal(f"tenant database {external_id} does not exist"),
            role=sql.Identifier(external_id),
            verifier=sql.Literal(scram_sha_256_verifier(password)),
        )
        for attempt in (1, 2):  # a kept connection the server has closed meanwhile fails once: then a new one
            try:
                with self._kept_admin(administered) as admin:
                    admin.execute(rotate)
                break
            except (psycopg.errors.InvalidCatalogName, psycopg.errors.UndefinedObject):  # no database, or no role
                raise DatabaseMissing(f"tenant database {external_id} does not exist on {server}") from None
            except psycopg.OperationalError as error:
                if attempt == 2:
                    raise ProvisioningError(f"PostgreSQL server {server!r}: {error.sqlstate or 'offline'}") from None
        dsn = administered.url_for(external_id, external_id, password)
        return ProvisionedDatabase(
            external_id=external_id, region=administered.region, server=server, dsn=dsn, migration_dsn=dsn
        )

    @contextlib.contextmanager
    def _kept_admin(self, server: AdministeredServer):
        """This process's kept administrator connection to `server`, one user at a time; reopened after an error."""
        with self._kept_admins_lock:
            pid, connection = self._kept_admins.pop(server.name, (0, None))
        if connection is None or pid != os.getpid() or connection.closed:
            try:
                connection = psycopg.connect(server.url_for("postgres"), autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as error:
                raise ProvisioningError(
                    f"cannot reach PostgreSQL server {server.name!r}: {error.sqlstate or 'offline'}"
                ) from None
        try:
            yield connection
        except psycopg.OperationalError:
            connection.close()  # broken: the next claim opens another
            raise
        finally:
            # Kept after any other error too: in autocommit the failed statement left nothing open.
            with self._kept_admins_lock:
                if connection.closed or server.name in self._kept_admins:  # another thread kept one: one is enough
                    connection.close()
                else:
                    self._kept_admins[server.name] = (os.getpid(), connection)

    def list_databases(self) -> list[tuple[str, str]]:
        """(server, external_id) of every tenant database that exists, for reconciliation."""
        found = []
        for server in self.servers.values():
            with self._admin(server) as admin:
                rows = admin.execute(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname", [DATABASE_PREFIX]
                ).fetchall()
            found += [(server.name, row[0]) for row in rows]
        return found


def _draining_servers() -> set[str]:
    from tenants.models import TenantServer

    return set(TenantServer.objects.filter(draining=True).values_list("name", flat=True))


@lru_cache(maxsize=8)
def _provisioner_for(servers_json: str) -> PostgresProvisioner:
    return PostgresProvisioner([AdministeredServer(**server) for server in json.loads(servers_json)])
