"""Tables in a PDF's text layer are found from PDFium's character positions and kept whole with their caption."""

from __future__ import annotations

import psycopg
import pytest

from documents import services
from documents.chunking import chunk_pages
from documents.parsing import extract_pages
from documents.pdf_tables import split_tables
from tests.documents.test_formats_pipeline import _upload
from tests.documents.test_pipeline import _tenant_dsn, owner_database  # noqa: F401 (a fixture)
from tests.pdf_factory import placed_text_pdf, text_pdf

ROWS = [
    ("Region", "Q1", "Q2", "Q3"),
    ("North", "1,200", "1,450", "1,610"),
    ("South", "980", "1,020", "1,105"),
    ("East", "1,310", "1,290", "1,400"),
    ("West", "870", "905", "990"),
]
BEFORE = [
    "Sales rose in every region this year, as the figures below show in some detail.",
    "The northern stores opened two new branches during the spring months.",
]
AFTER = "Returns stayed flat, and the western region will be reported separately next year."


def _table_page(caption_below: bool = False) -> list[tuple[float, float, str]]:
    items = [(72, 720 - 14 * number, line) for number, line in enumerate(BEFORE)]
    top = 664 if not caption_below else 680
    if not caption_below:
        items.append((72, 680, "Table 2: Quarterly sales by region"))
    for number, row in enumerate(ROWS):
        items += [(72 + 110 * column, top - 14 * number, cell) for column, cell in enumerate(row)]
    bottom = top - 14 * len(ROWS)
    if caption_below:
        items.append((72, bottom - 4, "Table 2: Quarterly sales by region"))
    items.append((72, bottom - 30, AFTER))
    return items


TABLE_TEXT = "Table 2: Quarterly sales by region\n" + "\n".join(" | ".join(row) for row in ROWS)


@pytest.mark.parametrize("caption_below", [False, True])
def test_a_table_becomes_a_unit_of_its_own_with_its_caption_on_top(tmp_path, caption_below):
    path = tmp_path / "sales.pdf"
    path.write_bytes(placed_text_pdf([_table_page(caption_below)]))

    units = split_tables(path, extract_pages(path))

    assert [(unit.page_number, unit.table) for unit in units] == [(1, False), (1, True), (1, False)]
    assert units[0].text == "\n".join(BEFORE)
    assert units[1].text == TABLE_TEXT
    assert units[2].text == AFTER


def test_the_chunker_keeps_a_pdf_table_whole_with_its_caption_where_plain_text_would_be_cut(tmp_path):
    path = tmp_path / "sales.pdf"
    path.write_bytes(placed_text_pdf([_table_page()]))
    pages = extract_pages(path)

    chunks = chunk_pages(split_tables(path, pages), chunk_size=120, chunk_overlap=20)

    assert TABLE_TEXT in [chunk.text for chunk in chunks]
    assert not any("Q1" in chunk.text for chunk in chunks if chunk.text != TABLE_TEXT)
    # Without the table unit the same page is cut inside the table, rows apart from the caption.
    assert not any("West" in chunk.text and "Table 2" in chunk.text for chunk in chunk_pages(pages, 120, 20))


def test_an_aligned_block_without_a_caption_stays_in_the_text(tmp_path):
    path = tmp_path / "options.pdf"
    items = [
        (72 + 110 * column, 700 - 14 * number, cell)
        for number, row in enumerate(ROWS)
        for column, cell in enumerate(row)
    ]
    path.write_bytes(placed_text_pdf([items]))

    pages = extract_pages(path)

    assert split_tables(path, pages) == pages


def test_prose_lists_and_single_columns_are_not_tables(tmp_path):
    path = tmp_path / "prose.pdf"
    prose = " ".join(f"Sentence {number} of a long paragraph that wraps over many lines." for number in range(40))
    bullets = [(72, 720 - 14 * number, f"- item {number} of a short list") for number in range(5)]
    markers = [(72, 600 - 14 * number, "*") for number in range(4)]
    markers += [(90, 600 - 14 * number, f"point {number} made in a bulleted list") for number in range(4)]
    path.write_bytes(text_pdf([prose]))
    listed = tmp_path / "lists.pdf"
    listed.write_bytes(placed_text_pdf([bullets + markers]))

    for pdf in (path, listed):
        pages = extract_pages(pdf)
        assert split_tables(pdf, pages) == pages


@pytest.mark.django_db
def test_an_ingested_pdf_stores_its_table_as_one_chunk_with_its_caption_at_its_page(
    owner,
    owner_database,  # noqa: F811 (the fixture)
    media_root,
    settings,
):
    settings.CHUNK_SIZE, settings.CHUNK_OVERLAP = 120, 20
    content = placed_text_pdf([[(72, 720, "An opening page without a table.")], _table_page()])
    document = _upload(owner, "sales.pdf", content)

    services.document_ingest(document.id)

    document.refresh_from_db()
    assert (document.status, document.error_message, document.page_count) == ("ready", "", 2)

    with psycopg.connect(_tenant_dsn(owner_database)) as connection:
        rows = connection.execute(
            "SELECT content, first_page, last_page FROM embeddings WHERE document_id = %s ORDER BY chunk_index",
            [document.id],
        ).fetchall()
    assert (TABLE_TEXT, 2, 2) in rows
