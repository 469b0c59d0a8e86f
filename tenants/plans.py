"""Plans: what each workspace may use, per-workspace overrides, refusals that say why, and Neon's project quota.

A plan's limits are read here and nowhere else; `tenants.usage` meters against them. Every refusal names the limit,
what is used and when it resets, so the person knows what to do ("...The limit resets on 1 December.").
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.models import Plan, VectorDatabase, Workspace, WorkspacePlan

logger = logging.getLogger(__name__)

DEFAULT_PLAN_NAME = "free"
# The limits a plan sets, with how a refusal names them. Overridable per workspace with `tenants plan --set`.
LIMITS: dict[str, str] = {
    "storage_bytes": "bytes of storage",
    "documents": "documents",
    "pages_per_month": "pages a month",
    "questions_per_day": "questions a day",
    "tokens_per_month": "model tokens a month",
    "members": "members",
    "document_max_text_chars": "characters of text per document",
    "document_max_chunks": "passages per document",
    "chat_max_concurrent_streams": "answers in progress at once",
    "neon_active_time_seconds": "seconds of Neon active time a month",
    "neon_compute_time_seconds": "seconds of Neon compute time a month",
    "neon_written_data_bytes": "bytes written on Neon a month",
    "neon_data_transfer_bytes": "bytes transferred from Neon a month",
    "neon_logical_size_bytes": "bytes of Neon logical size",
}
# Limits that already exist as settings: a blank plan value means the setting's value.
SETTING_DEFAULTS = {
    "document_max_text_chars": "DOCUMENT_MAX_TEXT_CHARS",
    "document_max_chunks": "DOCUMENT_MAX_CHUNKS",
    "chat_max_concurrent_streams": "CHAT_MAX_CONCURRENT_STREAMS",
}
NEON_QUOTA_FIELDS = (
    "active_time_seconds",
    "compute_time_seconds",
    "written_data_bytes",
    "data_transfer_bytes",
    "logical_size_bytes",
)
# The default plan the data migration seeds (at least what the issue asks: 100 documents, 5,000 pages a month and
# 1,000 questions a day).
DEFAULT_PLAN_LIMITS = {
    "storage_bytes": 1024**3,
    "documents": 100,
    "pages_per_month": 5000,
    "questions_per_day": 1000,
    "tokens_per_month": 2_000_000,
    "members": 10,
}


class LimitReached(Exception):
    """An action refused by the workspace's plan; `str(error)` is the message for the person."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


class InvalidOverride(ValueError):
    """A `--set key=value` that names no limit or has no valid value; `str(error)` says which."""


@dataclass(frozen=True)
class Limits:
    """A workspace's effective limits: its plan with its overrides applied. None is unlimited."""

    plan: str
    values: dict[str, int | None]

    def __getitem__(self, name: str) -> int | None:
        return self.values[name]


def plan_default() -> Plan:
    """The plan new workspaces get: the one marked default (made if a wiped test database lost it)."""
    plan = Plan.objects.filter(is_default=True).first()
    if plan is not None:
        return plan
    try:
        with transaction.atomic():
            return Plan.objects.create(name=DEFAULT_PLAN_NAME, label="Free", is_default=True, **DEFAULT_PLAN_LIMITS)
    except IntegrityError:  # made meanwhile by a concurrent request
        return Plan.objects.get(is_default=True)


def workspace_plan(workspace: Workspace | int) -> WorkspacePlan:
    """The workspace's plan assignment, given the default plan the first time it is asked for (race-safe: one
    assignment per workspace is a unique constraint)."""
    workspace_id = workspace if isinstance(workspace, int) else workspace.id
    assignment = WorkspacePlan.objects.select_related("plan").filter(workspace_id=workspace_id).first()
    if assignment is not None:
        return assignment
    try:
        with transaction.atomic():
            WorkspacePlan.objects.create(workspace_id=workspace_id, plan=plan_default())
    except IntegrityError:
        pass
    return WorkspacePlan.objects.select_related("plan").get(workspace_id=workspace_id)


def limits_of(assignment: WorkspacePlan) -> Limits:
    values: dict[str, int | None] = {}
    for name in LIMITS:
        value = assignment.overrides.get(name, getattr(assignment.plan, name))
        if value is None and name in SETTING_DEFAULTS:
            value = getattr(settings, SETTING_DEFAULTS[name])
        values[name] = value
    return Limits(plan=assignment.plan.name, values=values)


def limit_sql(name: str) -> str:
    """SQL for one effective limit of the `workspace_plans wp JOIN plans p` row: the override if the workspace has
    one (a JSON null is unlimited), else the plan's. For the metering statements, which read limits and count in one
    round trip."""
    assert name in LIMITS  # names are ours, never user input
    return f"CASE WHEN wp.overrides ? '{name}' THEN (wp.overrides->>'{name}')::bigint ELSE p.{name} END"


_READING_SQL = (
    "SELECT p.name, wp.overrides, wp.neon_suspended, wp.storage_bytes, "
    + ", ".join(f"p.{name}" for name in LIMITS)
    + " FROM workspace_plans wp JOIN plans p ON p.id = wp.plan_id WHERE wp.workspace_id = %s"
)


def workspace_limits(workspace: Workspace | int) -> Limits:
    """The workspace's effective limits, in one query (it runs on every ingest and chat request)."""
    from django.db import connection

    workspace_id = workspace if isinstance(workspace, int) else workspace.id
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(_READING_SQL, [workspace_id])
            row = cursor.fetchone()
        if row is not None:
            break
        workspace_plan(workspace_id)  # its first plan, then read again
    assert row is not None
    name, overrides, plan_values = row[0], row[1], row[4:]
    if isinstance(overrides, str):
        overrides = json.loads(overrides)
    values: dict[str, int | None] = {}
    for limit, plan_value in zip(LIMITS, plan_values, strict=True):
        value = overrides.get(limit, plan_value)
        if value is None and limit in SETTING_DEFAULTS:
            value = getattr(settings, SETTING_DEFAULTS[limit])
        values[limit] = value
    return Limits(plan=name, values=values)


def workspace_limit(workspace: Workspace | int, name: str) -> int | None:
    return workspace_limits(workspace)[name]


# --- periods and messages --------------------------------------------------------------------------------------------


def month_start(today: datetime.date | None = None) -> datetime.date:
    today = today or timezone.localdate()
    return today.replace(day=1)


def next_month_start(today: datetime.date | None = None) -> datetime.date:
    start = month_start(today)
    return (start + datetime.timedelta(days=32)).replace(day=1)


def resets_on(period: str, today: datetime.date | None = None) -> str:
    """When a period's counters start again, as a refusal says it."""
    today = today or timezone.localdate()
    if period == "day":
        return "The limit resets at midnight (UTC)."
    reset = next_month_start(today)
    return f"The limit resets on {reset.day} {reset:%B}."


def count_text(value: int) -> str:
    return f"{value:,}"


def size_text(value: int) -> str:
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} bytes"


def pages_refusal(pages: int, limit: int, used: int) -> LimitReached:
    return LimitReached(
        f"This document has {count_text(pages)} page{'s' if pages != 1 else ''}; this workspace's limit is "
        f"{count_text(limit)} pages a month and {count_text(used)} are used. {resets_on('month')}",
        "pages_per_month",
    )


def documents_refusal(limit: int) -> LimitReached:
    return LimitReached(
        f"This workspace has {count_text(limit)} documents, the most its plan allows; delete one or ask an operator "
        "for a larger plan to upload more.",
        "documents",
    )


def storage_refusal(limit: int, used: int) -> LimitReached:
    return LimitReached(
        f"This workspace's database uses {size_text(used)} of the {size_text(limit)} its plan allows; delete documents "
        "or ask an operator for a larger plan to upload more.",
        "storage_bytes",
    )


def questions_refusal(limit: int, used: int) -> LimitReached:
    return LimitReached(
        f"This workspace's limit is {count_text(limit)} questions a day and {count_text(used)} are used. {resets_on('day')}",
        "questions_per_day",
    )


def tokens_refusal(limit: int, used: int) -> LimitReached:
    return LimitReached(
        f"This workspace's limit is {count_text(limit)} model tokens a month and {count_text(used)} are used. "
        f"{resets_on('month')}",
        "tokens_per_month",
    )


def members_refusal(limit: int, used: int) -> LimitReached:
    return LimitReached(
        f"This workspace's limit is {count_text(limit)} members and {count_text(used)} are members or invited; remove "
        "a member or revoke an invitation, or ask an operator for a larger plan.",
        "members",
    )


def workspace_paused(workspace_id: int) -> bool:
    """Whether the last reading found the workspace's Neon project suspended over its quota."""
    return WorkspacePlan.objects.filter(workspace_id=workspace_id, neon_suspended=True).exists()


NEON_SUSPENDED_MESSAGE = (
    "This workspace's database is paused: it used up its plan's database allowance for this month. It resumes at "
    "the start of next month, or as soon as an operator moves the workspace to a larger plan."
)


# --- operator actions ------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, int | None]:
    """`pages_per_month=25` (or `=none` for unlimited, `=default` to drop the override: returned as the string)."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip().lower()
    if not sep or name not in LIMITS:
        raise InvalidOverride(f"{text!r}: expected LIMIT=VALUE with LIMIT one of {', '.join(LIMITS)}.")
    if raw in {"none", "unlimited"}:
        return name, None
    if raw == "default":
        return name, "default"  # type: ignore[return-value]
    try:
        value = int(raw.replace(",", "").replace("_", ""))
    except ValueError:
        raise InvalidOverride(f"{text!r}: the value must be a whole number, 'none' or 'default'.") from None
    if value < 0:
        raise InvalidOverride(f"{text!r}: the value cannot be negative.")
    return name, value


def workspace_plan_change(
    workspace: Workspace, plan_name: str | None = None, overrides: list[str] | None = None
) -> WorkspacePlan:
    """Move a workspace to another plan and/or override single limits for it; then send Neon the new quota (which
    lifts a suspension the new quota no longer calls for)."""
    parsed = [parse_override(text) for text in overrides or []]  # all checked before anything changes
    plan = None
    if plan_name is not None:
        plan = Plan.objects.filter(name=plan_name.strip().lower()).first()
        if plan is None:
            known = ", ".join(Plan.objects.order_by("name").values_list("name", flat=True)) or "none"
            raise InvalidOverride(f"No plan is called {plan_name!r}; plans: {known}.")
    with transaction.atomic():
        assignment = workspace_plan(workspace)
        assignment = WorkspacePlan.objects.select_for_update().select_related("plan").get(id=assignment.id)
        if plan is not None:
            assignment.plan = plan
        for name, value in parsed:
            if value == "default":
                assignment.overrides.pop(name, None)
            else:
                assignment.overrides[name] = value
        assignment.save(update_fields=["plan", "overrides", "updated_at"])
    neon_quota_sync(workspace)
    return WorkspacePlan.objects.select_related("plan").get(id=assignment.id)


def neon_quota(limits: Limits) -> dict[str, int]:
    """Neon's `settings.quota` for these limits: 0 is unlimited there."""
    return {field: int(limits[f"neon_{field}"] or 0) for field in NEON_QUOTA_FIELDS}


def neon_quota_sync(workspace: Workspace, provisioner=None) -> bool:
    """PATCH the workspace's Neon project with its plan's quota (on create, and on every plan change). False when
    the workspace has no Neon project; errors from Neon are logged, and the next plan change sends it again.
    `provisioner`: the caller's Neon provisioner (default: the one settings configure)."""
    from django.core.exceptions import ImproperlyConfigured

    from tenants.provisioners import ProvisioningError, get_provisioner

    vector_database = VectorDatabase.objects.filter(workspace=workspace, provider="neon").first()
    if vector_database is None or not vector_database.external_id:
        return False
    assignment, quota = neon_quota_planned(workspace)
    try:
        provisioner = provisioner or get_provisioner("neon")
        project = provisioner.quota_set(vector_database.external_id, quota)
    except (ProvisioningError, ImproperlyConfigured) as error:
        logger.warning("setting the Neon quota of workspace %s failed: %s", workspace.id, error)
        return False
    neon_quota_recorded(assignment, quota, project)
    return True


def neon_quota_planned(workspace: Workspace) -> tuple[WorkspacePlan, dict[str, int]]:
    """The workspace's plan assignment and the Neon quota it gives its project."""
    assignment = workspace_plan(workspace)
    return assignment, neon_quota(limits_of(assignment))


def neon_quota_recorded(assignment: WorkspacePlan, quota: dict[str, int], project: dict) -> None:
    """After Neon took `quota` for the project (`project`: its answer, with the period counters): what was synced,
    and whether Neon suspends it."""
    WorkspacePlan.objects.filter(id=assignment.id).update(
        neon_quota_synced=quota, neon_suspended=neon_over_quota(quota, project), updated_at=timezone.now()
    )


def neon_over_quota(quota: dict[str, int], consumption: dict) -> bool:
    """Whether Neon suspends the project: a period counter at or past its quota (0 is unlimited). Logical size is
    left out: Neon enforces it per branch by failing writes, and the compute still starts."""
    return any(
        quota.get(field) and int(consumption.get(field) or 0) >= quota[field]
        for field in NEON_QUOTA_FIELDS
        if field != "logical_size_bytes"
    )


def plan_quota_sync(plan: Plan) -> int:
    """After a plan's limits change (the admin): every workspace on it with a Neon project gets the new quota."""
    synced = 0
    for workspace in Workspace.objects.filter(plan_assignment__plan=plan, vector_database__provider="neon"):
        synced += neon_quota_sync(workspace)
    return synced
