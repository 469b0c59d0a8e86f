"""What a person does with Silo, in a real browser against the real stack: sign up, upload, chat, delete.

Each journey signs up a new person through the sign-up page, so each gets a dedicated database provisioned by the
Celery worker; the `erase_tenant_databases` fixture drops what is left afterwards. Every step is also a screenshot in
tests/e2e/screenshots/.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pypdf
import pytest
from playwright.sync_api import Page, expect

from chat.services import NOT_FOUND_ANSWER
from documents.models import Document
from documents.parsing import CorruptPdf
from tenants.models import User, VectorDatabase

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("erase_tenant_databases"),
]

SOURCE_PDF = Path("/work/shared/eval/pdfs/encguide.pdf")
PASSWORD = "quiet lantern 4817 harbour"
PROVISION_TIMEOUT_MS = 60_000
INGEST_TIMEOUT_MS = 120_000
ANSWER_TIMEOUT_MS = 60_000
BUSY_DATABASE_LABELS = {"Queued", "Provisioning"}


# --- helpers -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def encodings_pdf(tmp_path) -> Path:
    """Three real pages (2-4) of the LaTeX font encodings guide; page 2 of the result tells of the Cork meeting."""
    reader = pypdf.PdfReader(SOURCE_PDF)
    writer = pypdf.PdfWriter()
    for index in (1, 2, 3):
        writer.add_page(reader.pages[index])
    path = tmp_path / "font_encodings.pdf"
    with path.open("wb") as output:
        writer.write(output)
    return path


@pytest.fixture
def broken_pdf(tmp_path) -> Path:
    """Starts like a PDF, then nothing a reader can use."""
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\n" + b"this is not a real PDF body, only garbage \x00\x01\x02\xff\n" * 40)
    return path


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
    # Read together, so that the status cannot change in between.
    first_status, facts_shown = page.evaluate(
        "[document.getElementById('database-status').textContent,"
        " getComputedStyle(document.getElementById('database-facts')).display !== 'none']"
    )
    screenshots.take(page, "dashboard-database-" + first_status.lower())
    if first_status in BUSY_DATABASE_LABELS:
        assert not facts_shown, "the database facts (all blank) show while the database is being provisioned"
    return first_status


def wait_for_database_ready(page: Page, screenshots) -> None:
    _mark_page(page)
    expect(page.locator("#database-status")).to_have_text("Ready", timeout=PROVISION_TIMEOUT_MS)
    assert _still_same_page(page), "the dashboard reloaded instead of updating the status in place"
    expect(page.locator("#database-facts")).to_be_visible()
    expect(page.locator("#database-facts [data-fact=embedding_model]")).to_have_text("all-MiniLM-L6-v2")
    screenshots.take(page, "dashboard-database-ready")


def upload(page: Page, path: Path) -> None:
    """Chooses a file in the dropzone's file input; the page uploads it and reloads to list it."""
    with page.expect_navigation():
        page.set_input_files("#upload-files", str(path))
    page.wait_for_load_state()


def document_item(page: Page, title: str):
    return page.locator("#documents li.document").filter(has=page.locator(".document-title", has_text=title))


def watch_status(page: Page, title: str) -> None:
    """Records every label the document's status badge shows from now on (window.__statuses)."""
    page.evaluate(
        """title => {
            const item = [...document.querySelectorAll('#documents li.document')]
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
        document = Document.objects.filter(title=title).values("status", "progress", "error_message", "owner_id")
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


# --- journeys --------------------------------------------------------------------------------------------------------


def test_sign_up_upload_and_chat_with_cited_pages(page, asgi_server, screenshots, encodings_pdf):
    base = asgi_server.url
    first_status = sign_up(page, base, "reader@example.com", screenshots)
    assert first_status in BUSY_DATABASE_LABELS | {"Ready"}
    wait_for_database_ready(page, screenshots)
    expect(page.locator("#documents-empty")).to_be_visible()

    upload(page, encodings_pdf)
    expect(page.locator("#upload-feedback")).to_have_text("")  # the page reloaded with the new document listed
    statuses = wait_for_document(page, "font encodings", "Ready", screenshots)
    assert statuses[0] in {"Queued", "Parsing", "Embedding", "Ready"}, statuses
    item = document_item(page, "font encodings")
    expect(item.locator("[data-field=facts]")).to_contain_text("3 pages")
    expect(item.locator("[data-field=progress]")).to_be_hidden()
    expect(item.locator("[data-field=error]")).to_be_hidden()
    document = Document.objects.get(owner__email="reader@example.com")
    assert (document.status, document.page_count) == (Document.Status.READY, 3)

    # The document became ready in place: it can be opened from the same page.
    item.get_by_role("link", name="Open and chat").click()
    page.wait_for_url(f"{base}/documents/{document.id}/")
    viewer = page.locator("#pdf-viewer")
    expect(viewer).to_have_attribute("src", f"/documents/{document.id}/file#page=1")
    screenshots.take(page, "chat-empty")

    ask(page, "What did the TUG Annual General Meeting in Cork specify?")
    expect(page.locator("#transcript .turn-user")).to_have_text(
        "What did the TUG Annual General Meeting in Cork specify?"
    )
    answer = page.locator("#transcript .turn-assistant").last
    expect(answer.locator("a.citation").first).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(answer).not_to_have_class("turn turn-assistant streaming")
    expect(answer.locator(".turn-text")).to_contain_text("Cork")
    expect(page.locator("#question")).to_have_value("")
    conversation = page.locator(".conversations .conversation-list li[aria-current=true]")
    expect(conversation).to_have_count(1)
    expect(conversation.get_by_role("link")).to_have_text("What did the TUG Annual General Meeting in Cork specify?")
    expect(page.locator(".conversations .empty")).to_have_count(0)
    expect(answer.locator("a.citation").last).to_be_in_viewport()  # the transcript followed the answer down
    screenshots.take(page, "chat-answer")

    citations = answer.locator("a.citation")
    pages = [int(citations.nth(index).get_attribute("data-page")) for index in range(citations.count())]
    assert all(1 <= number <= 3 for number in pages), pages
    # The passage about Cork is on page 2: it must be among the sources, and its citation opens the viewer there.
    cork = citations.filter(has_text="p. 2").first
    expect(cork).to_be_visible()
    expect(cork).to_have_text("[" + cork.inner_text().split("]")[0].lstrip("[") + "] font encodings, p. 2")
    # Chromium's viewer ignores a new fragment alone: the page must load the file again, at page 2.
    with page.expect_response(f"{base}/documents/{document.id}/file"):
        cork.click()
    assert viewer.get_attribute("src").endswith("#page=2")
    assert page.url.startswith(f"{base}/documents/{document.id}/")  # the click stayed on the chat page
    page.wait_for_timeout(1500)  # the viewer (another process) turns the page; let the screenshot show it
    screenshots.take(page, "chat-citation-opened")
    assert_no_script_errors(page)


def test_an_answer_quotes_its_source_and_a_question_the_documents_cannot_answer_is_not_found(
    page, asgi_server, screenshots, encodings_pdf
):
    base = asgi_server.url
    sign_up(page, base, "asker@example.com", screenshots)
    wait_for_database_ready(page, screenshots)
    upload(page, encodings_pdf)
    wait_for_document(page, "font encodings", "Ready", screenshots)
    document_item(page, "font encodings").get_by_role("link", name="Open and chat").click()

    ask(page, "What did the TUG Annual General Meeting in Cork specify?")
    quoted = page.locator("#transcript .turn-assistant").last
    expect(quoted).to_contain_text("specified a uniform encoding", timeout=ANSWER_TIMEOUT_MS)
    expect(quoted.locator("a.citation").first).to_be_visible()
    # The answer is the quoted sentence, not pages of excerpts.
    assert len(quoted.inner_text()) < 600, quoted.inner_text()
    screenshots.take(page, "quoted-answer")

    ask(page, "Who painted the Mona Lisa?")
    not_found = page.locator("#transcript .turn-assistant").nth(1)
    expect(not_found).to_contain_text(NOT_FOUND_ANSWER, timeout=ANSWER_TIMEOUT_MS)
    expect(not_found.locator("a.citation")).to_have_count(0)
    screenshots.take(page, "not-found-answer")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshots.take(page, "not-found-answer-phone")

    # Both answers are kept as they were shown: the conversation reopens with them.
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(f"{base}/chat/")
    page.locator(".conversations .conversation-list a", has_text="What did the TUG Annual General Meeting").click()
    expect(page.locator("#transcript .turn-assistant").nth(0)).to_contain_text("specified a uniform encoding")
    expect(page.locator("#transcript .turn-assistant").nth(1)).to_contain_text(NOT_FOUND_ANSWER)
    expect(page.locator("#transcript .turn-assistant").nth(1).locator("a.citation")).to_have_count(0)
    assert_no_script_errors(page)


def test_a_broken_pdf_shows_why_it_failed(page, asgi_server, screenshots, broken_pdf):
    sign_up(page, asgi_server.url, "broken@example.com", screenshots)
    wait_for_database_ready(page, screenshots)

    upload(page, broken_pdf)
    wait_for_document(page, "broken", "Failed", screenshots)

    item = document_item(page, "broken")
    expect(item.locator("[data-field=error]")).to_be_visible()
    expect(item.locator("[data-field=error]")).to_have_text(CorruptPdf.default_message)
    expect(item.locator("[data-field=progress]")).to_be_hidden()
    expect(item.get_by_role("link", name="Open and chat")).to_have_count(0)
    document = Document.objects.get(owner__email="broken@example.com")
    assert (document.status, document.error_message) == (Document.Status.FAILED, CorruptPdf.default_message)
    # The reason is still there on the next visit.
    page.reload()
    expect(document_item(page, "broken").locator("[data-field=error]")).to_have_text(CorruptPdf.default_message)
    screenshots.take(page, "dashboard-failed-after-reload")
    assert_no_script_errors(page)


def test_deleting_a_document_after_confirming_removes_it(page, asgi_server, screenshots, encodings_pdf):
    sign_up(page, asgi_server.url, "tidy@example.com", screenshots)
    wait_for_database_ready(page, screenshots)
    upload(page, encodings_pdf)
    wait_for_document(page, "font encodings", "Ready", screenshots)
    item = document_item(page, "font encodings")

    # Dismissing the dialog deletes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    item.get_by_role("button", name="Delete").click()
    expect(item).to_have_count(1)
    assert Document.objects.filter(owner__email="tidy@example.com").count() == 1

    dialogs = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    with page.expect_navigation():
        item.get_by_role("button", name="Delete").click()

    assert dialogs == ["Delete “font encodings” and its chunks?"]
    expect(page.locator(".message-success")).to_have_text("Document deleted.")
    expect(page.locator("#documents li.document")).to_have_count(0)
    expect(page.locator("#documents-empty")).to_be_visible()
    assert Document.objects.filter(owner__email="tidy@example.com").count() == 0
    screenshots.take(page, "dashboard-after-delete")
    assert_no_script_errors(page)


def test_deleting_the_account_drops_its_database_and_sign_in_fails(page, asgi_server, admin_dsn, screenshots):
    base = asgi_server.url
    email = "leaving@example.com"
    sign_up(page, base, email, screenshots)
    wait_for_database_ready(page, screenshots)
    vector_database = VectorDatabase.objects.get(tenant__email=email)
    assert tenant_database_exists(admin_dsn, vector_database.external_id)

    page.goto(f"{base}/account/")
    # A wrong address deletes nothing.
    page.fill("#confirm-email", "someone.else@example.com")
    page.get_by_role("button", name="Delete my account and all my data").click()
    expect(page.locator(".message-error")).to_have_text(
        "Type your email address exactly to confirm deleting your account."
    )
    assert User.objects.filter(email=email, is_active=True).exists()
    screenshots.take(page, "account-wrong-confirmation")

    page.fill("#confirm-email", email)
    screenshots.take(page, "account-confirm")
    page.get_by_role("button", name="Delete my account and all my data").click()
    page.wait_for_url(f"{base}/accounts/login/")
    expect(page.locator(".message-success")).to_contain_text("Your account is being deleted")
    screenshots.take(page, "account-deleted-signed-out")

    deadline = time.monotonic() + 60
    while tenant_database_exists(admin_dsn, vector_database.external_id) or User.objects.filter(email=email).exists():
        assert time.monotonic() < deadline, "the tenant database or the account outlived the deletion by 60 s"
        time.sleep(0.25)
    vector_database.refresh_from_db()
    assert (vector_database.status, vector_database.tenant_id) == (VectorDatabase.Status.DELETED, None)

    page.goto(f"{base}/accounts/login/")
    page.fill("#id_login", email)
    page.fill("#id_password", PASSWORD)
    page.locator("main form button[type=submit]").click()
    expect(page.locator("main")).to_contain_text("The email address and/or password you specified are not correct.")
    assert page.url == f"{base}/accounts/login/"
    screenshots.take(page, "sign-in-refused")
    page.goto(f"{base}/dashboard/")
    page.wait_for_url(f"{base}/accounts/login/?next=/dashboard/")
    assert_no_script_errors(page)


def test_a_model_answer_streams_token_by_token_while_the_box_stays_usable(
    page, openai_asgi_server, openai_emulator, screenshots, encodings_pdf
):
    base = openai_asgi_server.url
    sign_up(page, base, "streaming@example.com", screenshots)
    wait_for_database_ready(page, screenshots)
    upload(page, encodings_pdf)
    wait_for_document(page, "font encodings", "Ready", screenshots)
    document = Document.objects.get(owner__email="streaming@example.com")

    # A long answer, a pause between tokens: slow enough to watch it grow.
    openai_emulator.answer = (
        "At the 1990 TUG Annual General Meeting in Cork, Ireland, a group specified a uniform encoding for "
        "256-glyph fonts, with accented letters and the non-ASCII letters that European languages need [1]. "
        "It is known as the Cork encoding, and LaTeX calls it T1 [1]."
    )
    openai_emulator.token_delay_seconds = 0.06
    chats_before = openai_emulator.request_counts["chat.completions"]
    page.goto(f"{base}/documents/{document.id}/")
    ask(page, "What is the Cork encoding?")

    answer = page.locator("#transcript .turn-assistant").last
    expect(answer).to_have_class("turn turn-assistant streaming")
    lengths = []
    typed = False
    while "streaming" in (answer.get_attribute("class") or ""):
        lengths.append(len(answer.locator(".turn-text").inner_text()))
        if not typed and lengths[-1] > 0:
            # Mid-answer, the question box takes the next question.
            page.locator("#question").click()
            page.keyboard.type("And who specified it?")
            expect(page.locator("#question")).to_be_editable()
            expect(page.locator("#question")).to_be_focused()
            expect(page.locator("#chat-state")).to_have_text("Answering…")
            screenshots.take(page, "chat-streaming")
            typed = True
        page.wait_for_timeout(100)
    assert typed, "the answer finished before a single token could be seen"
    growth = [length for length in lengths if length > 0]
    assert len(set(growth)) >= 5 and growth == sorted(growth), lengths

    expect(answer.locator(".turn-text")).to_have_text(openai_emulator.answer)
    expect(answer.locator("a.citation").first).to_be_visible()
    expect(page.locator("#question")).to_have_value("And who specified it?")
    expect(page.locator("#chat-state")).to_have_text("")
    assert openai_emulator.request_counts["chat.completions"] == chats_before + 1
    screenshots.take(page, "chat-streamed-answer")

    # The typed follow-up goes out as the next turn of the same conversation; the model rewrites it as a question
    # that stands alone before the search.
    openai_emulator.token_delay_seconds = 0
    openai_emulator.answer = "A group at the TUG Annual General Meeting in Cork specified it [1]."
    openai_emulator.rewrite = "Who specified the Cork encoding?"
    page.press("#question", "Enter")
    expect(page.locator("#transcript .turn-assistant")).to_have_count(2)
    expect(page.locator("#transcript .turn-assistant").last.locator(".turn-text")).to_have_text(
        openai_emulator.answer, timeout=ANSWER_TIMEOUT_MS
    )
    assert "c=" in page.url
    expect(page.locator(".conversations .conversation-list li")).to_have_count(1)  # one conversation, two turns
    expect(page.locator("#transcript .turn-assistant").last.locator("a.citation").last).to_be_in_viewport()
    openai_emulator.rewrite = None
    screenshots.take(page, "chat-follow-up")
    assert_no_script_errors(page)
