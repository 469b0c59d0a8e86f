"""What a person does with Silo, in a real browser against the real stack: sign up, upload, chat, delete.

Each journey signs up a new person through the sign-up page, so each gets a dedicated database provisioned by the
Celery worker; the `erase_tenant_databases` fixture drops what is left afterwards. Every step is also a screenshot in
tests/e2e/screenshots/.
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from chat.services import NOT_FOUND_ANSWER
from documents.models import Document
from documents.parsing import CorruptPdf
from tenants.models import User, VectorDatabase
from tests.e2e.steps import (
    ANSWER_TIMEOUT_MS,
    BUSY_DATABASE_LABELS,
    PASSWORD,
    answer_citations,
    ask,
    assert_no_script_errors,
    document_item,
    expect_highlighted,
    open_citation,
    sign_up,
    tenant_database_exists,
    upload,
    wait_for_answer,
    wait_for_database_ready,
    wait_for_document,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("erase_tenant_databases"),
]


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
    document = Document.objects.get(uploaded_by__email="reader@example.com")
    assert (document.status, document.page_count) == (Document.Status.READY, 3)

    # The document became ready in place: it can be opened from the same page, the PDF beside the chat.
    item.get_by_role("link", name="Open and chat").click()
    page.wait_for_url(f"{base}/documents/{document.id}/")
    expect(page.locator("#source-panel")).to_be_visible()
    expect(page.locator("#source-page")).to_have_text("Page 1 of 3", timeout=30_000)
    expect(page.locator("#pdf-viewer .page")).to_have_count(3)
    # An empty chat offers questions drawn from the document.
    starters = page.locator("#starters button.starter")
    expect(starters.first).to_be_visible()
    assert all(text.startswith("What ") and text.endswith("?") for text in starters.all_inner_texts())
    screenshots.take(page, "chat-empty")

    # The length limit is shown, not enforced by cutting: an over-long question stays whole and cannot be sent.
    page.fill("#question", "x" * 4001)
    expect(page.locator("#question-count")).to_have_text("4,001 / 4,000 · 1 character too long")
    expect(page.locator("#ask-button")).to_be_disabled()
    page.press("#question", "Enter")
    expect(page.locator("#transcript .turn")).to_have_count(0)
    assert len(page.input_value("#question")) == 4001
    page.fill("#question", "")
    expect(page.locator("#question-count")).to_have_text("0 / 4,000")

    # A starter question is asked with one click.
    first_starter = starters.first.inner_text()
    starters.first.click()
    expect(page.locator("#transcript .turn-user")).to_have_text(first_starter)
    wait_for_answer(page)
    expect(page.locator("#starters")).to_have_count(0)

    ask(page, "What did the TUG Annual General Meeting in Cork specify?")
    expect(page.locator("#transcript .turn-user").last).to_have_text(
        "What did the TUG Annual General Meeting in Cork specify?"
    )
    answer = wait_for_answer(page)
    expect(answer.locator(".turn-text")).to_contain_text("Cork")
    expect(answer.locator(".turn-text .chip").first).to_be_visible()
    expect(answer.locator("details.sources")).not_to_have_attribute("open", "")  # the passages are folded
    expect(page.locator("#question")).to_have_value("")
    conversation = page.locator(".conversations .conversation-list li[aria-current=true]")
    expect(conversation).to_have_count(1)
    expect(conversation.locator(".conversation-title")).to_have_text(first_starter)
    expect(page.locator(".conversations-empty")).to_be_hidden()
    expect(answer.locator(".copy-button")).to_be_in_viewport()  # the transcript followed the answer down
    screenshots.take(page, "chat-answer")

    citations = answer_citations(page)
    assert citations and all(1 <= citation["page"] <= 3 for citation in citations), citations
    # The passage about Cork is on page 2: its citation opens the side panel there, the passage highlighted.
    cork = next(c for c in citations if "Cork" in (c.get("quote") or c["text"]) and c["page"] == c["page_end"] == 2)
    open_citation(page, cork["number"])
    highlighted = expect_highlighted(page, cork, pages=3)
    assert "Cork" in highlighted
    assert page.url.startswith(f"{base}/documents/{document.id}/")  # the click stayed on the chat page
    screenshots.take(page, "chat-citation-highlighted")
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
    expect(quoted.locator(".turn-text .chip").first).to_be_visible()
    # The answer is the quoted sentence, not pages of excerpts.
    assert len(quoted.locator(".turn-text").inner_text()) < 600, quoted.inner_text()
    screenshots.take(page, "quoted-answer")

    ask(page, "Who painted the Mona Lisa?")
    not_found = page.locator("#transcript .turn-assistant").nth(1)
    expect(not_found).to_contain_text(NOT_FOUND_ANSWER, timeout=ANSWER_TIMEOUT_MS)
    expect(not_found.locator(".turn-text .chip")).to_have_count(0)
    screenshots.take(page, "not-found-answer")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshots.take(page, "not-found-answer-phone")

    # Both answers are kept as they were shown: the conversation reopens with them.
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(f"{base}/chat/")
    page.locator(".conversations .conversation-list a", has_text="What did the TUG Annual General Meeting").click()
    expect(page.locator("#transcript .turn-assistant").nth(0)).to_contain_text("specified a uniform encoding")
    expect(page.locator("#transcript .turn-assistant").nth(1)).to_contain_text(NOT_FOUND_ANSWER)
    expect(page.locator("#transcript .turn-assistant").nth(1).locator(".turn-text .chip")).to_have_count(0)
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
    document = Document.objects.get(uploaded_by__email="broken@example.com")
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
    assert Document.objects.filter(uploaded_by__email="tidy@example.com").count() == 1

    dialogs = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    with page.expect_navigation():
        item.get_by_role("button", name="Delete").click()

    assert dialogs == ["Delete “font encodings” and its chunks?"]
    expect(page.locator(".message-success")).to_have_text("Document deleted.")
    expect(page.locator("#documents tr.document")).to_have_count(0)
    expect(page.locator("#documents-empty")).to_be_visible()
    assert Document.objects.filter(uploaded_by__email="tidy@example.com").count() == 0
    screenshots.take(page, "dashboard-after-delete")
    assert_no_script_errors(page)


def test_deleting_the_account_drops_its_database_and_sign_in_fails(page, asgi_server, admin_dsn, screenshots):
    base = asgi_server.url
    email = "leaving@example.com"
    sign_up(page, base, email, screenshots)
    wait_for_database_ready(page, screenshots)
    vector_database = VectorDatabase.objects.get(workspace__owner__email=email)
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
    assert (vector_database.status, vector_database.workspace_id) == (VectorDatabase.Status.DELETED, None)

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
    document = Document.objects.get(uploaded_by__email="streaming@example.com")

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
        # The streamed Markdown so far (the rendered text shrinks a little when "[1]" becomes a chip).
        lengths.append(page.evaluate("[...document.querySelectorAll('.turn-assistant')].pop().answerText.length"))
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

    expect(answer.locator(".turn-text")).to_have_text(openai_emulator.answer.replace("[1]", "1"))
    expect(answer.locator(".turn-text .chip")).to_have_count(2)
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
        openai_emulator.answer.replace("[1]", "1"), timeout=ANSWER_TIMEOUT_MS
    )
    assert "c=" in page.url
    expect(page.locator(".conversations .conversation-list li")).to_have_count(1)  # one conversation, two turns
    expect(page.locator("#transcript .turn-assistant").last.locator(".copy-button")).to_be_in_viewport()
    openai_emulator.rewrite = None
    screenshots.take(page, "chat-follow-up")
    assert_no_script_errors(page)
