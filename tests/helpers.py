"""Small helpers several test modules share (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from django.urls import reverse


def stored_files(root: Path) -> list[Path]:
    """Every file under `root` (the media folder), sorted; [] when it does not exist."""
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def wait_for_database_status(client, wanted: set[str], timeout: float = 60) -> dict:
    """Polls the dashboard's status endpoint, as the page does, until the tenant database's status is one of
    `wanted`; the last payload."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        payload = client.get(reverse("database_status")).json()
        if payload["status"] in wanted:
            return payload
        time.sleep(0.2)
    raise AssertionError(f"database status stayed {payload['status']!r}")


def server_sent_events(lines: Iterable[str]) -> list[tuple[str | None, dict]]:
    """(event, JSON data) for each `data:` line of an event stream, under the `event:` line before it."""
    events, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def neon_settings_for(neon, **overrides: object) -> dict[str, object]:
    """The neon provider's settings for tests: the emulator `neon`, short timeouts and fast back-off."""
    return {
        "TENANT_PROVIDER": "neon",
        "NEON_API_URL": neon.base_url,
        "NEON_API_KEY": neon.api_key,
        "NEON_REGION": "aws-us-east-2",
        "NEON_MAX_RETRIES": 4,
        "NEON_REQUEST_TIMEOUT_SECONDS": 5.0,
        "NEON_OPERATION_TIMEOUT_SECONDS": 20.0,
        "NEON_RETRY_BASE_DELAY_SECONDS": 0.01,
        "NEON_RETRY_MAX_DELAY_SECONDS": 0.05,
        "NEON_POLL_INTERVAL_SECONDS": 0.05,
        **overrides,
    }


def embedding_model_of(dsn: str) -> tuple[str, int] | None:
    """The embedding model and dimension recorded in the tenant database at `dsn`, read as an operator would."""
    import psycopg

    from vectordb.tenant_embedding_model import embedding_model_recorded

    with psycopg.connect(dsn) as connection:
        recorded = embedding_model_recorded(connection)
    return (recorded.name, recorded.dimensions) if recorded else None


def database_dsn(dsn: str, database: str) -> str:
    """`dsn` pointed at another database on the same server, same credentials."""
    from vectordb.dsn import Dsn

    return Dsn.parse(dsn).replace(database=database).url()


def personal_workspace(user):
    """The person's personal workspace (the tenant a sign-up gets), made when a test's persona has none yet."""
    from tenants.models import Workspace

    return Workspace.objects.personal_for(user)


def without_csrf_tokens(html: bytes) -> bytes:
    """A page with its CSRF tokens blanked: they differ on every response (the top bar's forms carry them)."""
    import re

    return re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", html)


def s3_client(endpoint_url: str):
    """A boto3 S3 client for the test S3 server (tests/conftest.py `s3_server`), with the credentials the app gets."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id="silo", aws_secret_access_key="silo-secret",
        region_name="us-east-1",
    )  # fmt: skip
