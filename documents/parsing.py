"""Parse stage of the ingest pipeline: validate an uploaded PDF and extract its text page by page.

Pure Python, no Django: the pipeline passes limits in from settings. PDFium (pypdfium2) does the extraction, pypdf is
the second opinion for damaged files PDFium cannot open. Errors a user can cause are `UnreadablePdf` subclasses whose
message is one sentence the user understands.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pypdf
import pypdf.errors
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

logger = logging.getLogger(__name__)

# PDFium is not thread-safe, not even across different documents: every call into it (open, read, close) holds this.
PDFIUM_LOCK = threading.Lock()

# Readers accept the header anywhere in the first 1,024 bytes (PDF 32000-1, annex H.3 note 13).
HEADER_SEARCH_BYTES = 1024
# A scanned document is told apart from a blank one by looking for images on the first pages only.
IMAGE_PROBE_PAGES = 50
# Section paths longer than this are cut: they travel with every chunk and must not crowd out its text.
MAX_SECTION_CHARS = 160
MAX_BOOKMARKS = 5000

_OTHER_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"PK\x03\x04", "a ZIP archive or an Office document"),
    (b"\xd0\xcf\x11\xe0", "an old Office document"),
    (b"{\\rtf", "an RTF document"),
)


class UnreadablePdf(Exception):
    """A file Silo cannot ingest, for a reason the user can act on; `str(error)` is the message to show."""

    default_message = "Silo cannot read this PDF."

    def __init__(self, message: str | None = None):
        self.message = message or self.default_message
        super().__init__(self.message)


class EmptyFile(UnreadablePdf):
    default_message = "This file is empty."


class NotAPdf(UnreadablePdf):
    default_message = "This file is not a PDF."


class EncryptedPdf(UnreadablePdf):
    default_message = "This PDF is password protected; remove the password and upload it again."


class TooLarge(UnreadablePdf):
    default_message = "This file is too large."


class TooManyPages(UnreadablePdf):
    default_message = "This PDF has too many pages."


class CorruptPdf(UnreadablePdf):
    default_message = (
        "This PDF is damaged beyond repair; try saving or exporting it again from the program that made it."
    )


class NoTextLayer(UnreadablePdf):
    default_message = "This PDF has no selectable text (it looks scanned); Silo cannot read images yet."


class BlankPdf(NoTextLayer):
    default_message = "This PDF has no text on any of its pages."


@dataclass(frozen=True)
class PdfInfo:
    page_count: int
    title: str | None
    encrypted: bool  # True also for owner-password-only PDFs, which open without a password and are ingested
    size_bytes: int


@dataclass(frozen=True)
class SectionStart:
    """From `offset` (a character index into the page's text) on, the text belongs to section `title`."""

    offset: int
    title: str


def section_title_at(sections: tuple[SectionStart, ...], offset: int) -> str:
    """The title of the section the character at `offset` belongs to ("" before the first)."""
    title = ""
    for section in sections:
        if section.offset > offset:
            break
        title = section.title
    return title


@dataclass(frozen=True)
class PageText:
    page_number: int  # 1-based physical page index (PDFium index + 1), not the printed page label
    text: str
    # Sections in effect on this page, in order; the first one starts at offset 0 when a section runs in from an
    # earlier page. Empty when the PDF has no outline (bookmarks).
    sections: tuple[SectionStart, ...] = field(default=())
    # Where a person finds this unit in a source that has no pages ("Slide 3", "Sheet “Sales”, rows 2-41"); "" for
    # PDF pages, whose page number is their location. Other formats number their units in `page_number` too.
    location: str = ""
    ocr: bool = False  # the text was read from an image of the page, not from its text layer
    table: bool = False  # one table with its caption or heading: chunked whole, never split from its caption


# Every format's parser returns these: a "unit" is a PDF page, a slide, a block of sheet rows or a heading's section.
TextUnit = PageText


# -- validation ----------------------------------------------------------------------------------------------------


def inspect_pdf(path: str | Path, max_bytes: int, max_pages: int) -> PdfInfo:
    """Checks that `path` holds a PDF Silo can ingest, judging by its content, never its name.

    Raises an `UnreadablePdf` subclass: EmptyFile, TooLarge, NotAPdf, EncryptedPdf, CorruptPdf or TooManyPages.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise EmptyFile()
    if size > max_bytes:
        raise TooLarge(f"This file is {_megabytes(size)}; Silo accepts PDFs up to {_megabytes(max_bytes)}.")
    _check_pdf_header(path)

    try:
        with PDFIUM_LOCK:
            document = _open_with_pdfium(path)
            try:
                page_count = len(document)
                title = document.get_metadata_value("Title")
                encrypted = pdfium_c.FPDF_GetSecurityHandlerRevision(document.raw) != -1
            finally:
                document.close()
    except _PdfiumCannotOpen:
        page_count, title, encrypted = _inspect_with_pypdf(path)

    if page_count > max_pages:
        raise TooManyPages(f"This PDF has {page_count:,} pages; Silo accepts up to {max_pages:,}.")
    return PdfInfo(page_count=page_count, title=(title or "").strip() or None, encrypted=encrypted, size_bytes=size)


def page_count(source: BinaryIO) -> int | None:
    """How many pages PDFium counts in a readable, seekable file (it reads the cross-reference table, not the pages,
    and only the parts it needs): None when it cannot open it, which the pipeline then judges with pypdf's second
    opinion and a reason for the user."""
    source.seek(0)
    try:
        with PDFIUM_LOCK:
            document = pdfium.PdfDocument(source, password="", autoclose=False)
            try:
                return len(document)
            finally:
                document.close()
    except pdfium.PdfiumError:
        return None


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:,.1f} MB"


def _check_pdf_header(path: Path) -> None:
    with path.open("rb") as file:
        head = file.read(HEADER_SEARCH_BYTES)
    if b"%PDF-" in head:
        return
    for signature, kind in _OTHER_FORMATS:
        if head.startswith(signature):
            raise NotAPdf(f"This file is not a PDF (it looks like {kind}).")
    if _looks_like_text(head):
        raise NotAPdf("This file is not a PDF (it looks like plain text).")
    raise NotAPdf()


def _looks_like_text(head: bytes) -> bool:
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        # The sample may end inside a multi-byte character.
        try:
            decoded = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(character.isprintable() or character in "\r\n\t\f" for character in decoded)


class _PdfiumCannotOpen(Exception):
    """PDFium could not parse the file; pypdf gets a second opinion before we call it corrupt."""


def _open_with_pdfium(path: Path) -> pdfium.PdfDocument:
    """Opens with the empty password, which also opens owner-password-only PDFs. Hold PDFIUM_LOCK."""
    try:
        return pdfium.PdfDocument(path, password="")
    except pdfium.PdfiumError as error:
        if error.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise EncryptedPdf() from error
        raise _PdfiumCannotOpen(str(error)) from error


# pypdf raises a variety of exception types on malformed input; these are the ones a damaged file produces.
_PYPDF_ERRORS = (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError)


def _open_with_pypdf(path: Path) -> pypdf.PdfReader:
    try:
        reader = pypdf.PdfReader(path, strict=False)
        if reader.is_encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
            raise EncryptedPdf()
        if len(reader.pages) == 0:
            raise CorruptPdf()
    except _PYPDF_ERRORS as error:
        logger.info("pypdf cannot open %s either: %s", path, error)
        raise CorruptPdf() from error
    return reader


def _inspect_with_pypdf(path: Path) -> tuple[int, str | None, bool]:
    reader = _open_with_pypdf(path)
    try:
        title = reader.metadata.title if reader.metadata else None
    except _PYPDF_ERRORS:
        title = None
    return len(reader.pages), title if isinstance(title, str) else None, reader.is_encrypted


# -- extraction ----------------------------------------------------------------------------------------------------


def extract_pages(path: str | Path, require_text: bool = True) -> list[PageText]:
    """Text of every page, normalised, with page numbers and the outline's sections.

    Raises CorruptPdf or EncryptedPdf when the file cannot be opened, NoTextLayer when no page has any text (BlankPdf
    when the pages hold no images either) unless `require_text` is False (the pipeline OCRs such pages). Call
    `inspect_pdf` first to enforce size and page limits.
    """
    path = Path(path)
    try:
        pages, has_images = _extract_with_pdfium(path)
    except _PdfiumCannotOpen as error:
        logger.warning("PDFium cannot open %s (%s); extracting with pypdf", path, error)
        pages, has_images = _extract_with_pypdf(path), True

    if require_text and not any(page.text for page in pages):
        raise NoTextLayer() if has_images else BlankPdf()
    return pages


def _extract_with_pdfium(path: Path) -> tuple[list[PageText], bool]:
    with PDFIUM_LOCK:
        document = _open_with_pdfium(path)
        try:
            texts = [_pdfium_page_text(document, index) for index in range(len(document))]
            outline = _pdfium_outline(document)
            has_images = any(texts) or _pdfium_has_images(document)
        finally:
            document.close()

    texts = [normalise_text(text) for text in texts]
    sections = _locate_sections(texts, outline)
    pages = [PageText(page_number=index + 1, text=text, sections=sections[index]) for index, text in enumerate(texts)]
    return pages, has_images


def _pdfium_page_text(document: pdfium.PdfDocument, index: int) -> str:
    # Pages and text pages are closed here, under the lock, rather than by finalizers on whatever thread runs the GC.
    try:
        page = document[index]
    except pdfium.PdfiumError as error:
        logger.warning("PDFium cannot load page %d: %s", index + 1, error)
        return ""
    try:
        text_page = page.get_textpage()
        try:
            return text_page.get_text_range()
        finally:
            text_page.close()
    finally:
        page.close()


def _pdfium_has_images(document: pdfium.PdfDocument) -> bool:
    for index in range(min(len(document), IMAGE_PROBE_PAGES)):
        page = document[index]
        try:
            for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3):
                return True
        finally:
            page.close()
    return False


def _pdfium_outline(document: pdfium.PdfDocument) -> list[tuple[int, str]]:
    """(page index, section path) for each bookmark that points at a page, in document order."""
    outline: list[tuple[int, str]] = []
    path: list[str] = []
    for count, bookmark in enumerate(document.get_toc(max_depth=6)):
        if count >= MAX_BOOKMARKS:
            break
        title = " ".join(bookmark.get_title().split())
        del path[bookmark.level :]
        path.append(title)
        destination = bookmark.get_dest()
        index = destination.get_index() if destination is not None else None
        if index is not None and title:
            outline.append((index, " > ".join(path)[:MAX_SECTION_CHARS]))
    # Outlines are not always in page order; a section cannot start before the one listed above it.
    outline.sort(key=lambda entry: entry[0])
    return outline


def _locate_sections(texts: list[str], outline: list[tuple[int, str]]) -> list[tuple[SectionStart, ...]]:
    by_page: list[list[SectionStart]] = [[] for _ in texts]
    current = ""
    starts_by_index: dict[int, list[str]] = {}
    for index, title in outline:
        if 0 <= index < len(texts):
            starts_by_index.setdefault(index, []).append(title)
    for index, text in enumerate(texts):
        sections = by_page[index]
        if current:
            sections.append(SectionStart(0, current))
        lowered = text.lower()
        search_from = 0
        for title in starts_by_index.get(index, ()):
            offset = _heading_offset(lowered, title.rsplit(" > ", 1)[-1].lower(), search_from)
            if sections and sections[-1].offset == offset:
                sections[-1] = SectionStart(offset, title)
            else:
                sections.append(SectionStart(offset, title))
            search_from = offset
            current = title
    return [tuple(sections) for sections in by_page]


def _heading_offset(lowered_text: str, lowered_title: str, search_from: int) -> int:
    """Where the heading is printed on its page; the page start when it cannot be found (titles in outlines often
    differ from the printed heading, e.g. "LaTeX" printed as "LATEX")."""
    offset = lowered_text.find(lowered_title, search_from)
    if offset >= 0:
        return offset
    number = re.match(r"[\d.]+\d\s", lowered_title) or re.match(r"\d+\s", lowered_title)
    if number:
        match = re.compile(r"^" + re.escape(number.group().strip()) + r"\s", re.MULTILINE).search(
            lowered_text, search_from
        )
        if match:
            return match.start()
    return search_from


def _extract_with_pypdf(path: Path) -> list[PageText]:
    reader = _open_with_pypdf(path)
    pages = []
    for index in range(len(reader.pages)):
        try:
            text = reader.pages[index].extract_text()
        except _PYPDF_ERRORS as error:
            logger.warning("pypdf cannot read page %d of %s: %s", index + 1, path, error)
            text = ""
        pages.append(PageText(page_number=index + 1, text=normalise_text(text, join_hyphenated_lines=True)))
    return pages


# -- normalisation -------------------------------------------------------------------------------------------------

# Control characters carry no meaning in extracted text, and PostgreSQL text columns refuse NUL.
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]+")
# PDFium replaces a hyphen it recognises as line-end hyphenation with U+FFFE (older builds: U+0002) and joins the
# lines itself; other extractors leave a soft hyphen (U+00AD) before the line break.
_SOFT_HYPHEN_BREAK = re.compile("[\ufffe\x02\u00ad][ \t]*(?:\r?\n[ \t]*)?")
# Without that mark (pypdf), only a hyphen between lower-case letters at a line end is taken for hyphenation.
_HARD_HYPHEN_BREAK = re.compile(r"(?<=[a-z])-[ \t]*\n[ \t]*(?=[a-z])")
# Patterns match only what must change: a regex substitution costs per match, and most spaces are single already.
_ODD_SPACE = "\t\f\u00a0\u2000-\u200a\u202f\u205f\u3000"
_HORIZONTAL_SPACE = re.compile(f"[ {_ODD_SPACE}]{{2,}}|[{_ODD_SPACE}]")
_SPACE_AROUND_NEWLINE = re.compile(r" \n ?|\n ")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_text(text: str, join_hyphenated_lines: bool = False) -> str:
    """Joins hyphenated words split across lines, drops control characters (NUL included), collapses runs of spaces,
    keeps line breaks (one) and paragraph breaks (two)."""
    if not text:
        return ""
    text = _SOFT_HYPHEN_BREAK.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if join_hyphenated_lines:
        text = _HARD_HYPHEN_BREAK.sub("", text)
    text = _CONTROL_CHARACTERS.sub("", text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
