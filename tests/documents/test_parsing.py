"""Parse stage: which files are refused, with which message, and what text the accepted ones yield, page by page."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from pypdf import PdfWriter

from documents.parsing import (
    BlankPdf,
    CorruptPdf,
    EmptyFile,
    EncryptedPdf,
    NotAPdf,
    NoTextLayer,
    PageText,
    PdfInfo,
    TooLarge,
    TooManyPages,
    UnreadablePdf,
    extract_pages,
    inspect_pdf,
    normalise_text,
)
from tests.pdf_factory import image_only_pdf, pdf_bytes, text_pdf, text_pdf_writer

EVAL_DIR = Path("/work/shared/eval")
EVAL_PAGE_COUNTS = {"encguide.pdf": 39, "fntguide.pdf": 39, "clsguide.pdf": 33, "libtasn1.pdf": 36}
MAX_BYTES = 50_000_000
MAX_PAGES = 2000

needs_eval_set = pytest.mark.skipif(not EVAL_DIR.is_dir(), reason="the eval set is not on this machine")


# -- PDFs made for the tests ---------------------------------------------------------------------------------------


def _writer_with_text_pages(pages: list[str]):
    """One page per string, each line of the string a line of text."""
    return text_pdf_writer(pages, wrap_width=None)


def _pdf_bytes(writer) -> bytes:
    return pdf_bytes(writer)


def _text_pdf(pages: list[str]) -> bytes:
    return text_pdf(pages, wrap_width=None)


def _blank_pdf(page_count: int) -> bytes:
    writer = PdfWriter()
    for _ in range(page_count):
        writer.add_blank_page(612, 792)
    return _pdf_bytes(writer)


TWO_PAGES = ["The quick brown fox\njumps over the lazy dog.", "Second page: pack my box\nwith five dozen jugs."]


@pytest.fixture
def write_file(tmp_path):
    def write(data: bytes, name: str = "upload.pdf") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


# -- the eval PDFs -------------------------------------------------------------------------------------------------


@needs_eval_set
@pytest.mark.parametrize("file_name, page_count", sorted(EVAL_PAGE_COUNTS.items()))
def test_eval_pdfs_are_inspected_and_extracted_with_their_page_counts(file_name, page_count):
    info = inspect_pdf(EVAL_DIR / "pdfs" / file_name, MAX_BYTES, MAX_PAGES)
    pages = extract_pages(EVAL_DIR / "pdfs" / file_name)

    assert info.page_count == page_count
    assert info.encrypted is False
    assert [page.page_number for page in pages] == list(range(1, page_count + 1))


@needs_eval_set
def test_title_comes_from_the_metadata_and_is_none_when_empty():
    assert inspect_pdf(EVAL_DIR / "pdfs" / "encguide.pdf", MAX_BYTES, MAX_PAGES).title == "LaTeX font encodings"
    assert inspect_pdf(EVAL_DIR / "pdfs" / "libtasn1.pdf", MAX_BYTES, MAX_PAGES).title is None


@needs_eval_set
def test_every_evidence_snippet_is_on_its_stated_page_and_no_other_page_of_the_file():
    questions = json.loads((EVAL_DIR / "qa.json").read_text(encoding="utf-8"))
    pages_by_file = {name: extract_pages(EVAL_DIR / "pdfs" / name) for name in EVAL_PAGE_COUNTS}

    found_on = {}
    for question in questions:
        evidence = " ".join(question["evidence"].split())
        pages = pages_by_file[question["file"]]
        found_on[question["id"]] = [page.page_number for page in pages if evidence in " ".join(page.text.split())]

    assert len(questions) == 32
    assert found_on == {question["id"]: question["pages"] for question in questions}


@needs_eval_set
def test_line_end_hyphenation_is_joined_and_whitespace_collapsed():
    page_five = extract_pages(EVAL_DIR / "pdfs" / "encguide.pdf")[4]

    # PDFium marks "type-/setting" and "unpre-/dictable" as hyphenated at a line end.
    assert "multilingual technical type-setting, and" not in page_five.text
    assert "technical typesetting, and as a result" in page_five.text
    assert "can produce unpredictable results" in page_five.text
    assert "\ufffe" not in page_five.text and "\r" not in page_five.text and "  " not in page_five.text


@needs_eval_set
def test_pages_know_the_outline_section_that_starts_on_them():
    page_five = extract_pages(EVAL_DIR / "pdfs" / "libtasn1.pdf")[4]

    assert [section.title for section in page_five.sections][-2:] == [
        "2 ASN.1 structure handling",
        "2 ASN.1 structure handling > ASN.1 syntax",
    ]
    assert page_five.text[page_five.sections[-2].offset :].startswith("2 ASN.1 structure handling\n")
    assert page_five.text[page_five.sections[-1].offset :].startswith("ASN.1 syntax\nThe parser is case sensitive.")


@needs_eval_set
def test_extraction_is_safe_from_several_threads_at_once():
    path = EVAL_DIR / "pdfs" / "clsguide.pdf"
    expected = extract_pages(path)
    results: list[list[PageText]] = []

    def extract() -> None:
        results.append(extract_pages(path))

    threads = [threading.Thread(target=extract) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [expected] * 4


# -- files that are accepted ---------------------------------------------------------------------------------------


def test_a_plain_pdf_gives_its_pages_text_in_order(write_file):
    path = write_file(_text_pdf(TWO_PAGES))

    assert inspect_pdf(path, MAX_BYTES, MAX_PAGES) == PdfInfo(
        page_count=2, title=None, encrypted=False, size_bytes=path.stat().st_size
    )
    assert extract_pages(path) == [
        PageText(page_number=1, text="The quick brown fox\njumps over the lazy dog."),
        PageText(page_number=2, text="Second page: pack my box\nwith five dozen jugs."),
    ]


def test_content_decides_not_the_file_name(write_file):
    path = write_file(_text_pdf(TWO_PAGES), name="report.txt")

    assert inspect_pdf(path, MAX_BYTES, MAX_PAGES).page_count == 2


def test_a_pdf_with_only_an_owner_password_opens_and_is_ingested(write_file):
    writer = _writer_with_text_pages(TWO_PAGES)
    writer.encrypt(user_password="", owner_password="owner secret", algorithm="AES-128")
    path = write_file(_pdf_bytes(writer))

    info = inspect_pdf(path, MAX_BYTES, MAX_PAGES)

    assert (info.page_count, info.encrypted) == (2, True)
    assert [page.text for page in extract_pages(path)] == [
        "The quick brown fox\njumps over the lazy dog.",
        "Second page: pack my box\nwith five dozen jugs.",
    ]


def _without_eof_marker(data: bytes) -> bytes:
    assert data.rstrip().endswith(b"%%EOF")
    return data.rstrip()[: -len(b"%%EOF")]


def _with_broken_xref_table(data: bytes) -> bytes:
    # Every offset in the table, and the pointer to the table, now points at the wrong byte.
    start = data.rindex(b"\nxref\n")
    table = re.sub(rb"\d{10} 00000 n", b"0000000001 00000 n", data[start:])
    table = re.sub(rb"startxref\n\d+", b"startxref\n17", table)
    return data[:start] + table


def _with_truncated_trailer(data: bytes) -> bytes:
    # The download stopped inside the trailer: the trailer dictionary survives, startxref and %%EOF do not.
    return data[: data.rindex(b"startxref") + len(b"start")]


@pytest.mark.parametrize(
    "damage",
    [_without_eof_marker, _with_broken_xref_table, _with_truncated_trailer],
    ids=lambda damage: damage.__name__,
)
def test_recoverable_damage_still_yields_the_text(write_file, damage):
    intact = _text_pdf(TWO_PAGES)
    path = write_file(damage(intact))

    assert path.read_bytes() != intact
    assert inspect_pdf(path, MAX_BYTES, MAX_PAGES).page_count == 2
    assert [page.text for page in extract_pages(path)] == [
        "The quick brown fox\njumps over the lazy dog.",
        "Second page: pack my box\nwith five dozen jugs.",
    ]


@needs_eval_set
def test_a_real_pdf_that_lost_its_last_bytes_still_yields_its_pages(write_file):
    data = (EVAL_DIR / "pdfs" / "libtasn1.pdf").read_bytes()
    path = write_file(data[: data.rindex(b"startxref")])

    pages = extract_pages(path)

    assert inspect_pdf(path, MAX_BYTES, MAX_PAGES).page_count == 36
    assert [page.page_number for page in pages if page.text] == list(range(1, 37))
    assert "ASN.1 syntax\nThe parser is case sensitive." in pages[4].text


# -- files that are refused ----------------------------------------------------------------------------------------


def test_an_empty_file_is_refused(write_file):
    with pytest.raises(EmptyFile) as raised:
        inspect_pdf(write_file(b""), MAX_BYTES, MAX_PAGES)

    assert str(raised.value) == "This file is empty."


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "This file is not a PDF (it looks like a PNG image)."),
        (b"\xff\xd8\xff\xe0" + bytes(64), "This file is not a PDF (it looks like a JPEG image)."),
        (b"PK\x03\x04" + bytes(64), "This file is not a PDF (it looks like a ZIP archive or an Office document)."),
        ("Meeting notes – café, 3 pm\nBring the PDF.\n".encode(), "This file is not a PDF (it looks like plain text)."),
        (bytes(range(256)) * 4, "This file is not a PDF."),
    ],
    ids=["png", "jpeg", "zip", "text", "binary"],
)
def test_a_file_that_is_not_a_pdf_is_refused_even_when_named_pdf(write_file, content, message):
    with pytest.raises(NotAPdf) as raised:
        inspect_pdf(write_file(content, name="renamed.pdf"), MAX_BYTES, MAX_PAGES)

    assert str(raised.value) == message


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(write_file):
    path = write_file(b"%PDF-1.7\n" + bytes(2_000_000))

    with pytest.raises(TooLarge) as raised:
        inspect_pdf(path, max_bytes=1_500_000, max_pages=MAX_PAGES)

    assert str(raised.value) == "This file is 2.0 MB; Silo accepts PDFs up to 1.5 MB."


def test_a_pdf_over_the_page_limit_is_refused(write_file):
    path = write_file(_blank_pdf(12))

    with pytest.raises(TooManyPages) as raised:
        inspect_pdf(path, MAX_BYTES, max_pages=10)

    assert str(raised.value) == "This PDF has 12 pages; Silo accepts up to 10."


def test_a_pdf_with_a_user_password_is_refused(write_file):
    writer = _writer_with_text_pages(TWO_PAGES)
    writer.encrypt(user_password="user secret", owner_password="owner secret", algorithm="AES-128")
    path = write_file(_pdf_bytes(writer))

    with pytest.raises(EncryptedPdf) as inspected:
        inspect_pdf(path, MAX_BYTES, MAX_PAGES)
    with pytest.raises(EncryptedPdf):
        extract_pages(path)

    assert str(inspected.value) == "This PDF is password protected; remove the password and upload it again."


def _real_pdf_head(fraction: float) -> bytes:
    data = (EVAL_DIR / "pdfs" / "libtasn1.pdf").read_bytes()
    return data[: int(len(data) * fraction)]


@pytest.mark.parametrize(
    "truncate",
    [
        lambda: _text_pdf(TWO_PAGES)[:9],
        lambda: _text_pdf(TWO_PAGES)[:400],
        lambda: _text_pdf(TWO_PAGES)[: _text_pdf(TWO_PAGES).rindex(b"trailer")],
        pytest.param(lambda: _real_pdf_head(0.5), marks=needs_eval_set),
    ],
    ids=["header-only", "first-page-only", "no-trailer", "real-pdf-half"],
)
def test_a_pdf_truncated_beyond_repair_is_refused(write_file, truncate):
    path = write_file(truncate())

    with pytest.raises(CorruptPdf) as inspected:
        inspect_pdf(path, MAX_BYTES, MAX_PAGES)
    with pytest.raises(CorruptPdf):
        extract_pages(path)

    assert str(inspected.value) == (
        "This PDF is damaged beyond repair; try saving or exporting it again from the program that made it."
    )


def test_a_pdf_of_images_only_is_refused_as_scanned(write_file):
    path = write_file(image_only_pdf(3))

    assert inspect_pdf(path, MAX_BYTES, MAX_PAGES).page_count == 3
    with pytest.raises(NoTextLayer) as raised:
        extract_pages(path)

    assert type(raised.value) is NoTextLayer
    assert str(raised.value) == "This PDF has no selectable text (it looks scanned); Silo cannot read images yet."


@pytest.mark.timeout(60)
def test_thousands_of_blank_pages_are_refused_promptly_with_a_reason(write_file):
    path = write_file(_blank_pdf(3000))

    with pytest.raises(BlankPdf) as raised:
        extract_pages(path)

    assert str(raised.value) == "This PDF has no text on any of its pages."
    assert isinstance(raised.value, NoTextLayer)


def test_every_refusal_is_an_unreadable_pdf_with_a_one_sentence_message():
    for error_class in (EmptyFile, NotAPdf, EncryptedPdf, TooLarge, TooManyPages, CorruptPdf, NoTextLayer, BlankPdf):
        message = str(error_class())
        assert issubclass(error_class, UnreadablePdf)
        assert message.endswith(".") and message.count(". ") == 0


# -- normalisation -------------------------------------------------------------------------------------------------


def test_normalisation_drops_nul_collapses_spaces_and_joins_marked_hyphenation():
    raw = "Type\ufffe\r\nsetting  with\t\ttabs\x00 and\r\n\r\n\r\n\r\nnew para\xa0graph \r\nwell-\r\nknown  "

    assert normalise_text(raw) == "Typesetting with tabs and\n\nnew para graph\nwell-\nknown"
    assert normalise_text("a well-\nknown fact", join_hyphenated_lines=True) == "a wellknown fact"
    assert normalise_text("see 0x00-\n0x7F", join_hyphenated_lines=True) == "see 0x00-\n0x7F"
