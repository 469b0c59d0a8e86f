"""An emulator of the Neon API v2 subset Silo uses, served over real HTTP and backed by a real PostgreSQL server.

It follows /work/shared/reference/neon-api.md (paths are under /api/v2, as on console.neon.tech):

    POST   /projects                                     201 {project, connection_uris, roles, databases, operations,
                                                         branch, endpoints}; 422 PROJECTS_LIMIT_EXCEEDED over the limit
    GET    /projects?search=&limit=&cursor=&org_id=      {projects, pagination: {cursor: last id}, ...}
    GET    /projects/{id}                                {project}
    PATCH  /projects/{id}                                {project, operations: []}
    DELETE /projects/{id}                                {project}; 404 when unknown
    GET    /projects/{id}/operations?limit=&cursor=      {operations, pagination: {cursor: a created_at timestamp}}
    GET    /projects/{id}/operations/{operation_id}      {operation}
    GET    /projects/{id}/connection_uri?database_name=&role_name=&pooled=
                                                         {uri}
    GET    /projects/{id}/branches                       {branches, annotations}
    GET    /consumption_history/projects?project_ids=&from=&to=&granularity=&limit=&cursor=
                                                         {projects: [{project_id, periods: [{consumption}]}]}
    POST   /projects/{id}/branches/{branch_id}/roles/{role_name}/reset_password
                                                         {role, operations}
    POST   /projects/{id}/branches/{branch_id}/restore   {branch, operations}: the branch back to `source_timestamp`
                                                         (itself as `source_branch_id`, `preserve_under_name` given)

Every request needs `Authorization: Bearer <api_key>` (401 otherwise). A project is a real database and a real role
with a random password on the admin server; the role can log in only once the project's operations have finished, so
a client that connects before waiting for them fails, as the spec warns. While operations run, mutating calls get 423.
A password reset works as the spec says: the old password stays valid until its operation finishes; then the new one
works and the role's open sessions are dropped.

Deviations, on purpose: connection URIs point at the admin server's host and port (the pooled URI at `pooler_host`,
the same server), without `sslmode=require`; the API shows the names the client asked for (`neondb`,
`neondb_owner`) while the server holds unique per-project names behind them; every project's database comes with
pgvector already installed by the emulator, because pgvector is not a trusted extension and Neon's owner role (through
neon_superuser) may install it while ours, an ordinary role that owns only its database, may not. Projects share one
server, so the owner role can still open databases that grant CONNECT to PUBLIC (like `postgres`), but not another
project's database.

Point-in-time history: Neon keeps every change (WAL); the emulator keeps snapshots, taken when a test calls
`record_history()` (a `pg_dump` of every project), and a restore to a timestamp restores the newest snapshot at or
before it (400 when there is none, as Neon answers for a time before the branch's history).
Quotas (issue 21): `settings.quota` set on create or by PATCH is enforced as Neon does: once a period counter
(`active_time_seconds`, `compute_time_seconds`, `written_data_bytes`, `data_transfer_bytes`) reaches its quota, the
project's compute is suspended (its role may not log in, open sessions end: connections are refused) until the quota
is raised or removed (0). Tests drive the counters with `consume(project_id, ...)`. Every route together allows
`rate_limit_per_minute` requests a minute (700, Neon's limit per account), then answers 429 with Retry-After.

Switches, as attributes or flags: `latency_seconds`, `operation_delay_seconds`, `fault_rate` (random
423/429/500/503 from `fault_statuses`), `retry_after_seconds` (sent with 429), `projects_limit`, `required_org_id`;
`inject(status, ...)` queues deterministic faults. `requests` records (method, path, status) of every request.

By hand:  python -m tests.emulators.neon --port 8766 --admin-dsn postgresql://postgres:...@127.0.0.1:5432/postgres
then run the app with NEON_API_URL and NEON_API_KEY as the command prints.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import re
import secrets
import string
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, quote, urlsplit

import psycopg
from psycopg import sql

from tests.emulators.serving import ServedEmulator

API_PREFIX = "/api/v2"
TERMINAL_OPERATION_STATUSES = {"finished", "skipped", "cancelled"}
LOCKED_MESSAGE = "project already has running operations, scheduling of new ones is prohibited"
ORG_ID_PATTERN = re.compile(r"^[a-z0-9-]{1,60}$")
PROJECT_ID_PATTERN = re.compile(r"^[a-z0-9-]{1,60}$")
DEFAULT_API_KEY = "neon-emulator-api-key"
# The period counters a quota suspends the compute on (logical size is enforced per branch, on writes).
QUOTA_COUNTERS = ("active_time_seconds", "compute_time_seconds", "written_data_bytes", "data_transfer_bytes")

_ADJECTIVES = ("solitary", "lingering", "yellow", "jolly", "dry", "aged", "cool", "young", "quiet", "bold")
_NOUNS = ("cell", "surf", "dawn", "frost", "hall", "wildflower", "darkness", "forest", "river", "meadow")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_precise() -> str:
    # Operation cursors are timestamps; microseconds keep them distinct and ordered.
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _words() -> str:
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}"


def _alphanumerics(length: int = 8) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


@dataclass
class Fault:
    """One injected error answer. `after_handling` performs the request first, then loses its answer."""

    status: int
    method: str | None = None
    path: str | None = None  # a regular expression searched in the path after /api/v2, without the query
    after_handling: bool = False

    def matches(self, method: str, path: str) -> bool:
        method_matches = self.method is None or self.method == method
        return method_matches and (self.path is None or re.search(self.path, path) is not None)


@dataclass
class RecordedRequest:
    method: str
    path: str  # after /api/v2, with the query string
    status: int
    at: float = 0.0  # time.perf_counter() when its answer was ready to send


@dataclass
class _Project:
    data: dict
    branch: dict
    endpoint: dict
    database: dict
    role: dict
    password: str
    physical_database: str
    physical_role: str
    operations: list[dict] = field(default_factory=list)
    suspended: bool = False  # over its quota: the compute does not start
    period_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def running_operations(self) -> list[dict]:
        return [op for op in self.operations if op["status"] not in TERMINAL_OPERATION_STATUSES]


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, "request_id": str(uuid.uuid4())}
        self.headers = headers or {}


class NeonEmulator(ServedEmulator):
    """Start with `start()` (or as a context manager), point a client at `base_url`, `stop()` when done."""

    thread_name = "neon-emulator"

    def __init__(
        self,
        admin_dsn: str,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        pooler_host: str | None = None,
        operation_delay_seconds: float = 0.2,
        latency_seconds: float = 0.0,
        fault_rate: float = 0.0,
        fault_statuses: tuple[int, ...] = (423, 429, 500, 503),
        retry_after_seconds: int = 1,
        projects_limit: int | None = None,
        required_org_id: str | None = None,
        rate_limit_per_minute: int | None = 700,
    ) -> None:
        self.rate_limit_per_minute = rate_limit_per_minute
        self._request_times: list[float] = []  # the last minute's requests, for the rate limit
        self.admin_dsn = admin_dsn
        self.api_key = api_key
        self.host = host
        self.port = port
        self.operation_delay_seconds = operation_delay_seconds
        self.latency_seconds = latency_seconds
        self.fault_rate = fault_rate
        self.fault_statuses = fault_statuses
        self.retry_after_seconds = retry_after_seconds
        self.projects_limit = projects_limit
        self.required_org_id = required_org_id
        self.requests: list[RecordedRequest] = []
        # For benchmarks, (start, end) on time.perf_counter() of each stretch of the emulator's own work: every request
        # from the parsed request line to the response ready to send (header parsing, routing, the database work,
        # JSON encoding), and every finishing of operations in the background. Stretches may overlap.
        self.work_intervals: list[tuple[float, float]] = []
        admin = psycopg.conninfo.conninfo_to_dict(admin_dsn)
        self.database_host = admin.get("host") or "127.0.0.1"
        self.database_port = int(admin.get("port") or 5432)
        self.pooler_host = pooler_host or self.database_host
        self._faults: list[Fault] = []
        self._projects: dict[str, _Project] = {}  # insertion order is the listing order
        self._timers: set[threading.Timer] = set()
        self._lock = threading.RLock()
        self._background_connection: psycopg.Connection | None = None
        self._background_lock = threading.Lock()
        # Point-in-time history: project id -> [(taken at, pg_dump file)], oldest first (see record_history).
        self._history: dict[str, list[tuple[datetime.datetime, str]]] = {}
        self._history_folder = tempfile.mkdtemp(prefix="neon-emulator-history-")

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    def request_handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def bind_address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> NeonEmulator:
        super().start()
        self.port = self._server.server_address[1]  # the one picked when asked for port 0
        return self

    def stop(self, *, drop_projects: bool = True) -> None:
        """Stop serving; by default also drop every database and role the projects still hold."""
        super().stop()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            projects = list(self._projects.values()) if drop_projects else []
            if drop_projects:
                self._projects.clear()
        with self._background_lock:
            if self._background_connection is not None:
                self._background_connection.close()
                self._background_connection = None
        for project in projects:
            self._drop_physical(project)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{API_PREFIX}"

    # --- switches and inspection for tests ---------------------------------------------------------------------------

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        after_handling: bool = False,
    ) -> None:
        """Answer the next `times` matching requests with `status` (before the random `fault_rate` applies)."""
        with self._lock:
            self._faults.extend(Fault(status, method, path, after_handling) for _ in range(times))

    def reset(self) -> None:
        """Forget injected faults and recorded requests; switch faults and latency off. Projects stay."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.work_intervals.clear()
            self.fault_rate = 0.0
            self.latency_seconds = 0.0

    @property
    def project_ids(self) -> list[str]:
        with self._lock:
            return list(self._projects)

    def project_names(self) -> list[str]:
        with self._lock:
            return [project.data["name"] for project in self._projects.values()]

    def physical_database_name(self, project_id: str) -> str:
        return _physical_names(project_id)[0]

    def requests_matching(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    # --- request pipeline --------------------------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes, *, started: float | None = None
    ) -> tuple[int, dict, dict[str, str], Callable[[], None]]:
        """Returns (status, JSON body, extra headers, record). Runs on the server's request threads; `record()`
        files the request in `requests` and its time since `started` in `work_intervals`: call it when the response
        is ready to go."""
        started = time.perf_counter() if started is None else started
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        parts = urlsplit(raw_path)
        path = parts.path[len(API_PREFIX) :] if parts.path.startswith(API_PREFIX) else None
        recorded = (path or parts.path) + (f"?{parts.query}" if parts.query else "")
        try:
            if path is None:
                raise ApiError(404, "not found")
            self._authenticate(headers.get("authorization", ""))
            self._check_rate()
            fault = self._take_fault(method, path)
            if fault and not fault.after_handling:
                raise _fault_error(fault.status, self.retry_after_seconds)
            status, payload = self._route(method, path, dict(parse_qsl(parts.query)), body)
            if fault:
                raise _fault_error(fault.status, self.retry_after_seconds)
            extra: dict[str, str] = {}
        except ApiError as error:
            status, payload, extra = error.status, error.body, error.headers

        def record() -> None:
            with self._lock:
                now = time.perf_counter()
                self.requests.append(RecordedRequest(method, recorded, status, now))
                self.work_intervals.append((started, now))

        return status, payload, extra, record

    def _authenticate(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.api_key):
            raise ApiError(401, "authentication required: send Authorization: Bearer <API key>")

    def _check_rate(self) -> None:
        if not self.rate_limit_per_minute:
            return
        with self._lock:
            now = time.monotonic()
            self._request_times = [at for at in self._request_times if at > now - 60]
            if len(self._request_times) >= self.rate_limit_per_minute:
                wait = max(1, int(self._request_times[0] + 60 - now) + 1)
                raise ApiError(429, "rate limit exceeded", headers={"Retry-After": str(wait)})
            self._request_times.append(now)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(method, path):
                    return self._faults.pop(index)
            if self.fault_rate and random.random() < self.fault_rate:
                return Fault(random.choice(self.fault_statuses))
        return None

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, dict]:
        segments = [segment for segment in path.split("/") if segment]
        if segments == ["consumption_history", "projects"] and method == "GET":
            return 200, self.consumption_history(query)
        if segments[:1] != ["projects"]:
            raise ApiError(404, "not found")
        if len(segments) == 1:
            if method == "POST":
                return 201, self.create_project(_json_body(body))
            if method == "GET":
                return 200, self.list_projects(query)
        elif len(segments) == 2:
            project_id = segments[1]
            if method == "GET":
                return 200, self.get_project(project_id)
            if method == "PATCH":
                return 200, self.update_project(project_id, _json_body(body))
            if method == "DELETE":
                return 200, self.delete_project(project_id)
        elif len(segments) == 3 and segments[2] == "operations" and method == "GET":
            return 200, self.list_operations(segments[1], query)
        elif len(segments) == 4 and segments[2] == "operations" and method == "GET":
            return 200, self.get_operation(segments[1], segments[3])
        elif len(segments) == 3 and segments[2] == "branches" and method == "GET":
            return 200, self.list_branches(segments[1])
        elif len(segments) == 3 and segments[2] == "connection_uri" and method == "GET":
            return 200, self.connection_uri(segments[1], query)
        elif (
            len(segments) == 7
            and segments[2] == "branches"
            and segments[4] == "roles"
            and segments[6] == "reset_password"
            and method == "POST"
        ):
            return 200, self.reset_role_password(segments[1], segments[3], segments[5])
        elif len(segments) == 5 and segments[2] == "branches" and segments[4] == "restore" and method == "POST":
            return 200, self.restore_branch(segments[1], segments[3], _json_body(body))
        raise ApiError(404, "not found")

    # --- endpoints ---------------------------------------------------------------------------------------------------

    def create_project(self, request: dict) -> dict:
        spec = request.get("project")
        if not isinstance(spec, dict):
            raise ApiError(400, "invalid request: decode application/json: invalid: project (field required)")
        _validate_project_spec(spec)
        self._check_org(spec.get("org_id"))
        region = spec.get("region_id") or "aws-us-east-2"
        branch_spec = spec.get("branch") or {}
        database_name = branch_spec.get("database_name") or "neondb"
        role_name = branch_spec.get("role_name") or f"{database_name}_owner"
        endpoint_settings = dict(spec.get("default_endpoint_settings") or {})
        now = _now()
        with self._lock:
            if self.projects_limit is not None and len(self._projects) >= self.projects_limit:
                raise ApiError(
                    422,
                    f"user projects limit of {self.projects_limit} exceeded, got {len(self._projects)}",
                    code="PROJECTS_LIMIT_EXCEEDED",
                )
            project_id = f"{_words()}-{random.randint(10_000_000, 99_999_999)}"
            while project_id in self._projects:
                project_id = f"{_words()}-{random.randint(10_000_000, 99_999_999)}"
            branch_id = f"br-{_words()}-{_alphanumerics()}"
            endpoint_id = f"ep-{_words()}-{_alphanumerics()}"
            physical_database, physical_role = _physical_names(project_id)
            password = secrets.token_urlsafe(18)
            quota = ((spec.get("settings") or {}).get("quota")) or {}
            project_data = {
                "id": project_id,
                "platform_id": "aws",
                "region_id": region,
                "name": spec.get("name") or project_id,
                "provisioner": "k8s-neonvm",
                "pg_version": spec.get("pg_version", 17),
                "proxy_host": self.database_host,
                "default_endpoint_settings": endpoint_settings,
                "settings": {
                    "allowed_ips": {"ips": [], "protected_branches_only": False},
                    "enable_logical_replication": False,
                    "block_public_connections": False,
                    "block_vpc_connections": False,
                    **({"quota": quota} if quota else {}),
                },
                "branch_logical_size_limit": 512,
                "branch_logical_size_limit_bytes": 536870912,
                # Neon always sends it, in every project object (it starts at 0 for an empty project).
                "synthetic_storage_size": 0,
                "store_passwords": True,
                "creation_source": "console",
                "history_retention_seconds": spec.get("history_retention_seconds", 86400),
                "created_at": now,
                "updated_at": now,
                "consumption_period_start": "0001-01-01T00:00:00Z",
                "consumption_period_end": "0001-01-01T00:00:00Z",
                "data_storage_bytes_hour": 0,
                "data_transfer_bytes": 0,
                "written_data_bytes": 0,
                "compute_time_seconds": 0,
                "active_time_seconds": 0,
                "cpu_used_sec": 0,
                "owner_id": "00000000-0000-4000-8000-000000000000",
                **({"org_id": spec["org_id"]} if spec.get("org_id") else {}),
            }
            branch = {
                "id": branch_id, "project_id": project_id, "name": branch_spec.get("name") or "main",
                "current_state": "init", "pending_state": "ready", "state_changed_at": now,
                "creation_source": "console", "primary": True, "default": True, "protected": False,
                "cpu_used_sec": 0, "compute_time_seconds": 0, "active_time_seconds": 0, "written_data_bytes": 0,
                "data_transfer_bytes": 0, "created_at": now, "updated_at": now,
            }  # fmt: skip
            endpoint = {
                "host": self.database_host, "id": endpoint_id, "project_id": project_id, "branch_id": branch_id,
                "autoscaling_limit_min_cu": endpoint_settings.get("autoscaling_limit_min_cu", 0.25),
                "autoscaling_limit_max_cu": endpoint_settings.get("autoscaling_limit_max_cu", 0.25),
                "region_id": region, "type": "read_write", "current_state": "init", "pending_state": "active",
                "settings": {}, "pooler_enabled": False, "pooler_mode": "transaction", "disabled": False,
                "passwordless_access": True, "creation_source": "console", "created_at": now, "updated_at": now,
                "proxy_host": self.database_host,
                "suspend_timeout_seconds": endpoint_settings.get("suspend_timeout_seconds", 0),
                "provisioner": "k8s-neonvm",
            }  # fmt: skip
            project = _Project(
                data=project_data,
                branch=branch,
                endpoint=endpoint,
                database={
                    "id": random.randint(10_000_000, 99_999_999),
                    "branch_id": branch_id,
                    "name": database_name,
                    "owner_name": role_name,
                    "created_at": now,
                    "updated_at": now,
                },  # fmt: skip
                role={
                    "branch_id": branch_id,
                    "name": role_name,
                    "protected": False,
                    "created_at": now,
                    "updated_at": now,
                },  # fmt: skip
                password=password,
                physical_database=physical_database,
                physical_role=physical_role,
            )
            project.operations = [
                self._new_operation(project, "create_timeline", "running"),
                self._new_operation(project, "start_compute", "scheduling", endpoint_id=endpoint_id),
            ]
            # Reserved before the slow database work, so the limit holds under concurrent creates.
            self._projects[project_id] = project
            response = self._created_response(project)
        try:
            self._create_physical(project)
        except psycopg.Error as error:
            with self._lock:
                self._projects.pop(project_id, None)
            self._drop_physical(project, missing_ok=True)
            raise ApiError(500, f"internal error creating the project: {error.__class__.__name__}") from error
        self._finish_later(project, enable_login=True)
        return response

    def list_projects(self, query: dict[str, str]) -> dict:
        self._check_org(query.get("org_id"))
        limit = _int_parameter(query, "limit", 10, 1, 400)
        search = query.get("search", "").lower()
        cursor = query.get("cursor")
        with self._lock:
            projects = list(self._projects.values())
            if cursor:
                ids = [project.data["id"] for project in projects]
                projects = projects[ids.index(cursor) + 1 :] if cursor in ids else []
            matching = [p for p in projects if search in p.data["name"].lower() or search in p.data["id"].lower()][
                :limit
            ]
            items = [_list_item(project) for project in matching]
        return {
            "projects": items,
            # Neon's Pagination requires a non-empty cursor and the limit: an empty page has no pagination at all.
            **({"pagination": {"cursor": items[-1]["id"], "limit": limit}} if items else {}),
            "applications": {},
            "integrations": {},
            "unavailable_project_ids": [],
        }

    def get_project(self, project_id: str) -> dict:
        with self._lock:
            project = self._project(project_id)
            # compute_last_active_at is omitted, as Neon omits it, while no endpoint of the project has been active.
            return {"project": dict(project.data)}

    def update_project(self, project_id: str, request: dict) -> dict:
        changes = request.get("project")
        if not isinstance(changes, dict):
            raise ApiError(400, "invalid request: decode application/json: invalid: project (field required)")
        with self._lock:
            project = self._unlocked_project(project_id)
            for key in ("name", "history_retention_seconds"):
                if key in changes:
                    project.data[key] = changes[key]
            for key in ("settings", "default_endpoint_settings"):
                if key in changes:
                    project.data[key] = {**project.data.get(key, {}), **changes[key]}
            project.data["updated_at"] = _now()
            self._enforce_quota(project)
            return {"project": dict(project.data), "operations": []}

    def consumption_history(self, query: dict[str, str]) -> dict:
        """This period's counters per project, as one monthly timeframe; reading them wakes no compute."""
        granularity = query.get("granularity")
        if granularity not in {"hourly", "daily", "monthly"}:
            raise ApiError(400, "invalid request: granularity must be one of hourly, daily, monthly")
        for name in ("from", "to"):
            if not query.get(name):
                raise ApiError(400, f"invalid request: {name} (field required)")
        limit = _int_parameter(query, "limit", 10, 1, 100)
        wanted = [pid for pid in query.get("project_ids", "").split(",") if pid]
        if len(wanted) > 100:
            raise ApiError(400, "invalid request: at most 100 project_ids")
        cursor = query.get("cursor")
        with self._lock:
            projects = [p for p in self._projects.values() if not wanted or p.data["id"] in wanted]
            if cursor:
                ids = [p.data["id"] for p in projects]
                projects = projects[ids.index(cursor) + 1 :] if cursor in ids else []
            page = projects[:limit]
        items = []
        for project in page:
            data = project.data
            items.append({
                "project_id": data["id"],
                "periods": [{
                    "period_id": project.period_id, "period_plan": "scale", "period_start": query["from"],
                    "consumption": [{
                        "timeframe_start": query["from"], "timeframe_end": query["to"],
                        "active_time_seconds": data["active_time_seconds"],
                        "compute_time_seconds": data["compute_time_seconds"],
                        "written_data_bytes": data["written_data_bytes"],
                        "synthetic_storage_size_bytes": self._storage_size(project),
                    }],
                }],
            })  # fmt: skip
        pagination = {"cursor": items[-1]["project_id"], "limit": limit} if items else None
        return {"projects": items, **({"pagination": pagination} if pagination else {})}

    def _storage_size(self, project: _Project) -> int:
        """The project's database size, read from the server's catalogue (no session in the tenant's database)."""
        try:
            with self._admin_connection() as connection:
                row = connection.execute("SELECT pg_database_size(%s)", [project.physical_database]).fetchone()
        except psycopg.Error:
            return 0
        return int(row[0]) if row else 0

    def consume(self, project_id: str, **metrics: int) -> bool:
        """Add consumption to a project's period counters (active_time_seconds=..., written_data_bytes=...), as
        its compute would; returns whether the project is now suspended over its quota."""
        with self._lock:
            project = self._project(project_id)
            for metric, amount in metrics.items():
                if metric not in QUOTA_COUNTERS:
                    raise ValueError(f"unknown metric {metric}")
                project.data[metric] = int(project.data.get(metric, 0)) + amount
            self._enforce_quota(project)
            return project.suspended

    def is_suspended(self, project_id: str) -> bool:
        with self._lock:
            return self._project(project_id).suspended

    def _enforce_quota(self, project: _Project) -> None:
        """Suspend the compute once a counter reaches its quota (0 is unlimited); resume when none does. Called
        under the lock."""
        quota = (project.data.get("settings") or {}).get("quota") or {}
        over = any(quota.get(name) and project.data.get(name, 0) >= quota[name] for name in QUOTA_COUNTERS)
        if over == project.suspended:
            return
        project.suspended = over
        project.endpoint.update(current_state="idle" if over else "active")
        role = sql.Identifier(project.physical_role)
        with self._admin_connection() as connection:
            if over:
                connection.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [project.physical_role]
                )
            else:
                connection.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))

    def delete_project(self, project_id: str) -> dict:
        with self._lock:
            project = self._unlocked_project(project_id)
            del self._projects[project_id]
        self._drop_physical(project)
        return {"project": project.data}

    def list_operations(self, project_id: str, query: dict[str, str]) -> dict:
        limit = _int_parameter(query, "limit", 10, 1, 1000)
        cursor = query.get("cursor")
        with self._lock:
            project = self._project(project_id)
            # Newest first, as Neon lists them; the cursor is the created_at of the last one returned.
            operations = sorted(project.operations, key=lambda op: op["created_at"], reverse=True)
            if cursor:
                operations = [op for op in operations if op["created_at"] < cursor]
            page = [dict(op) for op in operations[:limit]]
        return {
            "operations": page,
            **({"pagination": {"cursor": page[-1]["created_at"], "limit": limit}} if page else {}),
        }

    def get_operation(self, project_id: str, operation_id: str) -> dict:
        with self._lock:
            project = self._project(project_id)
            for operation in project.operations:
                if operation["id"] == operation_id:
                    return {"operation": dict(operation)}
        raise ApiError(404, "operation not found")

    def connection_uri(self, project_id: str, query: dict[str, str]) -> dict:
        for required in ("database_name", "role_name"):
            if not query.get(required):
                raise ApiError(400, f"invalid request: query parameter {required} is required")
        pooled = query.get("pooled", "false").lower() in {"true", "1"}
        with self._lock:
            project = self._project(project_id)
            if query.get("branch_id") not in (None, project.branch["id"]):
                raise ApiError(404, "branch not found")
            if query.get("endpoint_id") not in (None, project.endpoint["id"]):
                raise ApiError(404, "endpoint not found")
            if query["database_name"] != project.database["name"]:
                raise ApiError(404, "database not found")
            if query["role_name"] != project.role["name"]:
                raise ApiError(404, "role not found")
            return {"uri": self._uri(project, pooled=pooled)}

    def list_branches(self, project_id: str) -> dict:
        with self._lock:
            project = self._project(project_id)
            return {"branches": [dict(project.branch)], "annotations": {}}

    def reset_role_password(self, project_id: str, branch_id: str, role_name: str) -> dict:
        with self._lock:
            project = self._unlocked_project(project_id)
            if branch_id != project.branch["id"]:
                raise ApiError(404, "branch not found")
            if role_name != project.role["name"]:
                raise ApiError(404, "role not found")
            project.password = secrets.token_urlsafe(18)
            operation = self._new_operation(project, "apply_config", "running", endpoint_id=project.endpoint["id"])
            project.operations.append(operation)
            response = {"role": {**project.role, "password": project.password}, "operations": [dict(operation)]}
        # The new password works, and the old one stops working, when the operation finishes.
        self._finish_later(project, new_password=project.password)
        return response

    def restore_branch(self, project_id: str, branch_id: str, request: dict) -> dict:
        with self._lock:
            project = self._unlocked_project(project_id)
            if branch_id != project.branch["id"]:
                raise ApiError(404, "branch not found")
            if request.get("source_branch_id") != branch_id:
                raise ApiError(400, "the emulator restores a branch from its own history only")
            if not request.get("preserve_under_name"):
                raise ApiError(400, "preserve_under_name is required when restoring a branch from itself")
            try:
                moment = datetime.datetime.fromisoformat(str(request.get("source_timestamp")).replace("Z", "+00:00"))
            except ValueError:
                raise ApiError(400, "source_timestamp must be an ISO 8601 date-time") from None
            snapshots = [path for taken, path in self._history.get(project_id, []) if taken <= moment]
            if not snapshots:
                raise ApiError(400, f"{request['source_timestamp']} is before the start of the branch's history")
            operation = self._new_operation(project, "create_timeline", "running")
            project.operations.append(operation)
        self._restore_physical(project, snapshots[-1])
        self._finish_later(project)
        return {"branch": dict(project.branch), "operations": [dict(operation)]}

    def record_history(self) -> datetime.datetime:
        """A point of every project's history (what Neon keeps continuously): a pg_dump of its database now."""
        from vectordb.dumps import database_dump

        with self._lock:
            projects = list(self._projects.values())
        taken = datetime.datetime.now(datetime.UTC)
        for project in projects:
            path = f"{self._history_folder}/{project.data['id']}-{len(self._history.get(project.data['id'], []))}.dump"
            database_dump(psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=project.physical_database), path)
            with self._lock:
                self._history.setdefault(project.data["id"], []).append((taken, path))
        return taken

    def _restore_physical(self, project: _Project, dump_path: str) -> None:
        from pathlib import Path

        from vectordb.dumps import database_restore

        role = sql.Identifier(project.physical_role)
        project_dsn = psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=project.physical_database)
        with psycopg.connect(project_dsn, autocommit=True, connect_timeout=10) as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [project.physical_database],
            )
            connection.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(role))
            connection.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(project.physical_database), role))  # fmt: skip
        database_restore(Path(dump_path), self._uri(project, pooled=False))

    # --- helpers -----------------------------------------------------------------------------------------------------

    def _project(self, project_id: str) -> _Project:
        project = self._projects.get(project_id)
        if project is None:
            raise ApiError(404, "project not found")
        return project

    def _unlocked_project(self, project_id: str) -> _Project:
        project = self._project(project_id)
        if project.running_operations():
            raise ApiError(423, LOCKED_MESSAGE)
        return project

    def _check_org(self, org_id: str | None) -> None:
        if self.required_org_id is None:
            return
        if not org_id:
            raise ApiError(400, "org_id is required")
        if org_id != self.required_org_id:
            raise ApiError(404, "account is not a member of org")

    def _new_operation(self, project: _Project, action: str, status: str, endpoint_id: str | None = None) -> dict:
        now = _now_precise()
        operation = {
            "id": str(uuid.uuid4()),
            "project_id": project.data["id"],
            "branch_id": project.branch["id"],
            "action": action,
            "status": status,
            "failures_count": 0,
            "created_at": now,
            "updated_at": now,
            "total_duration_ms": 0,
        }
        if endpoint_id:
            operation["endpoint_id"] = endpoint_id
        return operation

    def _created_response(self, project: _Project) -> dict:
        direct = self._uri(project, pooled=False)
        return {
            "project": dict(project.data),
            "connection_uris": [
                {
                    "connection_uri": direct,
                    "connection_parameters": {
                        "database": project.database["name"],
                        "password": project.password,
                        "role": project.role["name"],
                        "host": self.database_host,
                        "pooler_host": self.pooler_host,
                    },
                }
            ],
            "roles": [{**project.role, "password": project.password}],
            "databases": [dict(project.database)],
            "operations": [dict(op) for op in project.operations],
            "branch": dict(project.branch),
            "endpoints": [dict(project.endpoint)],
        }

    def _uri(self, project: _Project, *, pooled: bool) -> str:
        host = self.pooler_host if pooled else self.database_host
        return (
            f"postgresql://{project.physical_role}:{quote(project.password, safe='')}"
            f"@{host}:{self.database_port}/{project.physical_database}"
        )

    def _finish_later(self, project: _Project, *, enable_login: bool = False, new_password: str | None = None) -> None:
        def finish() -> None:
            started = time.perf_counter()
            with self._lock:
                self._timers.discard(timer)
                if project.data["id"] not in self._projects:
                    return
            try:
                with self._background_admin() as connection:
                    if new_password is not None:
                        connection.execute(
                            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                                sql.Identifier(project.physical_role), sql.Literal(new_password)
                            )
                        )
                        # "Connections to the compute endpoint are dropped" (the spec, on resetting a password).
                        connection.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                            [project.physical_role],
                        )
                    if enable_login:
                        connection.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(project.physical_role)))
                status = "finished"
            except psycopg.Error:
                status = "error"
            # The role is ready before anyone can see the operations finished.
            with self._lock:
                now = _now_precise()
                for operation in project.operations:
                    if operation["status"] not in TERMINAL_OPERATION_STATUSES:
                        operation.update(status=status, updated_at=now,
                                         total_duration_ms=int(self.operation_delay_seconds * 1000))  # fmt: skip
                # Nothing pending any more: Neon then omits `pending_state` (the spec types it a string, not null).
                project.branch.update(current_state="ready")
                project.branch.pop("pending_state", None)
                project.endpoint.update(current_state="active")
                project.endpoint.pop("pending_state", None)
                self.work_intervals.append((started, time.perf_counter()))

        timer = threading.Timer(self.operation_delay_seconds, finish)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def _admin_connection(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10)

    @contextlib.contextmanager
    def _background_admin(self) -> Iterator[psycopg.Connection]:
        """One administrator connection kept for finishing operations, one finishing at a time: a new connection
        for each (a backend start and a SCRAM login) cost more than the work, and that is not Neon's cost."""
        with self._background_lock:
            if self._background_connection is None or self._background_connection.closed:
                self._background_connection = self._admin_connection()
            try:
                yield self._background_connection
            except psycopg.Error:
                self._background_connection.close()  # the next finishing opens another
                raise

    def _create_physical(self, project: _Project) -> None:
        role = sql.Identifier(project.physical_role)
        database = sql.Identifier(project.physical_database)
        with self._admin_connection() as connection:
            # NOLOGIN until the project's operations finish: "created" is not "ready". Not a superuser: the projects
            # share one server here, and a superuser could reach every other tenant's database.
            connection.execute(
                sql.SQL(
                    "CREATE ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOLOGIN PASSWORD {}"
                ).format(role, sql.Literal(project.password))  # fmt: skip
            )
            connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
            connection.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
        # On Neon the owner role may create pgvector (through neon_superuser); here it may not (pgvector is not a
        # trusted extension), so the project comes with it, and the client's CREATE EXTENSION IF NOT EXISTS is a no-op.
        project_dsn = psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=project.physical_database)
        with psycopg.connect(project_dsn, autocommit=True, connect_timeout=10) as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def _drop_physical(self, project: _Project, *, missing_ok: bool = False) -> None:
        try:
            self._drop_physical_objects(project)
        except psycopg.Error:
            if not missing_ok:
                raise

    def _drop_physical_objects(self, project: _Project) -> None:
        with self._admin_connection() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(project.physical_database))
            )
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(project.physical_role)))


def _physical_names(project_id: str) -> tuple[str, str]:
    base = "neonemu_" + project_id.replace("-", "_")
    return base, f"{base}_owner"


def _fault_error(status: int, retry_after_seconds: int) -> ApiError:
    if status == 423:
        return ApiError(423, LOCKED_MESSAGE)
    if status == 429:
        return ApiError(429, "rate limit exceeded", headers={"Retry-After": str(retry_after_seconds)})
    return ApiError(status, "injected failure" if status < 500 else "internal server error")


def _json_body(body: bytes) -> dict:
    try:
        parsed = json.loads(body or b"{}")
    except json.JSONDecodeError as error:
        raise ApiError(400, f"invalid request: decode application/json: {error}") from None
    if not isinstance(parsed, dict):
        raise ApiError(400, "invalid request: decode application/json: expected an object")
    return parsed


def _int_parameter(query: dict[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid request: {name} must be an integer") from None
    if not minimum <= value <= maximum:
        raise ApiError(400, f"invalid request: {name} must be between {minimum} and {maximum}")
    return value


def _validate_project_spec(spec: dict) -> None:
    def invalid(message: str) -> ApiError:
        return ApiError(400, f"invalid request: {message}")

    name = spec.get("name")
    if name is not None and not (isinstance(name, str) and 1 <= len(name) <= 256):
        raise invalid("project.name must be a string of 1 to 256 characters")
    pg_version = spec.get("pg_version")
    if pg_version is not None and not (isinstance(pg_version, int) and 14 <= pg_version <= 18):
        raise invalid("project.pg_version must be an integer from 14 to 18")
    org_id = spec.get("org_id")
    if org_id is not None and not (isinstance(org_id, str) and ORG_ID_PATTERN.match(org_id)):
        raise invalid("project.org_id must match ^[a-z0-9-]{1,60}$")
    retention = spec.get("history_retention_seconds")
    if retention is not None and not (isinstance(retention, int) and 0 <= retention <= 2592000):
        raise invalid("project.history_retention_seconds must be from 0 to 2592000")
    endpoint_settings = spec.get("default_endpoint_settings") or {}
    for key in ("autoscaling_limit_min_cu", "autoscaling_limit_max_cu"):
        value = endpoint_settings.get(key)
        if value is not None and not (isinstance(value, int | float) and value >= 0.25):
            raise invalid(f"project.default_endpoint_settings.{key} must be at least 0.25")
    suspend = endpoint_settings.get("suspend_timeout_seconds")
    if suspend is not None and not (isinstance(suspend, int) and -1 <= suspend <= 604800):
        raise invalid("project.default_endpoint_settings.suspend_timeout_seconds must be from -1 to 604800")
    quota = ((spec.get("settings") or {}).get("quota")) or {}
    for key, value in quota.items():
        if not (isinstance(value, int) and value >= 0):
            raise invalid(f"project.settings.quota.{key} must be a non-negative integer")


def _list_item(project: _Project) -> dict:
    data = project.data
    keys = (
        "id", "platform_id", "region_id", "name", "provisioner", "pg_version", "proxy_host",
        "default_endpoint_settings", "settings", "branch_logical_size_limit", "branch_logical_size_limit_bytes",
        "store_passwords", "cpu_used_sec", "creation_source", "history_retention_seconds", "created_at",
        "synthetic_storage_size",
        "updated_at", "owner_id", "org_id",
    )  # fmt: skip
    item = {key: data[key] for key in keys if key in data}
    item.update(active_time=data["active_time_seconds"])  # quota_reset_at (deprecated) is omitted, as Neon does
    return item


class _Handler(BaseHTTPRequestHandler):
    emulator: NeonEmulator
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle's algorithm on, Linux holds the second ~40 ms.
    disable_nagle_algorithm = True

    def parse_request(self) -> bool:
        self._started = time.perf_counter()  # the request line is in: from here on the time is the server's
        return super().parse_request()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, payload, extra, record = self.emulator.handle(
            self.command, self.path, headers, body, started=self._started
        )
        encoded = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.send_header("X-Neon-Ret-Request-Id", str(uuid.uuid4()))
        for key, value in extra.items():
            self.send_header(key, value)
        record()  # before the response leaves, so a client that has it finds it recorded
        self.end_headers()
        self.wfile.write(encoded)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args) -> None:  # quiet: tests read `emulator.requests` instead
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a Neon API v2 emulator backed by a real PostgreSQL server.")
    parser.add_argument("--admin-dsn", required=True, help="superuser DSN of the server that hosts project databases")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--pooler-host", default=None, help="host in pooled URIs (default: the admin server's host)")
    parser.add_argument("--operation-delay", type=float, default=0.5, help="seconds until operations finish")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests answered 423/429/500/503")
    parser.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds sent with 429")
    parser.add_argument("--projects-limit", type=int, default=None, help="422 PROJECTS_LIMIT_EXCEEDED beyond this")
    parser.add_argument("--org-id", default=None, help="require this org_id on GET/POST /projects")
    arguments = parser.parse_args()
    emulator = NeonEmulator(
        arguments.admin_dsn,
        api_key=arguments.api_key,
        host=arguments.host,
        port=arguments.port,
        pooler_host=arguments.pooler_host,
        operation_delay_seconds=arguments.operation_delay,
        latency_seconds=arguments.latency,
        fault_rate=arguments.fault_rate,
        retry_after_seconds=arguments.retry_after,
        projects_limit=arguments.projects_limit,
        required_org_id=arguments.org_id,
    ).start()
    print(f"Neon API emulator on {emulator.base_url}", flush=True)
    print(f"  NEON_API_URL={emulator.base_url} NEON_API_KEY={emulator.api_key} TENANT_PROVIDER=neon", flush=True)
    emulator.serve_until_stopped()  # stopping drops the projects' databases and roles


if __name__ == "__main__":
    main()
