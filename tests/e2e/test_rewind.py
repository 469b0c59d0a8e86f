"""Rewind in a real browser: the owner backs the workspace up from its page, adds a document, then rewinds to the
restore point; the dashboard shows the earlier state (the later document gone), and the page lists the restore point
with its download on a phone too. A Rewind the worker refuses shows on the page with its reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from documents.models import Document
from tenants import archive_store
from tenants.models import TenantArchive
from tests.e2e.steps import (
    assert_no_script_errors,
    document_item,
    has_no_sideways_scroll,
    sign_up,
    upload,
    wait_for_database_ready,
    wait_for_document,
)
from tests.pdf_factory import text_pdf

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("erase_tenant_databases"),
    pytest.mark.timeout(300),
]

HARBOUR = ["Harbour rules. The lamp of the lighthouse is cleaned every morning at dawn by the keeper on duty."]
ORCHARD = ["Orchard notes. Forty apple trees are pruned in late winter, before the buds open."]


def _reload_until(page, condition, timeout: float = 90) -> None:
    """The worker does the backup and the rewind: the page shows them once it is reloaded after they finish."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the worker did not finish in time"
        time.sleep(1)
        page.reload()


def test_owner_backs_up_then_rewinds_the_workspace_to_before_a_new_document(
    page, phone_page, asgi_server, screenshots, tmp_path: Path
):
    base = asgi_server.url
    sign_up(page, base, "rewind@example.com", screenshots)
    wait_for_database_ready(page, screenshots)
    harbour, orchard = tmp_path / "harbour_rules.pdf", tmp_path / "orchard_notes.pdf"
    harbour.write_bytes(text_pdf(HARBOUR))
    orchard.write_bytes(text_pdf(ORCHARD))
    upload(page, harbour)
    wait_for_document(page, "harbour rules", "Ready", screenshots)

    # Back up now, from the workspace page; the restore point appears when the worker is done.
    page.goto(f"{base}/workspace/members")
    expect(page.locator("#no-restore-points")).to_be_visible()
    page.get_by_role("button", name="Back up now").click()
    expect(page.locator(".messages")).to_contain_text("A backup is being made")
    _reload_until(page, lambda: page.locator("#restore-points tbody tr").count() == 1)
    expect(page.locator("#backup-status")).not_to_contain_text("none yet")
    screenshots.take(page, "restore-point")

    # A later document, then Rewind to the restore point.
    page.goto(f"{base}/dashboard/")
    upload(page, orchard)
    wait_for_document(page, "orchard notes", "Ready", screenshots)
    assert Document.objects.count() == 2
    page.goto(f"{base}/workspace/members")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename.endswith(".tar")
    page.get_by_role("button", name="Rewind to").click()
    expect(page.locator(".messages")).to_contain_text("Rewinding")
    _reload_until(page, lambda: Document.objects.count() == 1 and not page.locator("#backup-operation").count())
    screenshots.take(page, "rewound")

    page.goto(f"{base}/dashboard/")
    expect(document_item(page, "harbour rules")).to_have_count(1)
    expect(document_item(page, "orchard notes")).to_have_count(0)
    screenshots.take(page, "dashboard-after-rewind")
    assert TenantArchive.objects.filter(status="ready").count() == 1
    page.goto(f"{base}/workspace/members")
    _reload_until(page, lambda: page.locator("#backup-outcome").count() == 1)
    expect(page.locator("#backup-outcome")).to_contain_text("Rewind done")

    # A Rewind the worker cannot do (the restore point's file is gone from storage) is shown on the page with why.
    archive_store.delete(TenantArchive.objects.get(status="ready").file_name)
    page.get_by_role("button", name="Rewind to").click()
    expect(page.locator(".messages")).to_contain_text("Rewinding")
    _reload_until(page, lambda: page.locator('#backup-outcome[data-ok="false"]').count() == 1)
    expect(page.locator("#backup-outcome")).to_contain_text("Rewind failed")
    expect(page.locator("#backup-outcome")).to_contain_text("is missing from the archive storage")
    screenshots.take(page, "rewind-failed")
    assert_no_script_errors(page)

    # The same page on a phone.
    phone_page.context.add_cookies(page.context.cookies())
    phone_page.goto(f"{base}/workspace/members#backups")
    expect(phone_page.locator("#restore-points")).to_be_visible()
    expect(phone_page.locator("#backup-outcome")).to_contain_text("Rewind failed")
    assert has_no_sideways_scroll(phone_page)
    screenshots.take(phone_page, "phone-backups")
