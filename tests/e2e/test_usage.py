"""Usage against the plan in a real browser (issue 21): the account page shows bars for pages, questions, documents
and members; an upload over the monthly pages is refused with the limit, what is used and when it resets."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tenants import plans
from tenants.models import User, Workspace
from tests.e2e.steps import (
    PASSWORD,
    assert_no_script_errors,
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
]


def test_the_account_page_shows_usage_bars_and_an_upload_over_the_limit_is_refused(
    page, phone_page, asgi_server, screenshots, tmp_path
):
    base = asgi_server.url
    sign_up(page, base, "usage@example.com", screenshots)
    wait_for_database_ready(page, screenshots)
    workspace = Workspace.objects.personal_for(User.objects.get(email="usage@example.com"))
    plans.workspace_plan_change(workspace, overrides=["pages_per_month=5", "documents=4"])

    harbour = tmp_path / "harbour_rules.pdf"
    harbour.write_bytes(text_pdf([f"Harbour rule {n}: ships keep to the right of the buoy." for n in range(4)]))
    page.goto(f"{base}/")
    upload(page, harbour)
    wait_for_document(page, "harbour rules", "Ready", screenshots)

    tides = tmp_path / "tide_tables.pdf"
    tides.write_bytes(text_pdf([f"Tide table for week {n}." for n in range(3)]))
    page.set_input_files("#upload-files", str(tides))  # refused: the page stays and says why
    refusal = page.get_by_text("this document has 3 pages; this workspace's limit is 5 pages a month and 4 are used")
    expect(refusal).to_be_visible()
    screenshots.take(page, "upload-refused")

    page.goto(f"{base}/account/")
    card = page.locator("#usage-card")
    expect(card).to_be_visible()
    pages_row = card.locator(".usage-row").filter(has_text="Pages this month")
    expect(pages_row).to_contain_text("4 of 5")
    expect(pages_row.locator("progress")).to_have_attribute("value", "80")
    expect(card.locator(".usage-row").filter(has_text="Documents")).to_contain_text("1 of 4")
    card.scroll_into_view_if_needed()
    screenshots.take(page, "account-usage")
    assert_no_script_errors(page)

    phone_page.goto(f"{base}/accounts/login/")
    phone_page.fill("input[name=login]", "usage@example.com")
    phone_page.fill("input[name=password]", PASSWORD)
    phone_page.locator("form button[type=submit]").first.click()
    phone_page.wait_for_url(f"{base}/**")
    phone_page.goto(f"{base}/account/")
    expect(phone_page.locator("#usage-card")).to_be_visible()
    assert has_no_sideways_scroll(phone_page)
    screenshots.take(phone_page, "account-usage-phone")
    assert_no_script_errors(phone_page)
