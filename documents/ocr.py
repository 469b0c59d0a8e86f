"""OCR for scanned PDF pages: find the pages without a usable text layer, render them with PDFium, read them with
Tesseract.

Tesseract (Debian's `tesseract-ocr` with its `eng` data, installed by the Makefile and the Dockerfile) won our
measurement against RapidOCR's bundled PP-OCR models on this machine: see README, "Scanned pages". It runs offline
on CPU and loads nothing at run time. Pure Python, no Django: the pipeline passes the settings in.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from documents.parsing import PDFIUM_LOCK, PageText, UnreadablePdf, normalise_text

logger = logging.getLogger(__name__)

# A page whose text layer holds fewer letters and digits than this, and an image, is a scan (a text layer of a few
# characters is a page number or a scanner's stamp).
MIN_TEXT_LAYER_CHARACTERS = 25


class TooManyScannedPages(UnreadablePdf):
    default_message = "This PDF has more scanned pages than Silo reads in one document."


class OcrUnavailable(UnreadablePdf):
    default_message = (
        "This PDF has scanned pages, and Silo's text recognition (Tesseract) is not installed on this server; "
        "an operator needs to install Debian's tesseract-ocr package (`make run` does)."
    )


@dataclass(frozen=True)
class OcrOptions:
    dpi: int = 300  # rendering resolution: Tesseract reads best at about 300 dpi, whatever the scan's own
    language: str = "eng"  # Tesseract language codes joined by "+", only those whose data is installed
    max_pixels: int = 40_000_000  # a huge page is rendered at a lower resolution rather than fill memory
    page_segmentation: int = 3  # Tesseract's --psm: 3 finds the layout itself (settings.OCR_PAGE_SEGMENTATION)


def _letters(text: str) -> int:
    return sum(character.isalnum() for character in text)


def scanned_page_numbers(path: str | Path, pages: list[PageText]) -> list[int]:
    """The pages (1-based) whose text layer is missing or nearly so and that show an image: those OCR reads."""
    candidates = [page.page_number for page in pages if _letters(page.text) < MIN_TEXT_LAYER_CHARACTERS]
    if not candidates:
        return []
    scanned = []
    with PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(str(path), password="")
        except pdfium.PdfiumError:
            return []  # only pypdf could read it (see parsing): no page images to OCR
        try:
            for number in candidates:
                page = document[number - 1]
                try:
                    if next(iter(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3)), None):
                        scanned.append(number)
                finally:
                    page.close()
        finally:
            document.close()
    return scanned


def _render(document: pdfium.PdfDocument, index: int, options: OcrOptions):
    page = document[index]
    try:
        width, height = page.get_size()  # in points, 1/72 inch
        scale = options.dpi / 72
        pixels = width * scale * height * scale
        if pixels > options.max_pixels:
            scale *= (options.max_pixels / pixels) ** 0.5
        bitmap = page.render(scale=scale, grayscale=True, may_draw_forms=False)
        try:
            return bitmap.to_pil()
        finally:
            bitmap.close()
    finally:
        page.close()


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def recognise_image(image, language: str, page_segmentation: int = 3) -> str:
    """Tesseract's reading of one page image (a PIL image), laid out in paragraphs (`text_from_tesseract_data`)."""
    return text_from_tesseract_data(tesseract_data(image, language, page_segmentation))


def tesseract_data(image, language: str, page_segmentation: int = 3) -> str:
    """Tesseract's TSV for one page image: every word with its box, confidence and block, paragraph and line."""
    import pytesseract

    # One thread per page: the OCR queue's concurrency, not Tesseract's OpenMP, decides how many cores OCR takes.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    try:
        return pytesseract.image_to_data(image, lang=language, config=f"--psm {page_segmentation}")
    except pytesseract.TesseractError as error:
        # One page Tesseract cannot read; the rest of the document is still worth reading.
        logger.warning("Tesseract could not read a page: %s", error)
        return ""


@functools.cache
def installed_languages() -> frozenset[str]:
    import pytesseract

    return frozenset(pytesseract.get_languages(config=""))


def check_languages(language: str) -> None:
    """Refuses before any page is read when Tesseract lacks the data of a configured language."""
    missing = [code for code in language.split("+") if code not in installed_languages()]
    if missing:
        packages = ", ".join(f"tesseract-ocr-{code.replace('_', '-').lower()}" for code in missing)
        raise OcrUnavailable(
            f"This PDF has scanned pages, and Silo's text recognition lacks the data for {', '.join(missing)} on this "
            f"server; an operator needs to install {packages}."
        )


def ocr_pages(
    path: str | Path,
    page_numbers: list[int],
    options: OcrOptions,
    on_page: Callable[[int, int], None] | None = None,
) -> dict[int, str]:
    """The recognised text of each listed page (1-based), normalised; `on_page(done, total)` after each page."""
    if not tesseract_available():
        raise OcrUnavailable()
    check_languages(options.language)
    texts: dict[int, str] = {}
    for done, number in enumerate(page_numbers, start=1):
        with PDFIUM_LOCK:  # rendering only: recognition runs outside the lock, so other PDFs are not held up
            document = pdfium.PdfDocument(str(path), password="")
            try:
                image = _render(document, number - 1, options)
            finally:
                document.close()
        texts[number] = normalise_text(
            recognise_image(image, options.language, options.page_segmentation), join_hyphenated_lines=True
        )
        if on_page:
            on_page(done, len(page_numbers))
    return texts


def with_ocr_text(pages: list[PageText], texts: dict[int, str]) -> list[PageText]:
    """The pages with each OCR'd page's text replaced by what OCR read, marked as OCR'd (the outline's sections are
    kept, starting at the page's top)."""
    result = []
    for page in pages:
        if page.page_number in texts:
            sections = tuple(section.__class__(0, section.title) for section in page.sections[-1:])
            page = PageText(page.page_number, texts[page.page_number], sections=sections, ocr=True)
        result.append(page)
    return result


# -- laying out what Tesseract read ----------------------------------------------------------------------------------

# Margin notes ("New feature 1995/06/01" beside a paragraph) sit in a strip of their own at the page's edge, past a
# gutter no line of the body crosses; Tesseract's reading order often puts their words inside the body's lines. A
# gutter is at least one text height wide and crossed by at most this share of the page's lines.
GUTTER_MAX_CROSSING_LINES = 0.03
# An edge strip is a margin when it holds at most this share of the page's characters, is at most this share of the
# text's width, and has words on at most this share of the body's lines (a table's last column has a word on most).
MARGIN_MAX_CHARACTERS = 0.2
MARGIN_MAX_WIDTH = 0.3
MARGIN_MAX_LINES = 0.4
# A line with no letter or digit and words Tesseract is this unsure of is noise (a smudge, a rule, a bullet's ghost).
NOISE_LINE_MAX_CONFIDENCE = 50.0
# What Tesseract's English model reads a list's bullet (•) as, at the start of a line: no English line starts with
# the word "e".
_BULLET_READINGS = frozenset({"e"})
_SENTENCE_END = re.compile(r"[.!?:;][)\]\"'’”]*$")


@dataclass(frozen=True)
class _Word:
    text: str
    left: int
    right: int
    height: int
    confidence: float


def _tesseract_lines(data: str) -> list[tuple[tuple[int, int], list[_Word]]]:
    """Tesseract's lines in its reading order, each with its (block, paragraph) and its words."""
    lines: dict[tuple[int, int, int], list[_Word]] = {}
    for row in data.splitlines()[1:]:
        fields = row.split("\t")
        if len(fields) < 12 or fields[0] != "5" or not fields[11].strip():
            continue
        confidence = float(fields[10])
        left, width, height = int(fields[6]), int(fields[8]), int(fields[9])
        text = fields[11].strip()
        key = (int(fields[2]), int(fields[3]), int(fields[4]))
        if text in _BULLET_READINGS and key not in lines:
            text = "•"
        lines.setdefault(key, []).append(_Word(text, left, left + width, height, confidence))
    return [((block, paragraph), words) for (block, paragraph, _), words in lines.items()]


def _margin_ranges(lines: list[list[_Word]]) -> list[tuple[int, int]]:
    """The x ranges of the page's margin strips (none, one or both edges)."""
    words = [word for line in lines for word in line]
    left, right = min(word.left for word in words), max(word.right for word in words)
    crossing = [0] * (right - left + 1)  # how many words cover each pixel column
    for word in words:
        for x in range(word.left - left, word.right - left):
            crossing[x] += 1
    allowed = int(len(lines) * GUTTER_MAX_CROSSING_LINES)
    gutter_width = sorted(word.height for word in words)[len(words) // 2]
    gutters, start = [], None
    for x, count in enumerate(crossing):
        if count <= allowed and start is None:
            start = x
        elif count > allowed and start is not None:
            if x - start >= gutter_width:
                gutters.append((left + start, left + x))
            start = None
    if not gutters:
        return []
    characters = sum(len(word.text) for word in words)
    margins = []
    for strip in ((left, gutters[0][0]), (gutters[-1][1], right)):
        inside = [line for line in lines if any(strip[0] <= word.left < strip[1] for word in line)]
        strip_characters = sum(len(w.text) for line in inside for w in line if strip[0] <= w.left < strip[1])
        if (
            strip_characters <= characters * MARGIN_MAX_CHARACTERS
            and strip[1] - strip[0] <= (right - left) * MARGIN_MAX_WIDTH
            and len(inside) <= (len(lines) - len(inside)) * MARGIN_MAX_LINES
        ):
            margins.append(strip)
    return margins


def _is_noise(words: list[_Word]) -> bool:
    if any(character.isalnum() for word in words for character in word.text):
        return False
    return sum(word.confidence for word in words) / len(words) < NOISE_LINE_MAX_CONFIDENCE


def text_from_tesseract_data(data: str) -> str:
    """The page's text from Tesseract's TSV: a paragraph per paragraph Tesseract found, its lines kept; a margin note
    (words in a narrow strip at the page's edge, past a gutter) as a paragraph of its own after the paragraph it sits
    beside, instead of inside that paragraph's lines where Tesseract's reading order often puts it; lines of noise
    dropped; a paragraph that stops mid-sentence joined to one that goes on in lower case (a sentence Tesseract cut
    in two at a note or a figure)."""
    lines = _tesseract_lines(data)
    if not lines:
        return ""
    margins = _margin_ranges([words for _, words in lines])

    def in_margin(word: _Word) -> bool:
        return any(start <= word.left < end for start, end in margins)

    paragraphs: list[str] = []
    notes: list[list[str]] = []  # the margin notes beside each paragraph, line by line
    previous_paragraph, previous_note_line = None, -2
    for number, (paragraph_key, words) in enumerate(lines):
        body_words = [word for word in words if not in_margin(word)]
        if body_words and not _is_noise(body_words):
            text = " ".join(word.text for word in body_words)
            if paragraphs and (
                paragraph_key == previous_paragraph or (text[0].islower() and not _SENTENCE_END.search(paragraphs[-1]))
            ):
                paragraphs[-1] += "\n" + text
            else:
                paragraphs.append(text)
                notes.append([])
            previous_paragraph = paragraph_key
        note_words = [word for word in words if in_margin(word)]
        if note_words:
            if not notes:
                paragraphs.append("")
                notes.append([])
            note = " ".join(word.text for word in note_words)
            if number == previous_note_line + 1 and notes[-1]:
                notes[-1][-1] += "\n" + note
            else:
                notes[-1].append(note)
            previous_note_line = number
    laid_out = []
    for paragraph, beside in zip(paragraphs, notes, strict=True):
        laid_out += ([paragraph] if paragraph else []) + beside
    return "\n\n".join(laid_out)
