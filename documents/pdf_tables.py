"""Tables in a PDF's text layer, found from PDFium's character positions, as units of their own.

A PDF has no table structure to read, only characters placed on the page; a table is what the eye sees: consecutive
lines broken into cells by wide gaps, the cells of each line starting (or ending, for figures) where the cells of the
line above do. Such a run of at least MIN_ROWS lines is cut out of its page as a table unit when it has a caption
("Table 3: ...", the line above or below it), the caption on top, cells joined by " | ", so the chunker keeps it whole
(documents/chunking.py). No library PDFium's positions need: the candidates on the package index (pdfplumber,
camelot-py) bring pdfminer.six or OpenCV, PyMuPDF is AGPL, for what a few dozen lines do here. Pure Python, no Django.
"""

from __future__ import annotations

import logging
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from documents.office import table_text
from documents.parsing import PDFIUM_LOCK, PageText, SectionStart, normalise_text, section_title_at

logger = logging.getLogger(__name__)

MIN_ROWS = 3  # a header and two rows: fewer aligned lines are as often a list or a form as a table
MIN_COLUMNS = 2
# A gap wider than this many times the font size separates cells (a space is about a third of it, stretched by
# justification at most about two thirds).
CELL_GAP = 1.0
# Cells of prose columns, not of a table: a run of lines whose cells are this long on average (median) is text.
MAX_MEDIAN_CELL_CHARACTERS = 40
# A list item's marker is not a column.
_MARKER = re.compile(r"[•◦▪∗*–\-]|\(?[0-9a-zA-Z]{1,3}[.)]")
ALIGN_POINTS = 4.0  # cell edges this close (in points) are one column
MAX_PAGE_CHARACTERS = 20_000  # a page denser than this is not worth the per-character positions
_CAPTION = re.compile(r"(?:Table|Tab\.|TABLE)\s*[\dIVXLC]+(?:\.\d+)*\s*[.:]")  # "Table 2: ...", not "Table 2 shows"


@dataclass
class _Line:
    start: int  # PDFium character indexes: the line is [start, end)
    end: int
    cells: list[tuple[float, float, str]]  # (left, right, text) of each cell, left to right


@dataclass(frozen=True)
class _Table:
    start: int  # character indexes of the table's lines (caption included when it is adjacent)
    end: int
    caption: str
    rows: list[list[str]]


def split_tables(path: str | Path, pages: list[PageText]) -> list[PageText]:
    """The pages with each table PDFium's text layer shows cut out as a unit of its own (same page number, `table`
    set) between the text before and after it. OCR'd and empty pages are left as they are."""
    wanted = [page.page_number for page in pages if page.text and not page.ocr and not page.table]
    if not wanted:
        return pages
    found: dict[int, list[_Table]] = {}
    pieces: dict[int, list[str]] = {}
    with PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(str(path), password="")
        except pdfium.PdfiumError:
            return pages  # only pypdf could read it: no positions
        try:
            for number in wanted:
                tables, texts = _page_tables(document, number - 1)
                if tables:
                    found[number] = tables
                    pieces[number] = texts
        finally:
            document.close()
    if not found:
        return pages
    result: list[PageText] = []
    for page in pages:
        if page.page_number not in found:
            result.append(page)
            continue
        result.extend(_split_page(page, found[page.page_number], pieces[page.page_number]))
    return result


def _page_tables(document: pdfium.PdfDocument, index: int) -> tuple[list[_Table], list[str]]:
    """The page's tables, with the raw text between them (len(texts) == len(tables) + 1). Hold PDFIUM_LOCK."""
    page = document[index]
    try:
        text_page = page.get_textpage()
        try:
            count = text_page.count_chars()
            if count < MIN_ROWS * MIN_COLUMNS or count > MAX_PAGE_CHARACTERS:
                return [], []
            lines = _lines(text_page, count)
            tables = _tables(lines)
            if not tables:
                return [], []
            texts, position = [], 0
            for table in tables:
                texts.append(
                    text_page.get_text_range(position, table.start - position) if table.start > position else ""
                )
                position = table.end
            texts.append(text_page.get_text_range(position, count - position) if count > position else "")
            return tables, texts
        finally:
            text_page.close()
    except pdfium.PdfiumError as error:
        logger.warning("PDFium cannot read the positions on page %d: %s", index + 1, error)
        return [], []
    finally:
        page.close()


def _lines(text_page, count: int) -> list[_Line]:
    raw = text_page.raw
    lines: list[_Line] = []
    start = 0
    boxes: list[tuple[float, float, float, str]] = []  # left, right, height, character

    def close(end: int) -> None:
        if boxes:
            lines.append(_Line(start, end, _cells(boxes)))

    for position in range(count):
        character = chr(pdfium_c.FPDFText_GetUnicode(raw, position))
        if character == "\n":
            close(position + 1)
            start, boxes = position + 1, []
            continue
        if character.isspace() or character in "\ufffe\x02":
            if boxes and boxes[-1][3] != " ":
                boxes.append((boxes[-1][1], boxes[-1][1], 0.0, " "))  # PDFium's own word break, kept in the cell
            continue
        left, _, right, _ = text_page.get_charbox(position)
        boxes.append((left, right, pdfium_c.FPDFText_GetFontSize(raw, position), character))
    close(count)
    return lines


def _cells(boxes: list[tuple[float, float, float, str]]) -> list[tuple[float, float, str]]:
    glyphs = [box for box in boxes if box[3] != " "]
    height = statistics.median(box[2] for box in glyphs) or 10.0  # the font size
    cells: list[tuple[float, float, str]] = []
    left, right, text = glyphs[0][0], glyphs[0][1], ""
    previous_right = glyphs[0][0]
    for box_left, box_right, _, character in boxes:
        if character == " ":
            text += " " if text and not text.endswith(" ") else ""
            continue
        gap = box_left - previous_right
        if text and (gap > CELL_GAP * height or gap < -height * 4):  # a wide gap, or a jump back left: a new cell
            cells.append((left, right, text.strip()))
            left, text = box_left, ""
        text += character
        right = max(right, box_right) if text != character else box_right
        previous_right = box_right
    cells.append((left, right, text.strip()))
    if len(cells) > 1 and _MARKER.fullmatch(cells[0][2]):
        cells[:2] = [(cells[0][0], cells[1][1], f"{cells[0][2]} {cells[1][2]}")]
    return cells


def _aligned(line: _Line, columns: list[tuple[float, float]]) -> int:
    """How many of the line's cells start or end where a cell of the table so far does."""
    return sum(
        any(abs(left - c_left) <= ALIGN_POINTS or abs(right - c_right) <= ALIGN_POINTS for c_left, c_right in columns)
        for left, right, _ in line.cells
    )


def _tables(lines: list[_Line]) -> list[_Table]:
    tables: list[_Table] = []
    run: list[int] = []  # indexes into lines
    columns: list[tuple[float, float]] = []

    def finish() -> None:
        lengths = [len(text) for number in run for _, _, text in lines[number].cells]
        if len(run) >= MIN_ROWS and statistics.median(lengths) <= MAX_MEDIAN_CELL_CHARACTERS:
            table = _make_table(lines, run)
            # Only a captioned table is cut out: on the eval PDFs, cutting out every aligned run (tables of contents,
            # option lists, "Author: ..." blocks) lowered the quality bench's recall (vector @5 0.938 -> 0.844, hybrid
            # @3 1.0 -> 0.969), as it parted them from the sentences that explain them.
            if table.caption:
                tables.append(table)

    for number, line in enumerate(lines):
        cells = line.cells
        if len(cells) >= MIN_COLUMNS and (not run or _aligned(line, columns) >= MIN_COLUMNS):
            run.append(number)
            columns.extend((left, right) for left, right, _ in cells)
            continue
        finish()
        run, columns = (
            ([number], [(left, right) for left, right, _ in cells]) if len(cells) >= MIN_COLUMNS else ([], [])
        )
    finish()
    return tables


def _line_text(line: _Line) -> str:
    return " ".join(text for _, _, text in line.cells)


def _make_table(lines: list[_Line], run: list[int]) -> _Table:
    first, last = run[0], run[-1]
    start, end = lines[first].start, lines[last].end
    caption = ""
    above = lines[first - 1] if first > 0 else None
    below = lines[last + 1] if last + 1 < len(lines) else None
    if above and _CAPTION.match(_line_text(above)):
        caption, start = _line_text(above), above.start
    elif below and _CAPTION.match(_line_text(below)):
        caption, end = _line_text(below), below.end
    rows = [[text for _, _, text in lines[number].cells] for number in run]
    return _Table(start, end, caption, rows)


def _split_page(page: PageText, tables: list[_Table], raw_texts: list[str]) -> list[PageText]:
    """The page as text before the first table, the table, text between, ..., text after the last one."""
    whole = page.text
    units: list[PageText] = []
    offset = 0  # in the page's normalised text, roughly: where the current piece starts
    for number, raw in enumerate(raw_texts):
        text = normalise_text(raw)
        found = whole.find(text[:40], offset) if text else -1
        start = found if found >= 0 else offset
        if text:
            units.append(PageText(page.page_number, text, sections=_sections_from(page.sections, start, len(text))))
        offset = start + len(text)
        if number < len(tables):
            table = tables[number]
            section = section_title_at(page.sections, offset)
            units.append(
                PageText(
                    page.page_number,
                    normalise_text(table_text(table.caption, table.rows)),  # control characters out
                    sections=(SectionStart(0, section),) if section else (),
                    table=True,
                )
            )
    return units


def _sections_from(sections: tuple[SectionStart, ...], start: int, length: int) -> tuple[SectionStart, ...]:
    """The sections of the page's text [start, start + length), their offsets made relative to start."""
    result: list[SectionStart] = []
    current = section_title_at(sections, start)
    if current:
        result.append(SectionStart(0, current))
    for section in sections:
        if start < section.offset < start + length:
            result.append(SectionStart(section.offset - start, section.title))
    return tuple(result)
