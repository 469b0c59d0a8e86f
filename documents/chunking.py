"""Chunk stage of the ingest pipeline: pages of text -> overlapping chunks that remember their pages.

Pure Python, no Django. Sizes are in characters (settings CHUNK_SIZE / CHUNK_OVERLAP, passed in by the pipeline).
Chunks are packed from whole sentences (falling back to lines, then words, only for a sentence longer than a chunk),
so a chunk never ends mid-sentence and its embedding sees complete statements. The overlap is made of whole trailing
sentences of the previous chunk. A section start (from the PDF's outline) always starts a new chunk. Same pages in, same chunks out: chunk ids can be derived from (document id, index).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from documents.parsing import PageText, section_title_at


@dataclass(frozen=True)
class Chunk:
    index: int  # 0-based position in the document; with the document id, a stable chunk id
    text: str  # the document's own words, for display, citation and full-text search
    first_page: int  # 1-based, like PageText.page_number
    last_page: int  # equal to first_page unless the chunk runs across a page break
    # The outline path of the chunk's section ("2 Text fonts > 2.1 Attributes"), or "": for showing where a source
    # sits. Chunks never straddle a section start. Prefixing it to the embedded text measured worse on the dev set
    # (recall@5 0.91 vs 0.97 with all-MiniLM-L6-v2): it pushes the chunk's own words past the model's 256 tokens.
    section: str = ""
    # Where a person finds it outside PDFs ("Slide 3", "Sheet “Sales”, rows 2-41", a heading path); "" for PDFs.
    location: str = ""
    ocr: bool = False  # some of its text was read by OCR from a scanned page


# A table is one chunk with its caption; only a table longer than this many chunks' worth is cut, by lines, each piece
# repeating the caption and header line (isolated fragments without them are never retrieved).
TABLE_MAX_CHUNKS = 4


@dataclass(frozen=True)
class _Segment:
    text: str
    separator: str  # what joins it to the next segment: " " inside a paragraph, "\n" at a line or page break
    page_number: int
    section: str
    location: str = ""
    ocr: bool = False
    table: bool = False  # a whole table (or a piece of a long one): always a chunk of its own


# A sentence ends at . ! ? (plus closing quotes or brackets) before whitespace; a block ends at a blank line, at a
# line ending in : or ;, or before a line that starts a list item or a numbered heading.
_BOUNDARY = re.compile(
    r"[.!?][)\]\"'’”]*\s+"
    r"|\n\n+"
    r"|[:;]\n"
    r"|\n(?=[•◦▪∗*–-] |\d+(?:\.\d+)*\.? +[A-Z])"
)
# A period after these is not a sentence end.
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|cf|etc|vs|viz|resp|approx|Fig|Figs|Sec|Ch|Eq|No|Vol|pp?)|\b[A-Z])\.$")
_PAGE_NUMBER_LINE = re.compile(r"\d{1,4}|(?=[ivxlc])(?:c[md]|d?c{0,3})(?:x[cl]|l?x{0,3})(?:i[xv]|v?i{0,3})")


def chunk_pages(pages: Iterable[PageText], chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Splits the pages' text into chunks of at most `chunk_size` characters, each repeating up to `chunk_overlap`
    characters of whole sentences from the end of the previous chunk. Empty pages yield nothing."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_overlap must be at least 0 and smaller than chunk_size")

    chunks: list[Chunk] = []
    current: list[_Segment] = []
    length = 0  # of the current chunk's text when joined

    for segment in _segments(pages, chunk_size):
        if segment.table:
            if current:
                _emit(chunks, current)
            _emit(chunks, [segment])
            current, length = [], 0
            continue
        if current and segment.section != current[-1].section:
            # A new section starts a new chunk, without overlap: a chunk about one topic embeds more sharply.
            _emit(chunks, current)
            current, length = [], 0
        elif current and length + len(current[-1].separator) + len(segment.text) > chunk_size:
            _emit(chunks, current)
            current = _overlap(current, chunk_overlap)
            length = _joined_length(current)
            while current and length + len(current[-1].separator) + len(segment.text) > chunk_size:
                length -= len(current[0].text) + len(current[0].separator)
                current.pop(0)
        length += (len(current[-1].separator) if current else 0) + len(segment.text)
        current.append(segment)
    if current:
        _emit(chunks, current)
    return chunks


def _emit(chunks: list[Chunk], segments: list[_Segment]) -> None:
    text = "".join(segment.text + segment.separator for segment in segments[:-1]) + segments[-1].text
    first, last = segments[0].location, segments[-1].location
    chunks.append(
        Chunk(
            index=len(chunks),
            text=text,
            first_page=segments[0].page_number,
            last_page=segments[-1].page_number,
            section=segments[0].section,
            location=_location_span(first, last),
            ocr=any(segment.ocr for segment in segments),
        )
    )


_NUMBERED_LOCATION = re.compile(r"(Slide|Lines) (\d+)(?:-(\d+))?")


def _location_span(first: str, last: str) -> str:
    """A chunk running from slide 3 into slide 4 is at "Slides 3-4" ("Lines 1-90" for text); else at both ends."""
    if first == last:
        return first
    start, end = _NUMBERED_LOCATION.fullmatch(first), _NUMBERED_LOCATION.fullmatch(last)
    if start and end and start.group(1) == end.group(1):
        return f"{start.group(1).removesuffix('s')}s {start.group(2)}-{end.group(3) or end.group(2)}"
    return f"{first} to {last}"


def _overlap(segments: list[_Segment], chunk_overlap: int) -> list[_Segment]:
    """The trailing segments that fit in `chunk_overlap`, never all of them (the next chunk must move on)."""
    kept: list[_Segment] = []
    total = 0
    for segment in reversed(segments[1:]):
        total += len(segment.text) + (len(segment.separator) if kept else 0)
        if total > chunk_overlap:
            break
        kept.append(segment)
    kept.reverse()
    return kept


def _joined_length(segments: list[_Segment]) -> int:
    if not segments:
        return 0
    return sum(len(segment.text) + len(segment.separator) for segment in segments) - len(segments[-1].separator)


def _segments(pages: Iterable[PageText], chunk_size: int) -> Iterable[_Segment]:
    for page in pages:
        text = page.text
        section = page.sections[0].title if page.sections else ""
        if page.table:
            for table_piece in _table_pieces(text, chunk_size * TABLE_MAX_CHUNKS):
                yield _Segment(table_piece, "\n", page.page_number, section, page.location, page.ocr, table=True)
            continue
        spans = _sentence_spans(text, *_body_bounds(text))
        for number, (start, end) in enumerate(spans):
            separator = "\n" if number == len(spans) - 1 or "\n" in text[end : _next_start(spans, number, end)] else " "
            section = section_title_at(page.sections, start)
            sentence = text[start:end]
            if len(sentence) <= chunk_size:
                yield _Segment(sentence, separator, page.page_number, section, page.location, page.ocr)
                continue
            pieces = _split_long(sentence, chunk_size)
            for piece_number, piece in enumerate(pieces):
                piece_separator = separator if piece_number == len(pieces) - 1 else piece[1]
                yield _Segment(piece[0], piece_separator, page.page_number, section, page.location, page.ocr)


def _table_pieces(text: str, max_chars: int) -> list[str]:
    """The table whole when it fits in `max_chars`; else pieces of whole lines, each starting with the caption and
    the header line (the table's first two lines)."""
    if len(text) <= max_chars:
        return [text]
    lines = text.split("\n")
    head, body = lines[:2], lines[2:]
    head_text = "\n".join(head)
    pieces, current = [], ""
    for line in body:
        line = line[: max(1, max_chars - len(head_text) - 1)]
        if current and len(head_text) + len(current) + len(line) + 2 > max_chars:
            pieces.append(f"{head_text}\n{current}")
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        pieces.append(f"{head_text}\n{current}")
    return pieces or [text[:max_chars]]


def _body_bounds(text: str) -> tuple[int, int]:
    """The page without a lone page number on its first or last line (running headers and footers say nothing and
    would glue the pages around them together)."""
    start, end = 0, len(text)
    first_line_end = text.find("\n")
    if first_line_end > 0 and _PAGE_NUMBER_LINE.fullmatch(text[:first_line_end].strip()):
        start = first_line_end + 1
    last_line_start = text.rfind("\n") + 1
    if last_line_start > start and _PAGE_NUMBER_LINE.fullmatch(text[last_line_start:].strip()):
        end = last_line_start
    if _PAGE_NUMBER_LINE.fullmatch(text[start:end].strip()):
        return start, start
    return start, end


def _next_start(spans: list[tuple[int, int]], number: int, end: int) -> int:
    return spans[number + 1][0] if number + 1 < len(spans) else end


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence or block of the text, as chunks are packed from them (answers quote them)."""
    return _sentence_spans(text, 0, len(text))


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each sentence or block in text[start:end], without surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    stop = end
    for match in _BOUNDARY.finditer(text, start, stop):
        if match.group()[0] == "." and _ABBREVIATION.search(text, max(0, match.start() - 8), match.start() + 1):
            continue
        _add_span(spans, text, start, match.start() + len(match.group().rstrip()))
        start = match.end()
    _add_span(spans, text, start, stop)
    return spans


def _add_span(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        spans.append((start, end))


def _split_long(text: str, chunk_size: int) -> list[tuple[str, str]]:
    """A sentence longer than a chunk (a table, a code listing): packed by lines, then words, then cut hard."""
    for separator in ("\n", " "):
        parts = [part for part in text.split(separator) if part]
        if len(parts) > 1:
            break
    else:
        return [(text[offset : offset + chunk_size], "") for offset in range(0, len(text), chunk_size)]

    pieces: list[tuple[str, str]] = []
    current = ""
    for part in parts:
        if len(part) > chunk_size:
            if current:
                pieces.append((current, separator))
                current = ""
            pieces.extend(_split_long(part, chunk_size))
            continue
        if current and len(current) + len(separator) + len(part) > chunk_size:
            pieces.append((current, separator))
            current = part
        else:
            current = f"{current}{separator}{part}" if current else part
    if current:
        pieces.append((current, separator))
    return pieces
