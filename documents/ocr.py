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

# A block at most this share of the widest block's width, mostly beside the body's columns, is a margin note.
MARGIN_NOTE_MAX_WIDTH = 0.5
# A line with no letter or digit and words Tesseract is this unsure of is noise (a smudge, a rule, a bullet's ghost).
NOISE_LINE_MAX_CONFIDENCE = 50.0
_SENTENCE_END = re.compile(r"[.!?:;][)\]\"'’”]*$")


@dataclass
class _Line:
    words: list[str]
    confidences: list[float]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def is_noise(self) -> bool:
        if any(character.isalnum() for character in self.text):
            return False
        return sum(self.confidences) / len(self.confidences) < NOISE_LINE_MAX_CONFIDENCE


@dataclass
class _Block:
    paragraphs: list[list[_Line]]
    paragraph_numbers: list[int]
    left: int
    right: int

    @property
    def width(self) -> int:
        return self.right - self.left


def _tesseract_blocks(data: str) -> list[_Block]:
    """Tesseract's words grouped as it found them: blocks of paragraphs of lines, in its reading order."""
    blocks: dict[int, _Block] = {}
    lines: dict[tuple[int, int, int], _Line] = {}
    for row in data.splitlines()[1:]:
        fields = row.split("\t")
        if len(fields) < 12 or fields[0] != "5" or not fields[11].strip():
            continue
        block_number, paragraph_number, line_number = int(fields[2]), int(fields[3]), int(fields[4])
        left, width = int(fields[6]), int(fields[8])
        block = blocks.get(block_number)
        if block is None:
            block = blocks[block_number] = _Block([], [], left, left + width)
        block.left, block.right = min(block.left, left), max(block.right, left + width)
        line = lines.get((block_number, paragraph_number, line_number))
        if line is None:
            line = lines[(block_number, paragraph_number, line_number)] = _Line([], [])
            if paragraph_number not in block.paragraph_numbers:
                block.paragraph_numbers.append(paragraph_number)
                block.paragraphs.append([])
            block.paragraphs[-1].append(line)
        line.words.append(fields[11].strip())
        line.confidences.append(float(fields[10]))
    return list(blocks.values())


def _is_margin_note(block: _Block, body: list[_Block], widest: int) -> bool:
    if block.width > widest * MARGIN_NOTE_MAX_WIDTH:
        return False
    overlap = max((min(block.right, other.right) - max(block.left, other.left) for other in body), default=0)
    return overlap < block.width / 2


def text_from_tesseract_data(data: str) -> str:
    """The page's text from Tesseract's TSV: a paragraph per paragraph Tesseract found, its lines kept; margin notes
    (narrow blocks beside the body's columns) after the body, each a paragraph of its own, instead of wherever
    Tesseract's reading order put them (often inside a body sentence); lines of noise dropped; a paragraph that stops
    mid-sentence and one that goes on in lower case (a sentence Tesseract cut in two at a note or a column break)
    joined again."""
    blocks = _tesseract_blocks(data)
    if not blocks:
        return ""
    widest = max(block.width for block in blocks)
    body = [block for block in blocks if block.width > widest * MARGIN_NOTE_MAX_WIDTH]
    notes = [block for block in blocks if block not in body and _is_margin_note(block, body, widest)]
    paragraphs: list[str] = []
    for block in [block for block in blocks if block not in notes] + notes:
        for paragraph in block.paragraphs:
            text = "\n".join(line.text for line in paragraph if not line.is_noise())
            if not text:
                continue
            if paragraphs and block not in notes and text[0].islower() and not _SENTENCE_END.search(paragraphs[-1]):
                paragraphs[-1] += "\n" + text
            else:
                paragraphs.append(text)
    return "\n\n".join(paragraphs)
