"""A scan and a Word document, in the real browser against the real stack: both are read (the scan by the OCR
queue's worker), and answers cite them where a person finds the passage: the scanned page, the Word heading."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from documents.models import Document
from tests.document_factory import docx_bytes, scanned_pdf
from tests.e2e.steps import (
    answer_citations,
    ask,
    assert_no_script_errors,
    document_item,
    open_citation,
    sign_up,
    upload,
    wait_for_answer,
    wait_for_database_ready,
)
from tests.pdf_factory import text_pdf

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("erase_tenant_databases"),
]

KEEPER = "The keeper cleans the lighthouse lamp every morning at dawn and records the weather in the logbook."
FERRY = "The ferry to the island leaves the north pier at seven in the morning and returns by noon on weekdays."


@pytest.fixture
def harbour_docx(tmp_path) -> Path:
    path = tmp_path / "harbour_rules.docx"
    path.write_bytes(
        docx_bytes(
            [
                ("heading1", "Lighthouse"),
                ("paragraph", KEEPER),
                ("heading2", "Tides"),
                ("caption", "Table 1: Tide times at the north pier"),
                ("table", [["Day", "High water", "Low water"], ["Monday", "06:10", "12:25"]]),
            ]
        )
    )
    return path


@pytest.fixture
def ferry_scan(tmp_path) -> Path:
    path = tmp_path / "ferry_timetable.pdf"
    path.write_bytes(scanned_pdf(text_pdf([FERRY]), dpi=150))
    return path


@pytest.mark.timeout(900)
def test_a_scan_and_a_word_document_are_read_and_cited_where_their_passages_are(
    page, asgi_server, screenshots, harbour_docx, ferry_scan
):
    # OCR and a first embedding in a fresh worker take their time on a shared 2-core machine: wait for them longer.
    page.context.set_default_timeout(90_000)
    base = asgi_server.url
    sign_up(page, base, "harbour@example.com", screenshots)
    wait_for_database_ready(page, screenshots)

    upload(page, harbour_docx)
    upload(page, ferry_scan)
    for title in ("harbour rules", "ferry timetable"):
        # A fresh worker loads the embedding model first: minutes, not seconds, on a loaded 2-core machine.
        expect(document_item(page, title).locator("[data-field=status]")).to_have_text("Ready", timeout=480_000)
    expect(document_item(page, "harbour rules").locator("[data-field=facts]")).to_have_text("Word")
    expect(document_item(page, "ferry timetable").locator("[data-field=facts]")).to_have_text("1 page")
    scan = Document.objects.get(title="ferry timetable")
    assert (scan.file_format, scan.ocr_pages_total, scan.ocr_pages_done) == ("pdf", 1, 1)
    screenshots.take(page, "dashboard-formats")

    page.goto(f"{base}/chat/")
    ask(page, "When does the keeper clean the lighthouse lamp?")
    wait_for_answer(page)
    keeper = next(c for c in answer_citations(page) if "lamp" in c["text"])
    assert (keeper["title"], keeper["location"], keeper["ocr"]) == ("harbour rules", "Lighthouse", False)
    open_citation(page, keeper["number"])
    # A Word document opens as its text, at the cited heading, the passage highlighted.
    expect(page.locator("#text-container")).to_be_visible()
    expect(page.locator("#pdf-container")).to_be_hidden()
    expect(page.locator("#source-page")).to_have_text("Lighthouse")
    cited = page.locator("#text-container .text-unit.cited")
    expect(cited.locator(".text-unit-location")).to_have_text("Lighthouse")
    marks = cited.locator(".silo-passage")
    expect(marks.first).to_be_in_viewport()
    assert "dawn" in "".join(marks.all_text_contents())
    screenshots.take(page, "docx-citation")

    ask(page, "When does the ferry to the island leave the north pier?")
    wait_for_answer(page)
    ferry = next(c for c in answer_citations(page) if "ferry" in c["text"])
    assert (ferry["title"], ferry["page"], ferry["location"], ferry["ocr"]) == ("ferry timetable", 1, "", True)
    open_citation(page, ferry["number"])
    # A scan opens as the PDF at the cited page, with what OCR read from it quoted above the image.
    expect(page.locator("#pdf-container")).to_be_visible()
    expect(page.locator("#source-page")).to_have_text("Page 1 of 1", timeout=30_000)
    expect(page.locator("#source-status")).to_have_text(
        "Page 1 is a scanned image; the passage Silo read from it is quoted above.", timeout=30_000
    )
    expect(page.locator("#source-passage")).to_contain_text("north pier at seven")
    screenshots.take(page, "scan-citation")

    page.set_viewport_size({"width": 390, "height": 844})
    page.locator("#source-close").click()  # on a phone the panel covers the answer: close it, open it again
    open_citation(page, ferry["number"])
    expect(page.locator("#source-passage")).to_contain_text("north pier at seven")
    screenshots.take(page, "scan-citation-phone")
    page.locator("#source-close").click()
    ask(page, "When does the keeper clean the lighthouse lamp?")
    wait_for_answer(page)
    keeper = next(c for c in answer_citations(page) if "lamp" in c["text"])
    open_citation(page, keeper["number"])
    expect(page.locator("#text-container .text-unit.cited .silo-passage").first).to_be_in_viewport()
    screenshots.take(page, "docx-citation-phone")
    page.goto(f"{base}/dashboard/")
    screenshots.take(page, "dashboard-phone")
    assert_no_script_errors(page)
