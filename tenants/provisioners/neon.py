"""Tenant databases on Neon: one project per tenant, through the Neon API v2 (see shared/reference/neon-api.md).

A project is found again by its name (`silo-<tenant_key>`), so a retried `create` finishes what an earlier attempt
started instead of making a second project. 423, 429 and 5xx answers and network errors are retried with bounded
exponential back-off; every request has a timeout. Credentials (the API key, connection URIs) are never logged.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

from tenants.provisioners.base import DatabaseMissing, ProvisionedDatabase, ProvisioningError, QuotaExceeded
from vectordb.dsn import Dsn

logger = logging.getLogger(__name__)

SERVER_NAME = "neon"
PROJECT_NAME_PREFIX = "silo-"
# A warm-pool project until a claim names it for its tenant (`silo-<key>`); both start with PROJECT_NAME_PREFIX.
POOL_PROJECT_NAME_PREFIX = "silo-pool-"
# Asked for explicitly at creation, so a project found by search needs no extra look-up of its names.
BRANCH_NAME = "main"
DATABASE_NAME = "neondb"
ROLE_NAME = "neondb_owner"
# "failed" is not terminal (Neon may retry it); "error" is the one status that will not finish.
TERMINAL_OPERATION_STATUSES = frozenset({"finished", "skipped", "cancelled"})
FAILED_OPERATION_STATUSES = frozenset({"error"})
RETRYABLE_STATUSES = frozenset({423, 429, 500, 502, 503, 504})
LIST_PAGE_SIZE = 400  # the most GET /projects returns at once
CONSUMPTION_PAGE_SIZE = 100  # the most project ids one consumption request takes


class RequestRate:
    """A token bucket: Neon allows 700 requests a minute per account, with bursts. This keeps one process's
    consumption sweep under the rate; should the account's other traffic push it over, `_request` waits out the 429
    (Retry-After)."""

    def __init__(self, per_minute: int, burst: int):
        self.per_second = per_minute / 60.0
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
            self._at = now
            self._tokens -= 1
            wait = -self._tokens / self.per_second if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)  # in workers and commands only: no request handler calls the Neon API


CONSUMPTION_RATE = RequestRate(settings.NEON_API_REQUESTS_PER_MINUTE, burst=40)


class NeonProvisioner:
    name = "neon"

    def __init__(
        self,
        *,
        api_key: str,
        api_url: str,
        region: str,
        org_id: str = "",
        pg_version: int = 17,
        autoscaling_min_cu: float = 0.25,
        autoscaling_max_cu: float = 1.0,
        suspend_timeout_seconds: int = 300,
        quota_logical_size_bytes: int = 0,
        request_timeout_seconds: float = 30.0,
        max_retries: int = 6,
        operation_timeout_seconds: float = 300.0,
        retry_base_delay_seconds: float = 0.5,
        retry_max_delay_seconds: float = 30.0,
        poll_interval_seconds: float = 2.0,
    ) -> None:
        if not api_key:
            raise ImproperlyConfigured("The neon provider needs NEON_API_KEY (a Neon API key).")
        self.api_url = api_url.rstrip("/")
        self.region = region
        self.org_id = org_id
        self.pg_version = pg_version
        self.autoscaling_min_cu = autoscaling_min_cu
        self.autoscaling_max_cu = autoscaling_max_cu
        self.suspend_timeout_seconds = suspend_timeout_seconds
        self.quota_logical_size_bytes = quota_logical_size_bytes
        self.request_timeout_seconds = request_timeout_seconds
        self.max_retries = max_retries
        self.operation_timeout_seconds = operation_timeout_seconds
        self.retry_base_delay_seconds = retry_base_delay_seconds
        self.retry_max_delay_seconds = retry_max_delay_seconds
        self.poll_interval_seconds = poll_interval_seconds
        self._api_key = api_key
        self._http: httpx.Client | None = None
        self._http_pid = 0
        self._http_lock = threading.Lock()

    @classmethod
    def from_settings(cls, **overrides: Any) -> NeonProvisioner:
        """One instance per process and configuration, so its HTTP connection (TLS included) is reused."""
        options: dict[str, Any] = {
            "api_key": settings.NEON_API_KEY,
            "api_url": settings.NEON_API_URL,
            "region": settings.NEON_REGION,
            "org_id": settings.NEON_ORG_ID,
            "pg_version": settings.NEON_PG_VERSION,
            "autoscaling_min_cu": settings.NEON_AUTOSCALING_MIN_CU,
            "autoscaling_max_cu": settings.NEON_AUTOSCALING_MAX_CU,
            "suspend_timeout_seconds": settings.NEON_SUSPEND_TIMEOUT_SECONDS,
            "quota_logical_size_bytes": settings.NEON_QUOTA_LOGICAL_SIZE_BYTES,
            "request_timeout_seconds": settings.NEON_REQUEST_TIMEOUT_SECONDS,
            "max_retries": settings.NEON_MAX_RETRIES,
            "operation_timeout_seconds": settings.NEON_OPERATION_TIMEOUT_SECONDS,
            "retry_base_delay_seconds": settings.NEON_RETRY_BASE_DELAY_SECONDS,
            "retry_max_delay_seconds": settings.NEON_RETRY_MAX_DELAY_SECONDS,
            "poll_interval_seconds": settings.NEON_POLL_INTERVAL_SECONDS,
        }
        options.update(overrides)
        return _provisioner_for(tuple(sorted(options.items())))

    def __repr__(self) -> str:  # keep the API key out of logs and tracebacks
        return f"NeonProvisioner(api_url={self.api_url!r}, region={self.region!r})"

    # --- the Provisioner interface -----------------------------------------------------------------------------------

    def create(
        self, tenant_key: str, region: str | None = None, *, first_attempt: bool = False, pooled: bool = False
    ) -> ProvisionedDatabase:
        """The tenant's project, created or found again, with its operations finished. pgvector comes with the
        schema: `tenant_database_prepare` installs it in the same transaction as the migration.

        `first_attempt`: no earlier attempt for this tenant key exists (keys are random and never reused), so no
        project can carry its name yet and the search before the first POST is skipped.
        """
        project_name = (POOL_PROJECT_NAME_PREFIX if pooled else PROJECT_NAME_PREFIX) + tenant_key
        client = self._client()
        project, created = self._find_or_create_project(
            client, project_name, region or self.region, search_first=not first_attempt
        )
        if created is None:  # found by a search: ask for its state and addresses
            self._wait_for_operations(client, project["id"])
            database = self._connection_details(client, project)
        else:
            self._wait_for_operations(client, project["id"], started=created.get("operations", []))
            database = self._created_connection_details(project, created) or self._connection_details(client, project)
            # A project we just made: empty. Its branch is kept for a claim's password reset.
            branch_id = (created.get("branch") or {}).get("id") or ""
            database = dataclasses.replace(database, new_database=True, branch_id=branch_id)
        logger.info("Neon project %s ready for tenant %s", project["id"], tenant_key)
        return database

    def locate(self, tenant_key: str) -> tuple[str, str] | None:
        names = {PROJECT_NAME_PREFIX + tenant_key, POOL_PROJECT_NAME_PREFIX + tenant_key}
        project = self._find_project(self._client(), tenant_key, names=names)
        return (SERVER_NAME, project["id"]) if project else None

    def credentials_rotate(
        self,
        external_id: str,
        server: str,
        tenant_key: str,
        *,
        current: dict[str, str] | None = None,
        quota: dict[str, int] | None = None,
    ) -> ProvisionedDatabase:
        """Name the project for its tenant (with `quota` as its `settings.quota`, in the same PATCH), reset the owner
        role's password and wait for the reset to finish: until then Neon keeps the old password valid, after it the
        old one fails and open connections are dropped. `details` of the answer: the project, as the PATCH left it.

        `current`: the registry's credentials. Their branch id spares listing the branches, and the reset's answer
        carries the new password, so the new URIs are the current ones with it (a reset changes nothing else): the PATCH,
        the reset and its polls, where a separate quota sync, the branch list and two URI look-ups made it seven
        requests. Without them, Neon is asked."""
        client = self._client()
        path = f"/projects/{external_id}"
        changes: dict[str, Any] = {"name": PROJECT_NAME_PREFIX + tenant_key}
        if quota is not None:
            changes["settings"] = {"quota": quota}
        rename = {"project": changes}
        # Renaming schedules no operation, so it goes first, and says whether the project is there. A reset that an
        # interrupted attempt started locks the project (423) until its operation finishes: wait, then rename.
        renamed = self._send(client, "PATCH", path, json=rename)
        if renamed.status_code == 423:
            self._wait_for_operations(client, external_id, accept_not_found=True)
        if renamed.status_code >= 400 and renamed.status_code != 404:
            renamed = self._request(client, "PATCH", path, json=rename, accept_not_found=True)
        if renamed.status_code == 404:
            raise DatabaseMissing(f"Neon project {external_id} does not exist")
        project = renamed.json()["project"]
        current = current or {}
        branch_id = current.get("branch_id") or ""
        reset = self._reset_password(client, external_id, branch_id) if branch_id else None
        if reset is None:  # no branch id kept, or it is gone: the project's own list says which
            branch_id = self._branch_id(client, external_id)
            reset = self._reset_password(client, external_id, branch_id)
            if reset is None:
                raise ProvisioningError(f"Neon project {external_id}: its {BRANCH_NAME} branch is gone")
        self._wait_for_operations(client, external_id, started=reset.get("operations", []))
        password = (reset.get("role") or {}).get("password") or ""
        uris = _with_password(current, password) if password else None
        if uris is None:
            database = self._connection_details(client, project)
        else:
            database = self._database(project, pooled=uris[0], direct=uris[1])
        return dataclasses.replace(database, branch_id=branch_id, details=project)

    def _branch_id(self, client: httpx.Client, project_id: str) -> str:
        listed = self._request(client, "GET", f"/projects/{project_id}/branches").json().get("branches", [])
        branch = next((b for b in listed if b.get("name") == BRANCH_NAME), None) or next(
            (b for b in listed if b.get("default")), None
        )
        if branch is None:
            raise ProvisioningError(f"Neon project {project_id} has no {BRANCH_NAME} branch")
        return branch["id"]

    def _reset_password(self, client: httpx.Client, project_id: str, branch_id: str) -> dict | None:
        """The owner role's new password and the reset's operations; None when Neon knows no such branch."""
        path = f"/projects/{project_id}/branches/{branch_id}/roles/{ROLE_NAME}/reset_password"
        response = self._request(client, "POST", path, accept_not_found=True)
        return None if response.status_code == 404 else response.json()

    def branch_restore(self, external_id: str, timestamp: str) -> None:
        """Point-in-time restore (tenants.archives): the project's branch back to `timestamp` (ISO 8601) with Neon's
        branch restore endpoint, its state until then kept as a branch named for the moment; returns when the
        restore's operations have finished. Neon switches the branch in one step: readers see the old state or the
        restored one."""
        client = self._client()
        path = f"/projects/{external_id}"
        branch_id = self._branch_id(client, external_id)
        self._wait_for_operations(client, external_id)  # a running operation would answer 423
        preserved = "silo-before-restore-" + "".join(ch for ch in timestamp if ch.isdigit())[:14]
        body = {"source_branch_id": branch_id, "source_timestamp": timestamp, "preserve_under_name": preserved}
        response = self._send(client, "POST", f"{path}/branches/{branch_id}/restore", json=body)
        if response.status_code >= 400:
            code, message = _error_details(response)
            raise ProvisioningError(f"Neon refused the point-in-time restore of {external_id}: {message or code}")
        self._wait_for_operations(client, external_id, started=response.json().get("operations", []))

    def delete(self, external_id: str, server: str = SERVER_NAME) -> None:
        client = self._client()
        # Neon answers 423 while operations run, so wait for them first; 404 means an earlier attempt deleted it.
        found = self._wait_for_operations(client, external_id, accept_not_found=True)
        if found:
            response = self._request(client, "DELETE", f"/projects/{external_id}", accept_not_found=True)
            found = response.status_code != 404
        logger.info("Neon project %s %s", external_id, "deleted" if found else "already gone")

    def dsn(self, external_id: str, server: str = SERVER_NAME) -> ProvisionedDatabase:
        client = self._client()
        response = self._request(client, "GET", f"/projects/{external_id}", accept_not_found=True)
        if response.status_code == 404:
            raise ProvisioningError(f"Neon project {external_id} does not exist")
        project = response.json()["project"]
        # A password reset takes effect when its operation finishes.
        self._wait_for_operations(client, external_id)
        return self._connection_details(client, project)

    def list_databases(self) -> list[tuple[str, str]]:
        """(server, project id) of every project named with our prefix, for reconciliation."""
        projects = self._list_projects(self._client(), search=PROJECT_NAME_PREFIX)
        return [
            (SERVER_NAME, project["id"])
            for project in projects
            if str(project.get("name", "")).startswith(PROJECT_NAME_PREFIX)
        ]

    # --- quotas and consumption (issue 21) ----------------------------------------------------------------------------

    def quota_set(self, external_id: str, quota: dict[str, int]) -> dict:
        """PATCH the project's `settings.quota` (0 is unlimited); returns the project as Neon answers it."""
        body = {"project": {"settings": {"quota": quota}}}
        response = self._request(self._client(), "PATCH", f"/projects/{external_id}", json=body)
        return response.json().get("project", {})

    def consumption(self, project_ids: list[str], since: datetime.date) -> dict[str, dict[str, int]]:
        """This billing period's consumption per project, from `GET /consumption_history/projects` (100 projects a
        request, monthly granularity); reading it does not wake a compute. Timeframes are summed per metric, except
        storage, which is the latest figure."""
        totals: dict[str, dict[str, int]] = {}
        start = f"{since:%Y-%m-%d}T00:00:00Z"
        end = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:00:00Z}"
        for first in range(0, len(project_ids), CONSUMPTION_PAGE_SIZE):
            batch = project_ids[first : first + CONSUMPTION_PAGE_SIZE]
            params = {"project_ids": ",".join(batch), "from": start, "to": end, "granularity": "monthly",
                      "limit": CONSUMPTION_PAGE_SIZE}  # fmt: skip
            if self.org_id:
                params["org_id"] = self.org_id
            CONSUMPTION_RATE.take()  # a fleet-wide sweep: paced, so it never crowds out provisioning's requests
            body = self._request(self._client(), "GET", "/consumption_history/projects", params=params).json()
            for project in body.get("projects", []):
                summed: dict[str, int] = {}
                for period in project.get("periods", []):
                    for frame in period.get("consumption", []):
                        for metric, value in frame.items():
                            if metric.startswith("timeframe_") or not isinstance(value, int):
                                continue
                            if metric == "synthetic_storage_size_bytes":
                                summed[metric] = value
                            else:
                                summed[metric] = summed.get(metric, 0) + value
                totals[project["project_id"]] = summed
        return totals

    # --- steps -------------------------------------------------------------------------------------------------------

    def _find_or_create_project(
        self, client: httpx.Client, project_name: str, region: str, *, search_first: bool = True
    ) -> tuple[dict, dict | None]:
        """(project, the whole create answer when we just made it; None when a search found it)."""
        # The POST is never retried blindly: its answer may be lost after Neon created the project, so every new
        # attempt searches first.
        attempts = 0

        def attempt() -> tuple[dict, dict | None] | httpx.Response:
            nonlocal attempts
            attempts += 1
            existing = self._find_project(client, project_name) if attempts > 1 or search_first else None
            if existing:
                return existing, None
            response = self._send(client, "POST", "/projects", json=self._project_request(project_name, region))
            if response.status_code == 201:
                body = response.json()
                return body["project"], body
            self._raise_unless_retryable(response, "POST", "/projects")
            return response  # retryable: tried again after a delay

        found = self._retrying("POST", "/projects", lambda outcome: isinstance(outcome, httpx.Response))(attempt)
        assert not isinstance(found, httpx.Response)  # _retrying raises once the attempts are spent
        return found

    def _find_project(self, client: httpx.Client, project_name: str, *, names: set[str] | None = None) -> dict | None:
        """The project named `project_name` (or any of `names`, searching for `project_name`)."""
        # `search` matches parts of names and ids, so keep only the exact name.
        projects = self._list_projects(client, search=project_name)
        matches = [project for project in projects if project.get("name") in (names or {project_name})]
        if len(matches) > 1:
            logger.warning("%d Neon projects are named %s; using the oldest", len(matches), project_name)
        return min(matches, key=lambda project: (project.get("created_at", ""), project["id"])) if matches else None

    def _list_projects(self, client: httpx.Client, *, search: str) -> list[dict]:
        """Every project whose name or id contains `search`, following the cursor until a short page."""
        cursor = None
        projects: list[dict] = []
        while True:
            params: dict[str, Any] = {"search": search, "limit": LIST_PAGE_SIZE}
            if cursor:
                params["cursor"] = cursor
            if self.org_id:
                params["org_id"] = self.org_id
            body = self._request(client, "GET", "/projects", params=params).json()
            page = body.get("projects", [])
            projects += page
            cursor = (body.get("pagination") or {}).get("cursor")
            if len(page) < LIST_PAGE_SIZE or not cursor:
                return projects

    def _project_request(self, project_name: str, region: str) -> dict:
        project: dict[str, Any] = {
            "name": project_name,
            "region_id": region,
            "pg_version": self.pg_version,
            "default_endpoint_settings": {
                "autoscaling_limit_min_cu": self.autoscaling_min_cu,
                "autoscaling_limit_max_cu": self.autoscaling_max_cu,
                "suspend_timeout_seconds": self.suspend_timeout_seconds,
            },
            "branch": {"name": BRANCH_NAME, "database_name": DATABASE_NAME, "role_name": ROLE_NAME},
        }
        if self.org_id:
            project["org_id"] = self.org_id
        if self.quota_logical_size_bytes:
            project["settings"] = {"quota": {"logical_size_bytes": self.quota_logical_size_bytes}}
        return {"project": project}

    def _wait_for_operations(
        self,
        client: httpx.Client,
        project_id: str,
        *,
        accept_not_found: bool = False,
        started: list[dict] | None = None,
    ) -> bool:
        """Polls until every operation of the project is done; False when the project does not exist.

        `started`: the operations a create answer listed. All finished: nothing to poll. Otherwise they have only
        just been scheduled, so the first look waits one interval rather than ask at once.
        """
        # A 201 is not "ready": Neon says to wait for the project's operations before connecting.
        deadline = time.monotonic() + self.operation_timeout_seconds
        path = f"/projects/{project_id}/operations"
        if started is not None:
            if all(op.get("status") in TERMINAL_OPERATION_STATUSES for op in started):
                return True
            time.sleep(self.poll_interval_seconds)
        while True:
            response = self._request(client, "GET", path, params={"limit": 1000}, accept_not_found=accept_not_found)
            if response.status_code == 404:
                return False
            operations = response.json().get("operations", [])
            failed = [op for op in operations if op.get("status") in FAILED_OPERATION_STATUSES]
            if failed:
                actions = ", ".join(f"{op.get('action')} ({op.get('error') or op['status']})" for op in failed)
                raise ProvisioningError(f"Neon project {project_id}: operations failed: {actions}")
            if all(op.get("status") in TERMINAL_OPERATION_STATUSES for op in operations):
                return True
            if time.monotonic() >= deadline:
                raise ProvisioningError(
                    f"Neon project {project_id}: operations still running after {self.operation_timeout_seconds}s"
                )
            time.sleep(self.poll_interval_seconds)

    def _connection_details(self, client: httpx.Client, project: dict) -> ProvisionedDatabase:
        path = f"/projects/{project['id']}/connection_uri"
        params = {"database_name": DATABASE_NAME, "role_name": ROLE_NAME}
        pooled = self._request(client, "GET", path, params={**params, "pooled": "true"}).json()["uri"]
        direct = self._request(client, "GET", path, params={**params, "pooled": "false"}).json()["uri"]
        return self._database(project, pooled=pooled, direct=direct)

    def _created_connection_details(self, project: dict, created: dict) -> ProvisionedDatabase | None:
        """Both URIs from a create answer, without asking again: `connection_uris` holds the direct URI, and the
        pooled one differs only in its host, `pooler_host` (the reference's host format). None if either is missing."""
        for entry in created.get("connection_uris") or []:
            parameters = entry.get("connection_parameters") or {}
            if (parameters.get("database"), parameters.get("role")) != (DATABASE_NAME, ROLE_NAME):
                continue
            direct = entry.get("connection_uri") or ""
            pooled = _with_host(direct, parameters.get("host"), parameters.get("pooler_host"))
            if direct and pooled:
                return self._database(project, pooled=pooled, direct=direct)
        return None

    def _database(self, project: dict, *, pooled: str, direct: str) -> ProvisionedDatabase:
        return ProvisionedDatabase(
            external_id=project["id"],
            region=project.get("region_id", self.region),
            server=SERVER_NAME,
            dsn=pooled,
            migration_dsn=direct,
        )

    # --- HTTP --------------------------------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        """This process's client: made once (building its TLS context alone costs ~20 ms), its connections kept
        alive between calls. A forked worker makes its own rather than share its parent's sockets."""
        with self._http_lock:
            if self._http is None or self._http_pid != os.getpid():
                self._http = httpx.Client(
                    base_url=self.api_url,
                    timeout=self.request_timeout_seconds,
                    headers={
                        "Authorization": f"Bearer {self._api_key}",
                        "Accept": "application/json",
                        "Content-Type": "application/json",
                    },
                )
                self._http_pid = os.getpid()
            return self._http

    def close(self) -> None:
        with self._http_lock:
            if self._http is not None and self._http_pid == os.getpid():
                self._http.close()
            self._http = None

    def _request(
        self,
        client: httpx.Client,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        json: dict | None = None,
        accept_not_found: bool = False,
    ) -> httpx.Response:
        """A request that is safe to repeat, retried on 423/429/5xx and network errors with bounded back-off."""

        def failed(response: httpx.Response) -> bool:
            if response.status_code < 400 or (accept_not_found and response.status_code == 404):
                return False
            self._raise_unless_retryable(response, method, path)
            return True

        return self._retrying(method, path, failed)(self._send, client, method, path, params=params, json=json)

    def _retrying(self, method: str, path: str, should_retry: Callable[[Any], bool]) -> Retrying:
        """Calls a function until `should_retry` says no to its result (an HTTP response that failed in a way a retry
        may fix), at most max_retries times more, with bounded back-off; then raises ProvisioningError."""
        return Retrying(
            retry=retry_if_result(should_retry),
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._retry_delay,
            before_sleep=lambda state: _log_retry(state, method, path, self.max_retries),
            retry_error_callback=lambda state: _give_up(state, method, path),
        )

    def _retry_delay(self, state: RetryCallState) -> float:
        """Neon's Retry-After when it sends one, else full jitter (many workers that failed together do not retry
        together); never above retry_max_delay_seconds."""
        response = state.outcome.result() if state.outcome else None
        delay = _retry_after_seconds(response) if response is not None else None
        if delay is None:
            delay = random.uniform(0, self.retry_base_delay_seconds * 2 ** (state.attempt_number - 1))
        return min(delay, self.retry_max_delay_seconds)

    def _send(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a network error becomes a 503-like answer so that it is retried like one."""
        try:
            return client.request(method, path, **kwargs)
        except httpx.TransportError as error:
            logger.warning("Neon API %s %s: %s", method, path, error.__class__.__name__)
            return httpx.Response(503, json={"code": "", "message": f"network error: {error.__class__.__name__}"})

    def _raise_unless_retryable(self, response: httpx.Response, method: str, path: str) -> None:
        if response.status_code in RETRYABLE_STATUSES:
            return
        code, message = _error_details(response)
        if response.status_code == 401:
            raise ProvisioningError("The Neon API rejected the API key (HTTP 401): check NEON_API_KEY.")
        if response.status_code == 422 and code == "PROJECTS_LIMIT_EXCEEDED":
            raise QuotaExceeded(
                f"Neon refused to create another project: the plan's project limit is reached ({message}). "
                "Delete unused projects or raise the limit."
            )
        raise ProvisioningError(f"Neon API {method} {path} failed with HTTP {response.status_code}: {message}")


def _log_retry(state: RetryCallState, method: str, path: str, max_retries: int) -> None:
    response = state.outcome.result() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    logger.warning(
        "Neon API %s %s answered HTTP %s; retry %d of %d in %.2fs",
        method, path, getattr(response, "status_code", "?"), state.attempt_number, max_retries, delay,
    )  # fmt: skip


def _give_up(state: RetryCallState, method: str, path: str) -> httpx.Response:
    response = state.outcome.result() if state.outcome else None
    _, message = _error_details(response) if response is not None else ("", "")
    raise ProvisioningError(
        f"Neon API {method} {path} still failing with HTTP {getattr(response, 'status_code', '?')} after "
        f"{state.attempt_number} attempts: {message}"
    )


@lru_cache(maxsize=8)
def _provisioner_for(options: tuple[tuple[str, Any], ...]) -> NeonProvisioner:
    return NeonProvisioner(**dict(options))


def _with_password(credentials: dict[str, str], password: str) -> tuple[str, str] | None:
    """(pooled, direct) URIs: the registry's with `password` in place of theirs; None when either is missing."""
    pooled, direct = credentials.get("dsn") or "", credentials.get("migration_dsn") or ""
    if not (pooled and direct):
        return None
    return Dsn.parse(pooled).replace(password=password).url(), Dsn.parse(direct).replace(password=password).url()


def _with_host(uri: str, host: str | None, new_host: str | None) -> str | None:
    """`uri` with its host `host` replaced by `new_host` (credentials, port, database and options kept)."""
    if not (uri and host and new_host):
        return None
    parsed = Dsn.parse(uri)
    return parsed.replace(host=new_host).url() if parsed.host == host else None


def _error_details(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    if not isinstance(body, dict):
        return "", str(body)[:200]
    return str(body.get("code") or ""), str(body.get("message") or "")


def _retry_after_seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: fall back to our own back-off
