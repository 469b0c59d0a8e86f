"""Steps of the end-to-end journeys, shared by the test modules: sign up, wait, upload, ask, open a citation."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from playwright.sync_api import Page, expect

from documents.models import Document

PASSWORD = "quiet lantern 4817 harbour"
PROVISION_TIMEOUT_MS = 60_000
INGEST_TIMEOUT_MS = 120_000
ANSWER_TIMEOUT_MS = 60_000
BUSY_DATABASE_LABELS = {"Queued", "Provisioning"}


def _mark_page(page: Page) -> None:
    """A flag that survives only as long as this very document: gone after any reload or navigation."""
    page.evaluate("window.__sameDocument = true")


def _still_same_page(page: Page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def sign_up(page: Page, base_url: str, email: str, screenshots) -> str:
    """Signs up through the form and returns the database status the dashboard first showed."""
    page.goto(f"{base_url}/accounts/signup/")
    screenshots.take(page, "signup-form")
    page.fill("#id_email", email)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(f"{base_url}/dashboard/")
    # The documents page mentions the database only while it is not ready.
    first_status = page.evaluate("document.getElementById('database-status')?.textContent ?? 'Ready'")
    screenshots.take(page, "dashboard-database-" + first_status.lower())
    return first_status


def wait_for_database_ready(page: Page, screenshots) -> None:
    """Waits on the dashboard, without reloading, for the database; then checks its facts on the account page."""
    if page.locator("#database-status").count():
        _mark_page(page)
        expect(page.locator("#database-status")).to_have_text("Ready", timeout=PROVISION_TIMEOUT_MS)
        expect(page.locator("#database-message")).to_have_text("Your database is ready.")
        assert _still_same_page(page), "the dashboard reloaded instead of updating the status in place"
        screenshots.take(page, "dashboard-database-ready")
    dashboard = page.url
    page.goto(dashboard.replace("/dashboard/", "/account/"))
    expect(page.locator("#database-facts")).to_be_visible()
    expect(page.locator("#database-facts [data-fact=embedding_model]")).to_have_text("all-MiniLM-L6-v2")
    screenshots.take(page, "account-database-facts")
    page.goto(dashboard)
    expect(page.locator("#database-card")).to_have_count(0)


def upload(page: Page, path: Path) -> None:
    """Chooses a file in the dropzone's file input; the page uploads it and reloads to list it."""
    with page.expect_navigation():
        page.set_input_files("#upload-files", str(path))
    page.wait_for_load_state()


def document_item(page: Page, title: str):
    return page.locator("#documents tr.document").filter(has=page.locator(".document-title", has_text=title))


def watch_status(page: Page, title: str) -> None:
    """Records every label the document's status badge shows from now on (window.__statuses)."""
    page.evaluate(
        """title => {
            const item = [...document.querySelectorAll('#documents tr.document')]
              .find(li => li.querySelector('.document-title').textContent.trim() === title);
            const badge = item.querySelector('[data-field=status]');
            window.__statuses = [badge.textContent];
            new MutationObserver(() => window.__statuses.push(badge.textContent))
              .observe(badge, {childList: true, characterData: true, subtree: true});
        }""",
        title,
    )


def wait_for_document(page: Page, title: str, label: str, screenshots) -> list[str]:
    """Waits on the dashboard, without reloading, for the document's status; returns the labels it went through."""
    item = document_item(page, title)
    expect(item).to_have_count(1)
    _mark_page(page)
    watch_status(page, title)
    screenshots.take(page, "dashboard-document-" + item.locator("[data-field=status]").inner_text().lower())
    try:
        expect(item.locator("[data-field=status]")).to_have_text(label, timeout=INGEST_TIMEOUT_MS)
    except AssertionError as error:
        document = Document.objects.filter(title=title).values("status", "progress", "error_message", "uploaded_by_id")
        raise AssertionError(f"{error}\ndocument rows: {list(document)}; see the Celery worker's log") from None
    assert _still_same_page(page), "the dashboard reloaded instead of updating the progress in place"
    screenshots.take(page, "dashboard-document-" + label.lower())
    return page.evaluate("window.__statuses")


def ask(page: Page, question: str) -> None:
    page.fill("#question", question)
    page.press("#question", "Enter")


def tenant_database_exists(admin_dsn: str, name: str) -> bool:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        return bool(admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone())


def assert_no_script_errors(page: Page) -> None:
    assert page.errors == [], page.errors


# --- the chat --------------------------------------------------------------------------------------------------------


def last_answer(page: Page):
    return page.locator("#transcript .turn-assistant").last


def wait_for_answer(page: Page):
    """The last answer once it has finished streaming (with its footer, an error or the stopped note)."""
    answer = last_answer(page)
    expect(answer.locator(".turn-footer, .error-text, .stopped-note").first).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
    return answer


def answer_citations(page: Page) -> list[dict]:
    """The citations the last answer received (the `sources` event, or the stored message)."""
    return page.evaluate("[...document.querySelectorAll('#transcript .turn-assistant')].pop().citations")


def open_citation(page: Page, number: int) -> None:
    """Clicks the last answer's chip for citation `number`, or its entry among the folded sources when the answer's
    text has no marker for it (an extractive answer cites only the passage it quotes)."""
    answer = last_answer(page)
    chip = answer.locator(f".turn-text .chip[data-citation='{number}']")
    if chip.count():
        chip.first.click()
        return
    sources = answer.locator("details.sources")
    if sources.get_attribute("open") is None:
        sources.locator("summary").click()
    sources.locator(f".source-item[data-citation='{number}']").click()


def letters(text: str) -> str:
    return re.sub(r"[\W_]", "", text).lower()


def expect_highlighted(page: Page, citation: dict, pages: int) -> str:
    """The side panel shows the citation's page with its passage (quote, else text) highlighted; returns the
    highlighted text."""
    panel = page.locator("#source-panel")
    expect(panel).to_be_visible()
    expect(panel).to_have_attribute("data-highlighted-page", str(citation["page"]), timeout=30_000)
    expect(page.locator("#source-page")).to_contain_text(f"{citation['page']}")
    expect(page.locator("#source-page")).to_contain_text(f"{pages}")
    marks = page.locator(f"#pdf-viewer .page[data-page-number='{citation['page']}'] .silo-passage")
    expect(marks.first).to_be_in_viewport()
    highlighted = "".join(marks.all_text_contents())
    passage = citation.get("quote") or citation["text"]
    coverage = float(panel.get_attribute("data-highlight-coverage"))
    assert coverage >= 0.9, (coverage, highlighted, passage)
    assert letters(highlighted) in letters(passage) or coverage < 1, (highlighted, passage)
    return highlighted


def has_no_sideways_scroll(page: Page) -> bool:
    return page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")
