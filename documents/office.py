"""Office formats -> located text units: DOCX (python-docx), PPTX (python-pptx), XLSX (openpyxl) and CSV.

The converter libraries give us the documents' structure (headings, slides, sheets, tables, captions), which a
flattening converter would lose, and each is the well-kept reference reader for its format. Locations are what a
person finds in the program that made the file: the heading path in a DOCX, the slide in a PPTX, the sheet and row
numbers in a spreadsheet. Tables are units of their own, with their caption or heading on top, so that the chunker
keeps them whole.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from documents.parse_errors import ParseLimits, TooManyRows, UnsupportedFormat
from documents.parsing import SectionStart, TextUnit, normalise_text

# A spreadsheet becomes blocks of rows of about this many characters, each repeating the header row: a sheet of
# thousands of rows cannot be one chunk, and a block without its header would be numbers without meaning.
SHEET_BLOCK_CHARS = 1500
BEFORE_FIRST_HEADING = "Beginning"
MAX_HEADING_CHARS = 160


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    return " ".join(text.split())


def table_text(caption: str, rows: Iterable[Iterable[str]]) -> str:
    """A table as text: its caption, then one line per row with cells joined by " | " (what embedding models and
    people both read as a table)."""
    lines = [caption] if caption else []
    lines += [" | ".join(cells) for cells in (list(row) for row in rows) if any(cells)]
    return "\n".join(lines)


class _SectionedUnits:
    """Collects paragraphs under the current heading path and tables as their own units."""

    def __init__(self) -> None:
        self.units: list[TextUnit] = []
        self.headings: list[tuple[int, str]] = []
        self.paragraphs: list[str] = []
        self.has_body = False  # a heading with nothing under it before a table is not a unit of its own

    @property
    def path(self) -> str:
        return " > ".join(title for _, title in self.headings)[:MAX_HEADING_CHARS]

    @property
    def location(self) -> str:
        return self.path or BEFORE_FIRST_HEADING

    def heading(self, level: int, title: str) -> None:
        self.flush()
        title = " ".join(title.split())
        if not title:
            return
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, title))
        self.paragraphs.append(title)

    def paragraph(self, text: str) -> None:
        if text.strip():
            self.paragraphs.append(text.strip())
            self.has_body = True

    def table(self, caption: str, rows: list[list[str]]) -> None:
        self.flush()
        caption = caption or (f"Table in “{self.path}”" if self.path else "Table")
        self._add(table_text(caption, rows), table=True)

    def flush(self) -> None:
        if self.paragraphs and self.has_body:
            self._add("\n\n".join(self.paragraphs))
        self.paragraphs, self.has_body = [], False

    def _add(self, text: str, table: bool = False) -> None:
        text = normalise_text(text)
        if not text:
            return
        sections = (SectionStart(0, self.path),) if self.path else ()
        self.units.append(TextUnit(len(self.units) + 1, text, sections=sections, location=self.location, table=table))

    def finish(self) -> list[TextUnit]:
        self.flush()
        return self.units


# -- DOCX ----------------------------------------------------------------------------------------------------------


def _heading_level(style_name: str) -> int | None:
    if style_name == "Title":
        return 0
    if style_name.startswith("Heading"):
        level = style_name.removeprefix("Heading").strip()
        return int(level) if level.isdigit() else 1
    return None


def docx_units(path: Path, limits: ParseLimits) -> list[TextUnit]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise UnsupportedFormat("This Word file is damaged; save it again from Word and upload it again.") from error
    collector = _SectionedUnits()
    pending_caption = ""  # a caption paragraph just above a table belongs to it
    blocks = list(document.iter_inner_content())
    for position, block in enumerate(blocks):
        if isinstance(block, Paragraph):
            style = block.style.name if block.style is not None else ""
            text = block.text
            level = _heading_level(style or "")
            if level is not None:
                collector.heading(level, text)
            elif style == "Caption" and position + 1 < len(blocks) and isinstance(blocks[position + 1], Table):
                pending_caption = " ".join(text.split())
            elif style == "Caption" and position > 0 and isinstance(blocks[position - 1], Table):
                continue  # a caption below its table was taken with it
            else:
                prefix = "• " if (style or "").startswith("List") else ""
                collector.paragraph(prefix + text)
        elif isinstance(block, Table):
            caption = pending_caption
            following = blocks[position + 1] if position + 1 < len(blocks) else None
            if not caption and isinstance(following, Paragraph) and following.style is not None:
                if following.style.name == "Caption":
                    caption = " ".join(following.text.split())
            collector.table(caption, _docx_rows(block))
            pending_caption = ""
    return collector.finish()


def _docx_rows(table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell repeats itself across the columns it spans
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        rows.append(cells)
    return rows


# -- PPTX ----------------------------------------------------------------------------------------------------------


def pptx_units(path: Path, limits: ParseLimits) -> list[TextUnit]:
    import pptx
    from pptx.exc import PackageNotFoundError

    try:
        presentation = pptx.Presentation(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError, PackageNotFoundError) as error:
        raise UnsupportedFormat("This PowerPoint file is damaged; save it again and upload it again.") from error
    units: list[TextUnit] = []
    for number, slide in enumerate(presentation.slides, start=1):
        location = f"Slide {number}"
        title_shape = slide.shapes.title
        title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        texts, tables = [], []
        for shape in _shapes(slide.shapes):
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[" ".join(cell.text.split()) for cell in row.cells] for row in shape.table.rows]
                tables.append(rows)
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                texts.append(shape.text_frame.text)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                texts.append(f"Notes: {notes}")
        text = normalise_text("\n\n".join(texts))
        if text:
            units.append(TextUnit(number, text, location=location))
        for rows in tables:
            caption = f"{location}: {title}" if title else location
            units.append(TextUnit(number, table_text(caption, rows), location=location, table=True))
    return units


def _shapes(shapes) -> Iterator:
    for shape in shapes:
        if getattr(shape, "shape_type", None) is not None and hasattr(shape, "shapes"):  # a group
            yield from _shapes(shape.shapes)
        else:
            yield shape


# -- spreadsheets ----------------------------------------------------------------------------------------------------


def _row_blocks(
    rows: Iterable[tuple[int, list[str]]], caption: str, location_prefix: str, first_unit: int
) -> Iterator[TextUnit]:
    """Blocks of rows of about SHEET_BLOCK_CHARS, each starting with the caption and the sheet's header row."""
    header: list[str] | None = None
    header_number = 0
    block: list[tuple[int, list[str]]] = []
    size = 0
    number = first_unit

    def emit() -> TextUnit:
        first, last = block[0][0], block[-1][0]
        span = f"row {first}" if first == last else f"rows {first}-{last}"
        head = [header] if header is not None else []
        text = table_text(caption, head + [cells for _, cells in block])
        location = f"{location_prefix}{span}" if location_prefix else span.capitalize()
        return TextUnit(number, text, location=location, table=True)

    for row_number, cells in rows:
        if header is None:
            header, header_number = cells, row_number
            continue
        line_size = sum(len(cell) + 3 for cell in cells)
        if block and size + line_size > SHEET_BLOCK_CHARS:
            yield emit()
            number += 1
            block, size = [], 0
        block.append((row_number, cells))
        size += line_size
    if block:
        yield emit()
    elif header is not None:  # a sheet of one row: the row is the content
        block, header = [(header_number, header)], None
        yield emit()


def _counted(rows: Iterable[tuple[int, list[str]]], limits: ParseLimits, counter: list[int]) -> Iterator:
    for row in rows:
        counter[0] += 1
        if counter[0] > limits.max_rows:
            raise TooManyRows(
                f"This spreadsheet has more than {limits.max_rows:,} rows; Silo reads up to {limits.max_rows:,}. "
                "Split it, or keep the rows you want to ask about, and upload it again."
            )
        yield row


def _non_empty(rows: Iterable[Iterable[object]]) -> Iterator[tuple[int, list[str]]]:
    for row_number, values in enumerate(rows, start=1):
        cells = [_cell_text(value) for value in values]
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            yield row_number, cells


def xlsx_units(path: Path, limits: ParseLimits) -> list[TextUnit]:
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise UnsupportedFormat("This Excel file is damaged; save it again from Excel and upload it again.") from error
    units: list[TextUnit] = []
    counter = [0]
    try:
        for sheet in workbook.worksheets:
            caption = f"Sheet “{sheet.title}”"
            rows = _counted(_non_empty(sheet.iter_rows(values_only=True)), limits, counter)
            units += _row_blocks(rows, caption, f"{caption}, ", len(units) + 1)
    finally:
        workbook.close()
    return units


def csv_units(path: Path, limits: ParseLimits) -> list[TextUnit]:
    with path.open(encoding="utf-8-sig", newline="") as file:
        sample = file.read(64 * 1024)
        file.seek(0)
        try:
            dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        csv.field_size_limit(1024 * 1024)
        try:
            rows = _counted(_non_empty(csv.reader(file, dialect)), limits, [0])
            return list(_row_blocks(rows, "", "", 1))
        except csv.Error as error:
            raise UnsupportedFormat(f"This CSV file cannot be read: {error}.") from error
