"""Metering: what each workspace uses, recorded where it happens, once, and cheaply.

Pages are reserved at upload in the same transaction that stores the document (a crash loses both or neither);
questions are admitted one at a time by the chat service; model tokens are added when the answer ends. Each counter
is one row per workspace and period, changed by a single `INSERT ... ON CONFLICT DO UPDATE ... WHERE` that adds only
while the sum stays within the limit: concurrent requests queue on the row lock and the last ones are refused, so no
limit is overshot. Storage and Neon consumption are read on a schedule (`usage_sample`), never on a page load, and
never by waking an idle Neon compute: Neon tenants are read from Neon's consumption API, not by connecting.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import asdict, dataclass, field

from django.db import connection
from django.db.models import Count
from django.utils import timezone

from tenants import plans
from tenants.models import Membership, VectorDatabase, Workspace, WorkspacePlan, WorkspaceUsage

logger = logging.getLogger(__name__)
Period = WorkspaceUsage.Period
CHARACTERS_PER_PAGE = 3000  # formats without pages count one page per 3,000 characters
CHARACTERS_PER_TOKEN = 4  # the extractive mode's estimate of what a model would have read and written
# Rough operator cost per unit (USD), only to sort the usage listing: most expensive workspaces first.
COST_PER_TOKEN = 0.6 / 1_000_000
COST_PER_PAGE = 0.0005  # embedding a page's text
COST_PER_STORAGE_BYTE_MONTH = 0.35 / 1024**3
COST_PER_NEON_COMPUTE_SECOND = 0.16 / 3600


def _today() -> datetime.date:
    return timezone.localdate()


def _period_start(period: str, today: datetime.date | None = None) -> datetime.date:
    today = today or _today()
    return plans.month_start(today) if period == Period.MONTH else today


_ADD_WITHIN_LIMIT = """
INSERT INTO workspace_usage (workspace_id, period, starts_on, pages, questions, tokens)
VALUES (%(workspace)s, %(period)s, %(starts_on)s, %(pages)s, %(questions)s, %(tokens)s)
ON CONFLICT (workspace_id, period, starts_on) DO UPDATE
SET {column} = workspace_usage.{column} + EXCLUDED.{column}
WHERE %(limit)s::bigint IS NULL OR workspace_usage.{column} + EXCLUDED.{column} <= %(limit)s::bigint
RETURNING {column}
"""


def _add(workspace_id: int, period: str, column: str, amount: int, limit: int | None) -> int | None:
    """Add `amount` to the period's counter if the sum stays within `limit` (None: no limit). Returns the new value,
    or None when it would pass the limit (nothing changed). One statement: atomic and race-free."""
    if limit is not None and amount > limit:
        return None
    values = {"pages": 0, "questions": 0, "tokens": 0, column: amount}
    with connection.cursor() as cursor:
        cursor.execute(
            _ADD_WITHIN_LIMIT.format(column=column),
            {"workspace": workspace_id, "period": period, "starts_on": _period_start(period), "limit": limit,
             **values},
        )  # fmt: skip
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def _used(workspace_id: int, period: str, column: str) -> int:
    value = (
        WorkspaceUsage.objects.filter(workspace_id=workspace_id, period=period, starts_on=_period_start(period))
        .values_list(column, flat=True)
        .first()
    )
    return int(value or 0)


# --- pages and documents (at upload) -------------------------------------------------------------------------------


def pages_of_text(characters: int) -> int:
    return max(1, -(-characters // CHARACTERS_PER_PAGE))


_ADMIT_UPLOAD = f"""
WITH allowed AS (
    SELECT wp.neon_suspended AS suspended, wp.storage_bytes AS stored,
           {plans.limit_sql("pages_per_month")} AS pages_limit,
           {plans.limit_sql("documents")} AS documents_limit,
           {plans.limit_sql("storage_bytes")} AS storage_limit,
           (SELECT count(*) FROM documents d WHERE d.workspace_id = wp.workspace_id) AS documents
    FROM workspace_plans wp JOIN plans p ON p.id = wp.plan_id WHERE wp.workspace_id = %(workspace)s
), reserved AS (
    INSERT INTO workspace_usage (workspace_id, period, starts_on, pages, questions, tokens)
    SELECT %(workspace)s, 'month', %(month)s, %(pages)s, 0, 0 FROM allowed
    WHERE NOT allowed.suspended
      AND (allowed.documents_limit IS NULL OR allowed.documents < allowed.documents_limit)
      AND (allowed.storage_limit IS NULL OR allowed.stored IS NULL OR allowed.stored < allowed.storage_limit)
      AND (allowed.pages_limit IS NULL OR %(pages)s <= allowed.pages_limit)
    ON CONFLICT (workspace_id, period, starts_on) DO UPDATE SET pages = workspace_usage.pages + EXCLUDED.pages
    WHERE (SELECT pages_limit FROM allowed) IS NULL
       OR workspace_usage.pages + EXCLUDED.pages <= (SELECT pages_limit FROM allowed)
    RETURNING pages
)
SELECT allowed.suspended, allowed.stored, allowed.pages_limit, allowed.documents_limit, allowed.storage_limit, allowed.documents,
       (SELECT pages FROM reserved)
FROM allowed
"""


def upload_admit(workspace: Workspace, pages: int) -> None:
    """Call inside the upload's transaction, with the workspace row locked: refuses a document over the documents,
    storage or page limit before anything is stored, and reserves its pages (refunded only by a rollback). One
    statement reads the limits, checks them and reserves: metering costs the upload one round trip."""
    parameters = {"workspace": workspace.id, "month": _period_start(Period.MONTH), "pages": pages}
    row = _one_statement(_ADMIT_UPLOAD, parameters, workspace.id)
    suspended, stored, pages_limit, documents_limit, storage_limit, documents, reserved = row
    if reserved is not None:
        return
    if suspended:
        raise plans.LimitReached(plans.NEON_SUSPENDED_MESSAGE, "neon_quota")
    if documents_limit is not None and documents >= documents_limit:
        raise plans.documents_refusal(documents_limit)
    if storage_limit is not None and stored is not None and stored >= storage_limit:
        raise plans.storage_refusal(storage_limit, stored)
    raise plans.pages_refusal(pages, pages_limit, _used(workspace.id, Period.MONTH, "pages"))


def _one_statement(sql: str, parameters: dict, workspace_id: int) -> tuple:
    """Run a metering statement; a workspace without a plan row yet gets its first plan, and the statement again."""
    for _ in range(2):
        with connection.cursor() as cursor:
            cursor.execute(sql, parameters)
            row = cursor.fetchone()
        if row is not None:
            return row
        plans.workspace_plan(workspace_id)
    raise AssertionError(f"workspace {workspace_id} has no plan")


def pages_reserve(workspace_id: int, pages: int, limit: int | None) -> None:
    if _add(workspace_id, Period.MONTH, "pages", pages, limit) is None:
        assert limit is not None
        raise plans.pages_refusal(pages, limit, _used(workspace_id, Period.MONTH, "pages"))


def pages_change(workspace_id: int, difference: int, measured: int) -> None:
    """A document's measured pages differ by `difference` from what its upload reserved (an office file's text is
    known only once parsed): the extra pages are reserved, or refused (the pages_refusal names `measured`), or the
    surplus is given back. The caller holds the document's row lock, so a rerun changes nothing twice."""
    if difference > 0:
        limit = plans.workspace_limit(workspace_id, "pages_per_month")
        if _add(workspace_id, Period.MONTH, "pages", difference, limit) is None:
            assert limit is not None
            raise plans.pages_refusal(measured, limit, _used(workspace_id, Period.MONTH, "pages"))
    elif difference < 0:
        WorkspaceUsage.objects.filter(
            workspace_id=workspace_id, period=Period.MONTH, starts_on=_period_start(Period.MONTH)
        ).update(pages=_greatest_zero("pages", difference))


def _greatest_zero(column: str, difference: int):
    from django.db.models import F, Value
    from django.db.models.functions import Greatest

    return Greatest(F(column) + Value(difference), Value(0))


def members_admit(workspace: Workspace, with_invitations: bool) -> None:
    """Call inside a transaction before adding a member (or inviting one: pending invitations count as members):
    the workspace row lock orders concurrent invitations, so two cannot both take the last seat."""
    limit = plans.workspace_limit(workspace, "members")
    if limit is None:
        return
    Workspace.objects.select_for_update().filter(id=workspace.id).exists()
    used = Membership.objects.filter(workspace=workspace).count()
    if with_invitations:
        from tenants.models import Invitation

        used += Invitation.objects.filter(
            workspace=workspace, accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()
        ).count()
    if used >= limit:
        raise plans.members_refusal(limit, used)


# --- questions and tokens (in the chat service) ---------------------------------------------------------------------


_ADMIT_QUESTION = f"""
WITH allowed AS (
    SELECT wp.neon_suspended AS suspended,
           {plans.limit_sql("questions_per_day")} AS questions_limit,
           {plans.limit_sql("tokens_per_month")} AS tokens_limit,
           COALESCE((SELECT u.tokens FROM workspace_usage u WHERE u.workspace_id = wp.workspace_id
                     AND u.period = 'month' AND u.starts_on = %(month)s), 0) AS tokens_used
    FROM workspace_plans wp JOIN plans p ON p.id = wp.plan_id WHERE wp.workspace_id = %(workspace)s
), counted AS (
    INSERT INTO workspace_usage (workspace_id, period, starts_on, pages, questions, tokens)
    SELECT %(workspace)s, 'day', %(today)s, 0, 1, 0 FROM allowed
    WHERE NOT allowed.suspended
      AND (allowed.tokens_limit IS NULL OR allowed.tokens_used < allowed.tokens_limit)
      AND (allowed.questions_limit IS NULL OR allowed.questions_limit >= 1)
    ON CONFLICT (workspace_id, period, starts_on) DO UPDATE SET questions = workspace_usage.questions + 1
    WHERE (SELECT questions_limit FROM allowed) IS NULL
       OR workspace_usage.questions + 1 <= (SELECT questions_limit FROM allowed)
    RETURNING questions
)
SELECT allowed.suspended, allowed.questions_limit, allowed.tokens_limit, allowed.tokens_used, (SELECT questions FROM counted)
FROM allowed
"""


def question_admit(workspace: Workspace) -> None:
    """Count one question against today's allowance, or refuse it (also when this month's tokens are spent, or the
    workspace's Neon project is suspended over its quota: a clear status rather than a connection error). One
    statement reads the limits, checks them and counts."""
    parameters = {"workspace": workspace.id, "month": _period_start(Period.MONTH), "today": _period_start(Period.DAY)}
    suspended, questions_limit, tokens_limit, tokens_used, counted = _one_statement(
        _ADMIT_QUESTION, parameters, workspace.id
    )
    if counted is not None:
        return
    if suspended:
        raise plans.LimitReached(plans.NEON_SUSPENDED_MESSAGE, "neon_quota")
    if tokens_limit is not None and tokens_used >= tokens_limit:
        raise plans.tokens_refusal(tokens_limit, tokens_used)
    raise plans.questions_refusal(questions_limit, _used(workspace.id, Period.DAY, "questions"))


def question_refund(workspace_id: int) -> None:
    """A question that got no answer at all (its database could not be reached) does not use up the allowance."""
    WorkspaceUsage.objects.filter(
        workspace_id=workspace_id, period=Period.DAY, starts_on=_period_start(Period.DAY)
    ).update(questions=_greatest_zero("questions", -1))


def tokens_record(workspace_id: int, tokens: int) -> None:
    """The tokens an answer used (the model's usage report, or the extractive estimate). Never refused: the answer
    is already given; the next question is refused once the month's tokens are spent."""
    if tokens > 0:
        _add(workspace_id, Period.MONTH, "tokens", tokens, None)


def tokens_estimate(*texts: str) -> int:
    return sum(-(-len(text) // CHARACTERS_PER_TOKEN) for text in texts if text)


# --- reading usage ---------------------------------------------------------------------------------------------------


@dataclass
class WorkspaceUsageReport:
    workspace: str  # its label (a personal workspace by its person's email)
    slug: str
    plan: str
    pages_this_month: int
    questions_today: int
    tokens_this_month: int
    storage_bytes: int | None
    storage_sampled_at: str | None
    documents: int
    members: int
    neon_suspended: bool
    neon_consumption: dict
    cost_estimate_usd: float
    limits: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _cost(pages: int, tokens: int, storage_bytes: int | None, neon: dict) -> float:
    return round(
        pages * COST_PER_PAGE
        + tokens * COST_PER_TOKEN
        + (storage_bytes or 0) * COST_PER_STORAGE_BYTE_MONTH
        + int(neon.get("compute_time_seconds") or 0) * COST_PER_NEON_COMPUTE_SECOND,
        4,
    )


def usage_report(workspaces=None) -> list[WorkspaceUsageReport]:
    """Usage against limits of the given workspaces (default: all), most expensive first. From the main database
    only: a handful of queries whatever the number of workspaces, no tenant database is reached."""
    queryset = Workspace.objects.select_related("owner").annotate(document_count=Count("documents")).order_by("id")
    if workspaces is not None:
        queryset = queryset.filter(id__in=[w.id for w in workspaces])
    rows = list(queryset)
    ids = [row.id for row in rows]
    month, today = _period_start(Period.MONTH), _period_start(Period.DAY)
    counters: dict[tuple[int, str], WorkspaceUsage] = {
        (u.workspace_id, u.period): u
        for u in WorkspaceUsage.objects.filter(workspace_id__in=ids).filter(starts_on__in=[month, today])
        if (u.period == Period.MONTH and u.starts_on == month) or (u.period == Period.DAY and u.starts_on == today)
    }
    members = dict(
        Membership.objects.filter(workspace_id__in=ids)
        .values("workspace_id")
        .annotate(n=Count("id"))
        .values_list("workspace_id", "n")
    )
    assignments = {a.workspace_id: a for a in WorkspacePlan.objects.select_related("plan").filter(workspace_id__in=ids)}
    reports = []
    for row in rows:
        assignment = assignments.get(row.id) or plans.workspace_plan(row)
        month_row, day_row = counters.get((row.id, Period.MONTH)), counters.get((row.id, Period.DAY))
        pages = month_row.pages if month_row else 0
        tokens = month_row.tokens if month_row else 0
        reports.append(
            WorkspaceUsageReport(
                workspace=row.label,
                slug=row.slug,
                plan=assignment.plan.name,
                pages_this_month=pages,
                questions_today=day_row.questions if day_row else 0,
                tokens_this_month=tokens,
                storage_bytes=assignment.storage_bytes,
                storage_sampled_at=assignment.storage_sampled_at.isoformat() if assignment.storage_sampled_at else None,
                documents=row.document_count,
                members=members.get(row.id, 0),
                neon_suspended=assignment.neon_suspended,
                neon_consumption=assignment.neon_consumption,
                cost_estimate_usd=_cost(pages, tokens, assignment.storage_bytes, assignment.neon_consumption),
                limits=plans.limits_of(assignment).values,
            )
        )
    reports.sort(key=lambda report: (-report.cost_estimate_usd, report.workspace))
    return reports


# --- sampling on a schedule ------------------------------------------------------------------------------------------


@dataclass
class SampleReport:
    sampled: int = 0  # administered tenants whose database size was read
    neon_read: int = 0  # Neon tenants read from the consumption API
    skipped: int = 0  # not ready, or unreachable (logged)
    suspended: list[str] = field(default_factory=list)


def usage_sample() -> SampleReport:
    """The schedule's job: each ready tenant's storage (pg_database_size over the connection registry), and for
    Neon tenants their consumption from Neon's API (which does not wake a compute), with suspension status."""
    report = SampleReport()
    rows = list(
        VectorDatabase.objects.filter(status=VectorDatabase.Status.READY, workspace__isnull=False).order_by("id")
    )
    _sample_administered([row for row in rows if row.provider != "neon"], report)
    _sample_neon([row for row in rows if row.provider == "neon"], report)
    return report


def _sample_administered(rows: list[VectorDatabase], report: SampleReport) -> None:
    import psycopg

    from tenants.services import vector_database_target
    from vectordb.connections import ConnectionCapacityExhausted, get_registry

    registry = get_registry()
    for row in rows:
        try:
            with registry.connection(vector_database_target(row)) as tenant_connection:
                found = tenant_connection.execute("SELECT pg_database_size(current_database())").fetchone()
            size = found[0] if found else 0
        except (psycopg.Error, ConnectionCapacityExhausted) as error:
            logger.warning("sampling the size of tenant %s failed: %s", row.tenant_key, type(error).__name__)
            report.skipped += 1
            continue
        _store_reading(row.workspace_id, storage_bytes=int(size))
        report.sampled += 1


def _store_reading(workspace_id: int | None, **fields) -> None:
    assert workspace_id is not None
    plans.workspace_plan(workspace_id)  # made if missing
    WorkspacePlan.objects.filter(workspace_id=workspace_id).update(
        storage_sampled_at=timezone.now(), updated_at=timezone.now(), **fields
    )


def _sample_neon(rows: list[VectorDatabase], report: SampleReport) -> None:
    from tenants.provisioners import ProvisioningError
    from tenants.provisioners.neon import NeonProvisioner

    if not rows:
        return
    provisioner = NeonProvisioner.from_settings()
    by_project = {row.external_id: row for row in rows if row.external_id}
    try:
        consumption = provisioner.consumption(list(by_project), since=plans.month_start())
    except ProvisioningError as error:
        logger.warning("reading Neon consumption failed: %s", error)
        report.skipped += len(rows)
        return
    synced = dict(
        WorkspacePlan.objects.filter(workspace_id__in=[row.workspace_id for row in rows]).values_list(
            "workspace_id", "neon_quota_synced"
        )
    )
    for project_id, row in by_project.items():
        used = consumption.get(project_id)
        if used is None:
            report.skipped += 1
            continue
        quota = plans.neon_quota(plans.workspace_limits(row.workspace_id))  # type: ignore[arg-type]
        if synced.get(row.workspace_id or 0) != quota:  # a sync that failed earlier (Neon down): send it now
            plans.neon_quota_sync(row.workspace, provisioner)  # type: ignore[arg-type]
        suspended = plans.neon_over_quota(quota, used)
        _store_reading(
            row.workspace_id,
            storage_bytes=int(used.get("synthetic_storage_size_bytes") or 0),
            neon_consumption=used,
            neon_suspended=suspended,
        )
        report.neon_read += 1
        if suspended:
            report.suspended.append(project_id)


@dataclass
class UsageBar:
    label: str
    used: str
    limit: str | None  # None: unlimited
    percent: int  # 0..100, for the bar's width
    note: str = ""


def usage_bars(workspace: Workspace) -> tuple[list[UsageBar], bool]:
    """The account page's usage against limits (from the main database only), and whether Neon suspended it."""
    report = usage_report([workspace])[0]
    limits = report.limits

    def bar(label: str, used: int, limit: int | None, note: str = "", size: bool = False) -> UsageBar:
        shown = plans.size_text if size else plans.count_text  # as the refusals write them
        percent = 0 if not limit else min(100, round(100 * used / limit))
        return UsageBar(label, shown(used), None if limit is None else shown(limit), percent, note)

    reset = plans.next_month_start()
    bars = [
        bar("Pages this month", report.pages_this_month, limits["pages_per_month"], f"resets on {reset:%-d %B}"),
        bar("Questions today", report.questions_today, limits["questions_per_day"], "resets at midnight (UTC)"),
        bar("Model tokens this month", report.tokens_this_month, limits["tokens_per_month"]),
        bar("Documents", report.documents, limits["documents"]),
        bar("Members", report.members, limits["members"]),
    ]
    if report.storage_bytes is not None:
        bars.append(bar("Storage", report.storage_bytes, limits["storage_bytes"], "measured every few minutes", True))
    return bars, report.neon_suspended
