"""Every format Silo reads becomes located text units: what a person finds in the program that made the file (the
heading path, the slide, the sheet and rows), tables whole with their caption. Binary formats are told by content,
text formats by extension and UTF-8; refusals say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from documents.chunking import chunk_pages
from documents.formats import (
    ArchiveTooLarge,
    EncryptedDocument,
    NotUtf8,
    ParseLimits,
    TooManyRows,
    UnsupportedFormat,
    detect_format,
    extract_units,
)
from documents.ocr import OcrOptions, ocr_pages, scanned_page_numbers, with_ocr_text
from documents.parsing import extract_pages
from tests.document_factory import (
    docx_bytes,
    encrypted_docx,
    mixed_pdf,
    pptx_bytes,
    xlsx_bytes,
    xlsx_with_rows,
    zip_bomb_xlsx,
)
from tests.pdf_factory import text_pdf

HARBOUR_DOCX = [
    ("paragraph", "Issued by the harbour office."),
    ("heading1", "Lighthouse"),
    ("paragraph", "The lamp is cleaned at dawn by the keeper."),
    ("bullet", "Check the lens for salt."),
    ("heading2", "Tides"),
    ("caption", "Table 1: Tide times at the north pier"),
    ("table", [["Day", "High water", "Low water"], ["Monday", "06:10", "12:25"], ["Tuesday", "06:55", "13:05"]]),
    ("paragraph", "Times are local."),
]


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _units(tmp_path: Path, name: str, content: bytes, limits: ParseLimits | None = None):
    path = _write(tmp_path, name, content)
    return extract_units(path, detect_format(path, name), limits)


# -- telling formats apart ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("report.docx", docx_bytes([("paragraph", "x")]), "docx"),
        ("renamed.pdf", docx_bytes([("paragraph", "x")]), "docx"),  # content, not the name, decides
        ("deck.bin", pptx_bytes([{"title": "x"}]), "pptx"),
        ("sheet.xlsx", xlsx_bytes({"A": [["x"]]}), "xlsx"),
        ("guide.txt", text_pdf(["A PDF named .txt"]), "pdf"),
        ("prices.csv", "name,price\ncafé,3\n".encode(), "csv"),
        ("page.HTM", b"<p>hello</p>", "html"),
        ("notes.md", b"# Notes\n", "markdown"),
        ("readme.txt", "\ufeffplain text with a BOM".encode(), "text"),
    ],
)
def test_binary_formats_are_told_by_content_and_text_formats_by_extension(tmp_path, name, content, expected):
    assert detect_format(_write(tmp_path, name, content), name) == expected


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        (
            "secret.docx",
            encrypted_docx(docx_bytes([("paragraph", "the code is 1234")])),
            EncryptedDocument,
            "This document is password protected; remove the password and upload it again.",
        ),
        (
            "old.doc",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600),
            UnsupportedFormat,
            "This is an old-style Office file (.doc, .xls or .ppt); save it as .docx, .xlsx or .pptx and upload it "
            "again.",
        ),
        (
            "photo.png",
            b"\x89PNG\r\n\x1a\n" + bytes(64),
            UnsupportedFormat,
            "This file is a PNG image; Silo reads scanned pages inside PDFs: save or print the image as a PDF.",
        ),
        (
            "latin1.csv",
            "café,3\n".encode("latin-1"),
            NotUtf8,
            "This file is not UTF-8 text; save it as UTF-8 (e.g. “CSV UTF-8” in Excel) and upload it again.",
        ),
        ("binary.txt", b"abc\x00\x01def", NotUtf8, "This file holds binary data, not text; Silo cannot read it."),
        (
            "program.exe",
            b"just text with an unknown extension",
            UnsupportedFormat,
            "Silo cannot read this kind of file; it reads PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx), CSV, "
            "HTML, Markdown or plain text (.txt) files.",
        ),
        (
            "broken.docx",
            b"PK\x03\x04" + bytes(64),
            UnsupportedFormat,
            "This file looks like a ZIP archive but is damaged.",
        ),
    ],
    ids=["encrypted-docx", "old-office", "image", "not-utf8", "binary-as-text", "unknown", "broken-zip"],
)
def test_files_silo_cannot_read_are_refused_with_what_to_do(tmp_path, name, content, error, message):
    with pytest.raises(error) as raised:
        detect_format(_write(tmp_path, name, content), name)
    assert str(raised.value) == message


# -- locations -----------------------------------------------------------------------------------------------------


def test_a_word_document_is_located_by_heading_and_keeps_its_table_whole_with_its_caption(tmp_path):
    units = _units(tmp_path, "harbour.docx", docx_bytes(HARBOUR_DOCX))

    assert [(unit.location, unit.table, unit.text) for unit in units] == [
        ("Beginning", False, "Issued by the harbour office."),
        ("Lighthouse", False, "Lighthouse\n\nThe lamp is cleaned at dawn by the keeper.\n\n• Check the lens for salt."),
        (
            "Lighthouse > Tides",
            True,
            "Table 1: Tide times at the north pier\nDay | High water | Low water\nMonday | 06:10 | 12:25\n"
            "Tuesday | 06:55 | 13:05",
        ),
        ("Lighthouse > Tides", False, "Times are local."),
    ]
    chunks = chunk_pages(units, chunk_size=1000, chunk_overlap=200)
    table_chunks = [chunk for chunk in chunks if "Tuesday" in chunk.text]
    assert len(table_chunks) == 1 and table_chunks[0].text.startswith("Table 1: Tide times at the north pier\n")
    assert [chunk.location for chunk in chunks] == [
        "Beginning",
        "Lighthouse",
        "Lighthouse > Tides",
        "Lighthouse > Tides",
    ]


def test_a_presentation_is_located_by_slide_and_a_slide_table_carries_the_slide_title(tmp_path):
    deck = pptx_bytes(
        [
            {"title": "Harbour duties", "bullets": ["Clean the lamp at dawn", "Log the tides"], "notes": "Ask Ada."},
            {
                "title": "Ferry timetable",
                "bullets": ["Weekdays only"],
                "table": [["Leaves", "Returns"], ["7:00", "12:00"]],
            },
        ]
    )
    units = _units(tmp_path, "deck.pptx", deck)

    assert [(unit.page_number, unit.location, unit.table, unit.text) for unit in units] == [
        (1, "Slide 1", False, "Harbour duties\n\nClean the lamp at dawn\nLog the tides\n\nNotes: Ask Ada."),
        (2, "Slide 2", False, "Ferry timetable\n\nWeekdays only"),
        (2, "Slide 2", True, "Slide 2: Ferry timetable\nLeaves | Returns\n7:00 | 12:00"),
    ]
    chunks = chunk_pages(units, chunk_size=1000, chunk_overlap=200)
    assert [(chunk.location, chunk.first_page, chunk.last_page) for chunk in chunks] == [
        ("Slides 1-2", 1, 2),
        ("Slide 2", 2, 2),
    ]


def test_a_spreadsheet_is_located_by_sheet_and_rows_and_every_block_repeats_the_header(tmp_path, monkeypatch):
    monkeypatch.setattr("documents.office.SHEET_BLOCK_CHARS", 60)
    rows = [["Region", "Revenue"]] + [[f"Region {number}", number * 100] for number in range(1, 9)]
    units = _units(tmp_path, "sales.xlsx", xlsx_bytes({"Sales": rows, "Empty": []}))

    assert [unit.location for unit in units] == [
        "Sheet “Sales”, rows 2-4",
        "Sheet “Sales”, rows 5-7",
        "Sheet “Sales”, rows 8-9",
    ]
    assert all(unit.table and unit.text.startswith("Sheet “Sales”\nRegion | Revenue\n") for unit in units)
    assert units[2].text.endswith("Region 7 | 700\nRegion 8 | 800")


def test_a_csv_file_is_located_by_rows(tmp_path):
    units = _units(tmp_path, "people.csv", "name;city\nAda;London\nGrace;New York\n".encode())

    assert [(unit.location, unit.text) for unit in units] == [
        ("Rows 2-3", "name | city\nAda | London\nGrace | New York")
    ]


def test_html_is_read_as_text_by_heading_with_scripts_and_styles_dropped(tmp_path):
    html = (
        b"<html><head><title>Harbour guide</title><style>p{color:red}</style><script>steal()</script></head>"
        b"<body><h1>Lamp</h1><p>Cleaned <b>at dawn</b>.</p><script>document.cookie</script>"
        b"<table><caption>Tide times</caption><tr><th>Day</th><th>High</th></tr><tr><td>Mon</td><td>6</td></tr>"
        b"</table><h2>Ferry</h2><ul><li>Leaves at seven</li></ul><img src=x onerror=alert(1)></body></html>"
    )
    units = _units(tmp_path, "guide.html", html)

    assert [(unit.location, unit.table, unit.text) for unit in units] == [
        ("Harbour guide > Lamp", False, "Lamp\n\nCleaned at dawn."),
        ("Harbour guide > Lamp", True, "Tide times\nDay | High\nMon | 6"),
        ("Harbour guide > Lamp > Ferry", False, "Ferry\n\n• Leaves at seven"),
    ]
    assert not any("steal" in unit.text or "cookie" in unit.text or "color" in unit.text for unit in units)


def test_markdown_keeps_its_own_lines_split_at_headings_with_tables_under_their_heading(tmp_path):
    markdown = (
        "# Harbour\n\nThe lamp is cleaned at dawn.\n\n## Tides\n\n| Day | High |\n|---|---|\n| Mon | 6 |\n\nLocal.\n"
    )
    units = _units(tmp_path, "harbour.md", markdown.encode())

    assert [(unit.location, unit.table, unit.text) for unit in units] == [
        ("Harbour", False, "Harbour\n\nThe lamp is cleaned at dawn."),
        ("Harbour > Tides", True, "Table in “Harbour > Tides”\n| Day | High |\n|---|---|\n| Mon | 6 |"),
        ("Harbour > Tides", False, "Local."),
    ]


def test_plain_text_is_located_by_line_numbers(tmp_path):
    text = "\n".join(f"Line {number} of the keeper's log." for number in range(1, 131))
    units = _units(tmp_path, "log.txt", text.encode())

    assert [unit.location for unit in units] == ["Lines 1-60", "Lines 61-120", "Lines 121-130"]
    assert units[2].text.splitlines()[0] == "Line 121 of the keeper's log."


def test_a_long_table_is_cut_by_rows_and_every_piece_keeps_its_caption_and_header(tmp_path):
    rows = [["Day", "Note"]] + [[f"Day {number}", "calm sea and a light westerly breeze"] for number in range(60)]
    units = _units(tmp_path, "log.docx", docx_bytes([("caption", "Table 2: Weather log"), ("table", rows)]))
    assert len(units) == 1 and units[0].table

    chunks = chunk_pages(units, chunk_size=200, chunk_overlap=50)

    assert len(chunks) > 1
    assert all(chunk.text.startswith("Table 2: Weather log\nDay | Note\n") for chunk in chunks)
    assert all(len(chunk.text) <= 800 for chunk in chunks)
    body_rows = [line for chunk in chunks for line in chunk.text.splitlines()[2:]]
    assert body_rows == [f"Day {number} | calm sea and a light westerly breeze" for number in range(60)]


# -- hostile office files ----------------------------------------------------------------------------------------


def test_a_zip_bomb_disguised_as_a_spreadsheet_is_refused_before_it_is_unpacked(tmp_path):
    path = _write(tmp_path, "bomb.xlsx", zip_bomb_xlsx(unpacked_megabytes=300))

    assert detect_format(path, "bomb.xlsx") == "xlsx"
    with pytest.raises(ArchiveTooLarge) as raised:
        extract_units(path, "xlsx", ParseLimits(max_unpacked_bytes=200 * 1024 * 1024))
    assert str(raised.value).startswith("This file unpacks to 315 MB from 0.3 MB, which no ordinary document does")


def test_a_spreadsheet_over_the_row_limit_is_refused_with_the_limit(tmp_path):
    path = _write(tmp_path, "big.xlsx", xlsx_with_rows(1_001))

    with pytest.raises(TooManyRows) as raised:
        extract_units(path, "xlsx", ParseLimits(max_rows=1_000))
    assert str(raised.value) == (
        "This spreadsheet has more than 1,000 rows; Silo reads up to 1,000. Split it, or keep the rows you want to "
        "ask about, and upload it again."
    )
    assert len(extract_units(path, "xlsx", ParseLimits(max_rows=1_001))) > 1


# -- scanned pages ---------------------------------------------------------------------------------------------------

FERRY = "The ferry leaves the north pier at seven and returns by noon on weekdays."


def test_only_the_scanned_pages_of_a_pdf_are_ocrd_and_keep_their_page_numbers(tmp_path):
    path = _write(
        tmp_path,
        "mixed.pdf",
        mixed_pdf(
            [
                ("The harbour lamp is cleaned at dawn by the keeper.", False),
                (FERRY, True),
                ("The lighthouse lens has brass fittings that are polished weekly.", False),
            ],
            dpi=150,
        ),
    )
    pages = extract_pages(path, require_text=False)
    assert [page.text for page in pages][1] == ""

    scanned = scanned_page_numbers(path, pages)
    progress: list[tuple[int, int]] = []
    texts = ocr_pages(path, scanned, OcrOptions(), on_page=lambda done, total: progress.append((done, total)))
    read = with_ocr_text(pages, texts)

    assert scanned == [2]
    assert progress == [(1, 1)]
    assert texts == {2: FERRY}
    assert [(page.page_number, page.ocr) for page in read] == [(1, False), (2, True), (3, False)]
    chunks = chunk_pages(read, chunk_size=1000, chunk_overlap=100)
    assert [(chunk.first_page, chunk.last_page, chunk.ocr) for chunk in chunks] == [(1, 3, True)]
