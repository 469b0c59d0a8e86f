"""The Neon emulator keeps Neon's published contract: every response it gives to the calls our provider makes (status
and body) validates against the schema Neon's OpenAPI document (API v2) declares for that path, method and status.
Tests that pass against the emulator then say something about the real API."""

from __future__ import annotations

import copy
import datetime
import json
import re
from functools import cache
from pathlib import Path

import httpx
import jsonschema
import pytest

from config.settings_paths import BASE_DIR
from tenants.provisioners.base import ProvisioningError
from tests.emulators.neon import NeonEmulator
from tests.tenants.test_neon_provider import make_provisioner

# The project's shared folder sits beside the repository (as in CI), or at /work/shared where the other tests read the
# eval PDFs (a clone elsewhere); Neon publishes the document at https://neon.com/api_spec/release/v2.json
SPEC_CANDIDATES = [
    folder / "reference" / "neon-openapi-v2.json" for folder in (BASE_DIR.parent / "shared", Path("/work/shared"))
]
SPEC_PATH = next((path for path in SPEC_CANDIDATES if path.exists()), SPEC_CANDIDATES[0])


@cache
def _spec() -> dict:
    if not SPEC_PATH.exists():
        pytest.fail(f"Neon's OpenAPI document is missing: expected at {SPEC_PATH}")
    return json.loads(Path(SPEC_PATH).read_text())


def _openapi_to_json_schema(node):
    """OpenAPI 3.0's `nullable` as JSON Schema's null type; everything else is JSON Schema already."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _openapi_to_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if isinstance(converted.get("type"), str):
            converted["type"] = [converted["type"], "null"]
        else:
            converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


def _resolve(reference: dict) -> dict:
    while "$ref" in reference:
        node = _spec()
        for part in reference["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        reference = node
    return reference


def response_schema(method: str, path: str, status: int) -> dict:
    """The JSON Schema the spec declares for this response, with the spec's components to resolve references."""
    for template, operations in _spec()["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            responses = operations[method.lower()]["responses"]
            response = _resolve(responses.get(str(status)) or responses["default"])
            schema = response["content"]["application/json"]["schema"]
            return _openapi_to_json_schema({**copy.deepcopy(schema), "components": _spec()["components"]})
    raise AssertionError(f"{method} {path} is not in Neon's API")


class RecordingNeonEmulator(NeonEmulator):
    """The emulator, keeping every response it sends: (method, path without query, status, body)."""

    def __init__(self, *arguments, **options):
        super().__init__(*arguments, **options)
        self.responses: list[tuple[str, str, int, dict]] = []

    def handle(self, method, raw_path, headers, body, *, started=None):
        status, payload, extra, record = super().handle(method, raw_path, headers, body, started=started)
        path = raw_path.split("?")[0].removeprefix("/api/v2")
        self.responses.append((method, path, status, copy.deepcopy(payload)))
        return status, payload, extra, record


@pytest.fixture
def neon(admin_dsn):
    emulator = RecordingNeonEmulator(admin_dsn, operation_delay_seconds=0.05, retry_after_seconds=0)
    emulator.start()
    yield emulator
    emulator.stop()


def _violations(responses: list[tuple[str, str, int, dict]]) -> list[str]:
    found = []
    for method, path, status, body in responses:
        validator = jsonschema.Draft4Validator(
            response_schema(method, path, status), format_checker=jsonschema.FormatChecker()
        )
        found += [
            f"{method} {path} -> {status}: {'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message}"
            for error in validator.iter_errors(body)
        ]
    return found


def test_every_response_to_the_providers_calls_matches_neons_openapi_document(neon):
    provisioner = make_provisioner(neon, poll_interval_seconds=0.02)

    provisioner.locate("nobody")  # a search that finds nothing: an empty list
    created = provisioner.create("contract", "aws-us-east-2")  # search, create, wait for operations
    again = provisioner.create("contract", "aws-us-east-2")  # found by a search, its operations listed
    refreshed = provisioner.dsn(created.external_id, created.server)  # a new password, connection URIs
    # A warm-pool claim: branches listed, the project renamed (PATCH), the role's password reset.
    rotated = provisioner.credentials_rotate(created.external_id, created.server, "claimed")
    # A point-in-time restore (tenants.archives): the branch restore endpoint, back to a recorded moment.
    moment = neon.record_history()
    provisioner.branch_restore(created.external_id, moment.isoformat())
    assert again.external_id == refreshed.external_id == rotated.external_id == created.external_id
    # Plans (issue 21): the quota PATCHed, consumption read.
    quota = {"active_time_seconds": 3600, "compute_time_seconds": 0, "written_data_bytes": 0,
             "data_transfer_bytes": 0, "logical_size_bytes": 0}  # fmt: skip
    assert provisioner.quota_set(created.external_id, quota)["settings"]["quota"] == quota
    consumption = provisioner.consumption([created.external_id], since=datetime.date.today().replace(day=1))
    assert consumption[created.external_id]["active_time_seconds"] == 0
    with httpx.Client(base_url=neon.base_url, headers={"Authorization": f"Bearer {neon.api_key}"}) as client:
        client.get(f"/projects/{created.external_id}")
        client.patch(f"/projects/{created.external_id}", json={"project": {"name": "renamed"}})
        client.get("/projects/no-such-project-0000")  # an error in Neon's error shape
    provisioner.delete(created.external_id, created.server)
    provisioner.delete(created.external_id, created.server)  # already gone: a 404 the provider accepts
    with pytest.raises(ProvisioningError):
        make_provisioner(neon, api_key="wrong-key", max_retries=0).create("refused", "aws-us-east-2")

    calls = {(method, re.sub(r"/projects/[^/]+", "/projects/{id}", path)) for method, path, _, _ in neon.responses}
    assert {
        ("GET", "/projects"),
        ("POST", "/projects"),
        ("GET", "/projects/{id}"),
        ("PATCH", "/projects/{id}"),
        ("DELETE", "/projects/{id}"),
        ("GET", "/projects/{id}/connection_uri"),
        ("GET", "/projects/{id}/branches"),
        ("GET", "/consumption_history/projects"),
    } <= calls
    assert any(path.endswith("/roles/neondb_owner/reset_password") for method, path in calls if method == "POST")
    assert any(path.endswith("/restore") for method, path in calls if method == "POST")
    assert {status for _, _, status, _ in neon.responses} >= {200, 201, 401, 404}
    projects = [
        project
        for _, path, _, body in neon.responses
        if not path.startswith("/consumption_history")
        for project in ([body["project"]] if "project" in body else body.get("projects", []))
    ]
    assert projects and all("synthetic_storage_size" in project for project in projects)  # Neon always sends it
    violations = _violations(neon.responses)
    assert violations == [], "\n".join(violations)


def test_the_validator_catches_the_drift_neon_would_not_send():
    """The check itself: the drift the emulator once had is reported."""
    listed = {"projects": [], "pagination": {}}
    project = {"project": {"id": "x"}}

    assert any("cursor" in violation for violation in _violations([("GET", "/projects", 200, listed)]))
    assert any(
        "is a required property" in violation for violation in _violations([("GET", "/projects/x", 200, project)])
    )
    assert any(
        "compute_last_active_at: None is not of type 'string'" in violation
        for violation in _violations([("GET", "/projects/x", 200, {"project": {"compute_last_active_at": None}})])
    )
