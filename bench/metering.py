"""Metering overhead (issue 21): what plans and usage add to each chat request and each upload and ingest.

Measured on the main database (embedded PostgreSQL) with the calls the request paths make, each timed as a whole:
- chat: `usage.question_admit` (the plan read, the tokens check, the conditional upsert of the day's counter) and
  `usage.tokens_record` (the month's tokens), the two calls `chat_turn` adds to a turn;
- ingest at upload: `usage.upload_admit` inside the upload's transaction with the workspace row locked, as
  `document_upload` runs it (plan read, documents count, the pages reservation), commit included;
- ingest in the pipeline: the plan's per-document caps read (`plans.workspace_limits`) and `_pages_remeasure` for
  a document whose pages were already right (the path every PDF and most other files take).
The workspace's plan is unlimited for the run, so no request is refused; counters grow as in production.
"""

from __future__ import annotations

import time

from django.core.files.base import ContentFile
from django.db import transaction

from bench.common import create_tenants, milliseconds, percentile, progress, remove_tenants
from bench.framework import Target
from documents.models import Document
from documents.services import _pages_remeasure
from tenants import plans, usage
from tenants.models import Workspace

TARGETS = [
    Target("chat_p50_ms", at_most=1.0, unit=" ms", label="chat_p50_ms (metering per chat request)"),
    Target("upload_p50_ms", at_most=1.0, unit=" ms", label="upload_p50_ms (metering per upload)"),
    Target("ingest_p50_ms", at_most=1.0, unit=" ms", label="ingest_p50_ms (metering per ingest run)"),
]
PREFIX = "bench-metering"
REQUESTS, QUICK_REQUESTS = 2000, 300
WARM_UP = 50


def _timed(count: int, call) -> list[float]:
    for _ in range(WARM_UP):
        call()
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return timings


def _summary(name: str, timings: list[float]) -> dict:
    return {
        f"{name}_p50_ms": round(percentile(timings, 0.5) * 1000, 3),
        f"{name}_p95_ms": round(percentile(timings, 0.95) * 1000, 3),
        f"{name}_max_ms": milliseconds(max(timings)),
    }


def run(quick: bool) -> dict:
    count = QUICK_REQUESTS if quick else REQUESTS
    remove_tenants(PREFIX)
    (row,) = create_tenants(PREFIX, 1)
    workspace = Workspace.objects.get(id=row.workspace_id)
    unlimited = [f"{name}=none" for name in ("documents", "pages_per_month", "questions_per_day", "tokens_per_month")]
    plans.workspace_plan_change(workspace, overrides=unlimited)
    document = Document.objects.create(
        workspace=workspace, title="bench", original_filename="bench.pdf", file=ContentFile(b"%PDF", name="b.pdf"),
        size_bytes=4, sha256="0" * 64, pages_metered=3,
    )  # fmt: skip
    result: dict = {"n": count}
    try:
        progress(f"chat: {count} requests")

        def chat_request() -> None:
            usage.question_admit(workspace)
            usage.tokens_record(workspace.id, 420)

        result.update(_summary("chat", _timed(count, chat_request)))

        progress(f"upload: {count} requests")

        def upload_request() -> None:
            with transaction.atomic():
                Workspace.objects.select_for_update().filter(id=workspace.id).exists()  # as document_upload does
                usage.upload_admit(workspace, 3)

        # The lock is the upload's own, taken without metering too: only what metering adds is counted.
        def upload_lock_only() -> None:
            with transaction.atomic():
                Workspace.objects.select_for_update().filter(id=workspace.id).exists()

        with_metering = _timed(count, upload_request)
        lock_only = _timed(count, upload_lock_only)
        result.update(_summary("upload", [max(0.0, a - b) for a, b in zip(sorted(with_metering), sorted(lock_only),
                                                                           strict=True)]))  # fmt: skip
        result["upload_with_lock_p50_ms"] = round(percentile(with_metering, 0.5) * 1000, 3)

        progress(f"ingest: {count} runs")

        def ingest_run() -> None:
            plans.workspace_limits(workspace.id)
            _pages_remeasure(document, 3)

        result.update(_summary("ingest", _timed(count, ingest_run)))
    finally:
        remove_tenants(PREFIX)
    return result
