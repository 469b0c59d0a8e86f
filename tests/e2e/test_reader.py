"""The reader's interface in a real browser: answers as Markdown with citation chips, the side panel that opens the
cited page with the passage highlighted (in the all-documents chat too), stop, copy, a citation into a deleted
document, an answer that finds nothing, and a phone's screen.

Every page is served with the production Content Security Policy (tests/e2e/conftest.py): a violation fails the test.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from documents.models import Document
from tests.e2e.steps import (
    ANSWER_TIMEOUT_MS,
    answer_citations,
    ask,
    assert_no_script_errors,
    document_item,
    expect_highlighted,
    has_no_sideways_scroll,
    last_answer,
    open_citation,
    sign_up,
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

CORK_QUESTION = "What did the TUG Annual General Meeting in Cork specify?"


def reader_with_document(page, base: str, email: str, pdf, screenshots) -> Document:
    """Signs up, uploads the PDF and waits for it on the dashboard, as a person would."""
    sign_up(page, base, email, screenshots)
    wait_for_database_ready(page, screenshots)
    upload(page, pdf)
    wait_for_document(page, "font encodings", "Ready", screenshots)
    return Document.objects.get(uploaded_by__email=email)


def single_page_citation(citations: list[dict], page: int | None = None) -> dict:
    return next(c for c in citations if c["page"] == c["page_end"] and (page is None or c["page"] == page))


def test_a_model_answer_renders_as_safe_markdown_with_chips_that_open_the_cited_page(
    page, openai_asgi_server, openai_emulator, screenshots, encodings_pdf
):
    base = openai_asgi_server.url
    reader_with_document(page, base, "markdown@example.com", encodings_pdf, screenshots)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    openai_emulator.token_delay_seconds = 0
    openai_emulator.answer = (
        "The Cork meeting settled **three** things [1]:\n\n"
        "- a uniform 256-glyph encoding [2]\n"
        "- the name `T1` for it [3]\n\n"
        "| Encoding | Glyphs |\n|---|---|\n| OT1 | 128 |\n| T1 | 256 |\n\n"
        "```\n\\fontencoding{T1}\\selectfont\n```\n\n"
        '<script>window.__injected = 1</script><img src=x onerror="window.__injected = 2"> '
        "[a link](javascript:window.__injected=3) and a marker with no source [9]."
    )
    page.goto(f"{base}/chat/")
    expect(page.locator("#source-panel")).to_be_hidden()  # the all-documents chat opens the panel on demand
    ask(page, "What did the Cork meeting settle?")
    answer = wait_for_answer(page)
    text = answer.locator(".turn-text")

    expect(text.locator("strong")).to_have_text("three")
    expect(text.locator("ul > li")).to_have_count(2)
    expect(text.locator(".table-scroll table tr")).to_have_count(3)
    expect(text.locator("pre code")).to_contain_text("\\fontencoding{T1}\\selectfont")
    expect(text.locator("code").first).to_have_text("T1")
    # [1] [2] [3] match citations: chips; [9] matches none and stays text.
    expect(text.locator(".chip")).to_have_text(["1", "2", "3"])
    expect(text).to_contain_text("a marker with no source [9].")
    # Markup in the answer is shown as text or dropped, never run.
    expect(text.locator("script, img, iframe")).to_have_count(0)
    expect(text).to_contain_text("<script>window.__injected = 1</script>")
    assert page.evaluate("window.__injected") is None
    expect(text.locator("a")).to_have_count(0)  # a javascript: address is no link
    screenshots.take(page, "markdown-answer")

    citations = answer_citations(page)
    assert [c["number"] for c in citations] == list(range(1, len(citations) + 1))
    citation = single_page_citation(citations[:3])
    text.locator(f".chip[data-citation='{citation['number']}']").click()
    expect(page.locator("#source-title")).to_have_text("font encodings")
    expect(page.locator("#source-meta")).to_have_text(f"Source {citation['number']} · p. {citation['page']}")
    expect_highlighted(page, citation, pages=3)  # a model answer has no quote: the chunk's text is highlighted
    screenshots.take(page, "markdown-answer-source")

    answer.locator(".copy-button").click()
    expect(answer.locator(".copy-button")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(openai_emulator.answer + "\n\nSources:\n[1] font encodings, p")
    assert copied.count("\n[") == len(citations)
    assert_no_script_errors(page)


def test_stop_ends_a_streaming_answer_where_it_is_and_the_next_question_goes_out(
    page, openai_asgi_server, openai_emulator, screenshots, encodings_pdf
):
    base = openai_asgi_server.url
    document = reader_with_document(page, base, "stopper@example.com", encodings_pdf, screenshots)
    openai_emulator.answer = " ".join(f"word{number}" for number in range(400))
    openai_emulator.token_delay_seconds = 0.05
    page.goto(f"{base}/documents/{document.id}/")
    expect(page.locator("#stop-button")).to_be_hidden()

    ask(page, "Tell me everything about the Cork encoding.")
    answer = last_answer(page)
    expect(answer.locator(".turn-text")).to_contain_text("word5", timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#ask-button")).to_be_hidden()
    screenshots.take(page, "streaming-with-stop")
    page.locator("#stop-button").click()

    expect(answer.locator(".stopped-note")).to_have_text("Stopped.")
    expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"))
    stopped_at = len(answer.locator(".turn-text").inner_text())
    page.wait_for_timeout(600)  # a dozen tokens' time: nothing more arrives
    assert len(answer.locator(".turn-text").inner_text()) == stopped_at
    assert "word399" not in answer.locator(".turn-text").inner_text()
    expect(page.locator("#stop-button")).to_be_hidden()
    expect(page.locator("#ask-button")).to_be_visible()
    expect(page.locator("#chat-state")).to_have_text("")
    screenshots.take(page, "stopped")

    openai_emulator.token_delay_seconds = 0
    openai_emulator.answer = "A group at the TUG Annual General Meeting in Cork specified it [1]."
    ask(page, "Who specified the Cork encoding?")
    expect(page.locator("#transcript .turn-assistant")).to_have_count(2)
    expect(wait_for_answer(page).locator(".turn-text")).to_have_text(
        "A group at the TUG Annual General Meeting in Cork specified it 1."
    )
    stopped_text = page.locator("#transcript .turn-assistant").first.locator(".turn-text").inner_text()

    page.reload()  # the stopped answer was stored as far as it went, and says it was stopped
    answers = page.locator("#transcript .turn-assistant")
    expect(answers).to_have_count(2)
    expect(answers.first.locator(".stopped-note")).to_have_text("Stopped.")
    reloaded_text = answers.first.locator(".turn-text").inner_text()
    assert reloaded_text.startswith(stopped_text.strip()) and "word5" in reloaded_text
    assert "word399" not in reloaded_text and "Stopped" not in reloaded_text
    expect(answers.nth(1).locator(".stopped-note")).to_have_count(0)
    screenshots.take(page, "stopped-after-reload")
    assert_no_script_errors(page)


def test_all_documents_chat_opens_the_source_beside_it_and_a_deleted_document_says_so(
    page, asgi_server, screenshots, encodings_pdf
):
    base = asgi_server.url
    document = reader_with_document(page, base, "archivist@example.com", encodings_pdf, screenshots)
    page.goto(f"{base}/chat/")
    expect(page.locator("#source-panel")).to_be_hidden()
    ask(page, CORK_QUESTION)
    wait_for_answer(page)
    cork = single_page_citation([c for c in answer_citations(page) if "Cork" in (c.get("quote") or c["text"])], page=2)
    open_citation(page, cork["number"])
    expect_highlighted(page, cork, pages=3)
    screenshots.take(page, "all-documents-source")
    conversation_url = page.url

    # Deleted in another tab: the open chat learns it from the file's answer when the citation is opened again.
    other = page.context.new_page()
    other.goto(f"{base}/dashboard/")
    other.once("dialog", lambda dialog: dialog.accept())
    with other.expect_navigation():
        document_item(other, "font encodings").get_by_role("button", name="Delete").click()
    expect(other.locator(".message-success")).to_have_text("Document deleted.")
    other.close()
    page.locator("#source-close").click()
    expect(page.locator("#source-panel")).to_be_hidden()
    open_citation(page, cork["number"])
    status = page.locator("#source-status")
    expect(status).to_have_text(
        "“font encodings” has been deleted, so its PDF can no longer be shown. "
        "The passage this answer cited is quoted below."
    )
    expect(page.locator("#source-passage")).to_have_text(cork.get("quote") or cork["text"])
    expect(page.locator("#pdf-viewer")).to_be_hidden()
    screenshots.take(page, "deleted-document-citation")

    # On the next visit the page knows before any click: the chips and sources say the document is gone.
    page.goto(conversation_url)
    answer = wait_for_answer(page)
    expect(answer.locator(".turn-text .chip").first).to_have_class(re.compile(r"\bchip-deleted\b"))
    answer.locator("details.sources summary").click()
    expect(answer.locator(".source-item .deleted-note").first).to_have_text("document deleted")
    open_citation(page, cork["number"])
    expect(status).to_contain_text("“font encodings” has been deleted")
    expect(page.locator("#source-passage")).to_have_text(cork.get("quote") or cork["text"])
    # The document's own chat page is gone, with Silo's page rather than a bare "Not Found".
    page.goto(f"{base}/documents/{document.id}/")
    expect(page.locator("h1")).to_have_text("This page isn't here")
    expect(page.get_by_role("link", name="Go to your documents")).to_be_visible()
    screenshots.take(page, "deleted-document-page")
    assert_no_script_errors(page)


def test_a_question_nothing_answers_says_so_without_sources(page, asgi_server, screenshots):
    base = asgi_server.url
    sign_up(page, base, "empty-shelf@example.com", screenshots)
    wait_for_database_ready(page, screenshots)
    page.goto(f"{base}/chat/")
    expect(page.locator(".notice")).to_contain_text("No document is ready yet.")

    ask(page, "What is the airspeed velocity of an unladen swallow?")
    answer = wait_for_answer(page)

    expect(answer).to_have_class(re.compile(r"\bnot-found\b"))
    expect(answer.locator(".not-found-hint")).to_have_text(
        "Nothing in your documents answers this. Try other words, or ask about something the documents cover."
    )
    expect(answer.locator(".chip")).to_have_count(0)
    expect(answer.locator("details.sources")).to_have_count(0)
    screenshots.take(page, "not-found")
    assert_no_script_errors(page)


def test_on_a_phone_nothing_scrolls_sideways_the_input_is_at_hand_and_sources_open_full_screen(
    phone_page, asgi_server, screenshots, encodings_pdf
):
    page = phone_page
    base = asgi_server.url
    document = reader_with_document(page, base, "commuter@example.com", encodings_pdf, screenshots)
    assert has_no_sideways_scroll(page), "the documents page scrolls sideways"
    screenshots.take(page, "phone-dashboard")

    page.goto(f"{base}/documents/{document.id}/")
    expect(page.locator("#source-panel")).to_be_hidden()  # the chat first; the PDF a tap away
    question_box = page.locator("#question").bounding_box()
    assert question_box["y"] + question_box["height"] <= 844, question_box
    assert has_no_sideways_scroll(page), "the chat scrolls sideways"
    expect(page.locator("#conversations")).not_to_be_in_viewport()
    screenshots.take(page, "phone-chat-empty")

    ask(page, CORK_QUESTION)
    wait_for_answer(page)
    assert has_no_sideways_scroll(page), "the answer scrolls sideways"
    question_box = page.locator("#question").bounding_box()
    assert question_box["y"] + question_box["height"] <= 844, question_box  # still there after a long answer
    screenshots.take(page, "phone-chat-answer")

    cork = single_page_citation([c for c in answer_citations(page) if "Cork" in (c.get("quote") or c["text"])], page=2)
    open_citation(page, cork["number"])
    expect_highlighted(page, cork, pages=3)
    panel = page.locator("#source-panel").bounding_box()
    assert (panel["x"], panel["y"], panel["width"], panel["height"]) == (0, 0, 390, 844), panel
    screenshots.take(page, "phone-source")
    page.locator("#source-close").click()
    expect(page.locator("#source-panel")).to_be_hidden()

    page.locator("#drawer-open").click()
    expect(page.locator("#conversations")).to_be_in_viewport()
    expect(page.locator("#conversations .conversation-title")).to_have_text([CORK_QUESTION])
    screenshots.take(page, "phone-drawer")
    page.keyboard.press("Escape")
    expect(page.locator("#conversations")).not_to_be_in_viewport()
    assert_no_script_errors(page)
