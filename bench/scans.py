"""Scans and office formats: OCR pages/s and character accuracy, recall@5 with the eval PDFs ingested as scans, and
office ingest throughput beside PDF's.

OCR: pages of the eval PDFs (quick: 6, full: 24, spread over the four files) are rendered by PDFium at 150 dpi in
grayscale and saved as image-only PDFs (a scan of the page); the app's OCR path (`documents.ocr.ocr_pages`: render at
OCR_DPI, Tesseract, one thread) reads each, on one worker. Character accuracy = 1 - edit distance / length, over
the page's letters and digits, against the original PDF's own text layer (PDFium); the same over the whole text
(spaces and punctuation too) is reported beside it: dot leaders in tables of contents make most of its difference.

Recall: the eval PDFs (quick: clsguide.pdf and its questions only) ingested twice through the real pipeline, once as
they are and once with every page scanned as above (so every page goes through OCR), each into a tenant of its own;
recall@5 (hybrid search, the dev set's page rule, as section `quality`) on both, in the same run. Tesseract's raw
output for each scanned page image is cached between runs (OCR_CACHE_DIR, keyed by the image and Tesseract's version
and settings; BENCH_OCR_CACHE=0 turns it off): the full run's 147 pages take 15-30 minutes to OCR on this machine,
and a cached page is what Tesseract would read again, while the app lays that output out anew on every run. The
scan ingest's pages/s is reported only when no page came from the cache.

Office: the text of the eval PDFs written as DOCX (a heading per page), PPTX (a slide per page), Markdown, HTML, and a
spreadsheet (XLSX and CSV, 5,000 rows), ingested through the same pipeline as the PDFs; characters per second end to
end, and the parse stage alone.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

from bench.framework import Target

EVAL_DIR = Path(os.environ.get("SILO_EVAL_DIR", "/work/shared/eval"))
# Tesseract's raw output per page image, kept between runs (the full recall run OCRs 147 pages: 10-20 minutes).
# Keyed by the rendered image and Tesseract's version, language and page segmentation, so a cached page is exactly
# what Tesseract would read again; the app's own layout of that output runs every time. BENCH_OCR_CACHE=0: no cache.
OCR_CACHE_DIR = Path(os.environ.get("SILO_DATA_DIR", ".data/bench")) / "ocr-cache"
SCAN_DPI = 150
OCR_SAMPLE_PAGES, QUICK_OCR_SAMPLE_PAGES = 24, 6
QUICK_FILES = ("clsguide.pdf",)
SPREADSHEET_ROWS = 5_000

TARGETS = [
    Target("ocr_character_accuracy", at_least=0.95, label="OCR character accuracy (letters and digits)"),
    Target("recall_at_5_scan_gap", at_most=0.05, label="recall@5 text - recall@5 scanned"),
]


def run(quick: bool) -> dict:
    result: dict = {"scan_dpi": SCAN_DPI}
    result.update(_ocr_accuracy(quick))
    result.update(_recall_as_scans(quick))
    result.update(_office_throughput(quick))
    return result


# -- the OCR cache ---------------------------------------------------------------------------------------------------


def _ocr_cache_enabled() -> bool:
    return os.environ.get("BENCH_OCR_CACHE", "1").strip().lower() not in {"0", "false", "no", "off"}


def ocr_cache_key(image, language: str, page_segmentation: int) -> str:
    import hashlib

    import pytesseract

    digest = hashlib.sha256(f"{pytesseract.get_tesseract_version()}|{language}|{page_segmentation}|".encode())
    digest.update(f"{image.mode}|{image.size}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class _CachedTesseract:
    """Stands in for `documents.ocr.tesseract_data` while the recall section runs: a page read before is taken from
    the cache, any other is read by Tesseract and stored. Counts both."""

    def __init__(self, read):
        self.read, self.hits, self.misses = read, 0, 0

    def __call__(self, image, language: str, page_segmentation: int = 3) -> str:
        path = OCR_CACHE_DIR / f"{ocr_cache_key(image, language, page_segmentation)}.tsv"
        if path.exists():
            self.hits += 1
            return path.read_text()
        self.misses += 1
        data = self.read(image, language, page_segmentation)
        if data:
            OCR_CACHE_DIR.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".partial")
            temporary.write_text(data)
            temporary.replace(path)
        return data


# -- scans -----------------------------------------------------------------------------------------------------------


def _scan(pdf_source, indexes: list[int]) -> bytes:
    """The pages rendered at SCAN_DPI in grayscale, as an image-only PDF."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf_source)
    images = [document[index].render(scale=SCAN_DPI / 72, grayscale=True).to_pil() for index in indexes]
    document.close()
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", resolution=SCAN_DPI, save_all=True, append_images=images[1:])
    return buffer.getvalue()


def _letters(text: str) -> str:
    return "".join(character for character in text if character.isalnum())


def _accuracy(read: str, truth: str) -> tuple[int, int]:
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(read, truth), len(truth)


def _ocr_accuracy(quick: bool) -> dict:
    import pypdfium2 as pdfium
    from django.conf import settings

    from bench.common import progress
    from documents.ocr import OcrOptions, ocr_pages
    from documents.parsing import normalise_text

    files = sorted((EVAL_DIR / "pdfs").glob("*.pdf"))
    wanted = QUICK_OCR_SAMPLE_PAGES if quick else OCR_SAMPLE_PAGES
    per_file = wanted // len(files)
    options = OcrOptions(
        dpi=settings.OCR_DPI, language=settings.OCR_LANGUAGE, page_segmentation=settings.OCR_PAGE_SEGMENTATION
    )
    seconds, letter_edits, letters, text_edits, characters, pages = 0.0, 0, 0, 0, 0, 0
    worst: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        for path in files:
            document = pdfium.PdfDocument(str(path))
            count = len(document)
            truths = {}
            # Pages spread over the file, the title page left out (a few words in display fonts say little).
            indexes = [1 + (count - 1) * step // (per_file + 1) for step in range(1, per_file + 1)]
            for index in indexes:
                text_page = document[index].get_textpage()
                truths[index] = normalise_text(text_page.get_text_range())
            document.close()
            for index in indexes:
                scan_path = Path(folder) / f"{path.stem}-{index + 1}.pdf"
                scan_path.write_bytes(_scan(str(path), [index]))
                started = time.perf_counter()
                read = ocr_pages(scan_path, [1], options)[1]
                seconds += time.perf_counter() - started
                pages += 1
                edits, length = _accuracy(_letters(read), _letters(truths[index]))
                letter_edits, letters = letter_edits + edits, letters + length
                whole_edits, whole_length = _accuracy(" ".join(read.split()), " ".join(truths[index].split()))
                text_edits, characters = text_edits + whole_edits, characters + whole_length
                worst.append((1 - edits / max(1, length), f"{path.name} p.{index + 1}"))
                progress(f"ocr: {path.name} p.{index + 1}: accuracy {1 - edits / max(1, length):.3f}")
    worst.sort()
    return {
        "ocr_engine": "tesseract",
        "ocr_render_dpi": settings.OCR_DPI,
        "ocr_page_segmentation": settings.OCR_PAGE_SEGMENTATION,
        "ocr_pages_measured": pages,
        "ocr_pages_per_second": round(pages / seconds, 3),
        "ocr_seconds_per_page": round(seconds / pages, 2),
        "ocr_character_accuracy": round(1 - letter_edits / letters, 4),
        "ocr_character_accuracy_whole_text": round(1 - text_edits / characters, 4),
        "ocr_lowest_pages": [f"{name}: {accuracy:.3f}" for accuracy, name in worst[:3]],
    }


def _recall_as_scans(quick: bool) -> dict:
    import pypdfium2 as pdfium
    from django.core.files.base import ContentFile

    from bench.common import create_tenants, progress, remove_tenants
    from bench.quality import _first_hit_rank
    from chat.services import chunks_retrieve
    from documents import services as document_services
    from documents.models import Document
    from tenants import services as tenant_services

    files = [path for path in sorted((EVAL_DIR / "pdfs").glob("*.pdf")) if not quick or path.name in QUICK_FILES]
    questions = [q for q in json.loads((EVAL_DIR / "qa.json").read_text()) if q["file"] in {p.name for p in files}]
    from documents import ocr

    prefix = "bench-scans"
    remove_tenants(prefix)
    text_row, scan_row = create_tenants(prefix, 2)
    result: dict = {"recall_questions": len(questions), "recall_files": [path.name for path in files]}
    tesseract_data = ocr.tesseract_data
    cache = _CachedTesseract(tesseract_data)
    if _ocr_cache_enabled():
        ocr.tesseract_data = cache
    try:
        recalls = {}
        for label, row in (("text", text_row), ("scan", scan_row)):
            tenant_services.vector_database_provision(row.id)
            filenames = {}
            started = time.perf_counter()
            scanned_pages = 0
            for path in files:
                content = path.read_bytes()
                if label == "scan":
                    count = len(pdfium.PdfDocument(content))
                    content = _scan(content, list(range(count)))
                    scanned_pages += count
                document = document_services.document_upload(
                    row.workspace.owner, ContentFile(content, name=path.name), enqueue=False, workspace=row.workspace
                )
                document_services.document_ingest(document.id)
                document.refresh_from_db()
                if document.status != Document.Status.READY:
                    raise RuntimeError(f"{path.name} ({label}) ended {document.status}: {document.error_message}")
                filenames[document.id] = path.name
            elapsed = time.perf_counter() - started
            progress(f"recall: ingested {len(files)} PDFs as {label} in {elapsed:.1f}s")
            result[f"ingest_seconds_{label}"] = round(elapsed, 1)
            if label == "scan":
                result["scan_pages_ocr_cached"] = cache.hits
                if not cache.hits:  # a figure for Tesseract's speed only when Tesseract read every page
                    result["scan_ingest_pages_per_second"] = round(scanned_pages / elapsed, 3)
            hits = 0
            for question in questions:
                citations = chunks_retrieve(
                    row.workspace.owner, question["question"], k=5, hybrid=True, workspace=row.workspace
                )
                hits += _first_hit_rank(citations, question, filenames) is not None
            recalls[label] = hits / len(questions)
            result[f"recall_at_5_{label}"] = round(recalls[label], 3)
        result["recall_at_5_scan_gap"] = round(recalls["text"] - recalls["scan"], 3)
        return result
    finally:
        ocr.tesseract_data = tesseract_data
        for row in (text_row, scan_row):
            document_services.documents_erase_for_workspace(row.workspace)
        remove_tenants(prefix)


# -- office formats --------------------------------------------------------------------------------------------------


def _eval_pages(quick: bool) -> list[tuple[str, list[str]]]:
    import pypdfium2 as pdfium

    from documents.parsing import normalise_text

    pages = []
    for path in sorted((EVAL_DIR / "pdfs").glob("*.pdf")):
        if quick and path.name not in QUICK_FILES:
            continue
        document = pdfium.PdfDocument(str(path))
        texts = [normalise_text(document[index].get_textpage().get_text_range()) for index in range(len(document))]
        document.close()
        pages.append((path.stem, texts))
    return pages


def _office_files(quick: bool) -> dict[str, tuple[str, bytes]]:
    """{label: (file name, bytes)}: the same text in each format (the spreadsheets: rows of figures and words)."""
    import html

    import docx
    import openpyxl
    import pptx
    from pptx.util import Inches

    sources = _eval_pages(quick)
    word = docx.Document()
    deck = pptx.Presentation()
    markdown, markup = [], ["<html><body>"]
    for stem, texts in sources:
        for number, text in enumerate(texts, start=1):
            word.add_heading(f"{stem} page {number}", level=1)
            slide = deck.slides.add_slide(deck.slide_layouts[5])
            slide.shapes.title.text = f"{stem} page {number}"
            box = slide.shapes.add_textbox(Inches(0.5), Inches(1.5), Inches(9), Inches(5)).text_frame
            box.text = text
            markdown.append(f"# {stem} page {number}\n")
            markup.append(f"<h1>{html.escape(stem)} page {number}</h1>")
            for paragraph in text.split("\n\n"):
                word.add_paragraph(paragraph)
                markdown.append(paragraph + "\n")
                markup.append(f"<p>{html.escape(paragraph)}</p>")
    markup.append("</body></html>")
    files: dict[str, tuple[str, bytes]] = {}
    for label, name, document in (("docx", "eval.docx", word), ("pptx", "eval.pptx", deck)):
        buffer = io.BytesIO()
        document.save(buffer)
        files[label] = (name, buffer.getvalue())
    files["markdown"] = ("eval.md", "\n".join(markdown).encode())
    files["html"] = ("eval.html", "\n".join(markup).encode())
    rows = [["Order", "Region", "Product", "Quantity", "Price"]] + [
        [number, ("North", "South", "East", "West")[number % 4], f"Item {number % 97}", number % 13, number * 0.25]
        for number in range(1, (SPREADSHEET_ROWS // 5 if quick else SPREADSHEET_ROWS) + 1)
    ]
    workbook = openpyxl.Workbook()
    for row in rows:
        workbook.active.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    files["xlsx"] = ("orders.xlsx", buffer.getvalue())
    files["csv"] = ("orders.csv", "\n".join(",".join(str(cell) for cell in row) for row in rows).encode())
    return files


def _office_throughput(quick: bool) -> dict:
    from django.core.files.base import ContentFile

    from bench.common import create_tenants, progress, remove_tenants
    from documents import services as document_services
    from documents.models import Document

    prefix = "bench-office"
    remove_tenants(prefix)
    (row,) = create_tenants(prefix, 1)
    result: dict = {}
    try:
        from tenants import services as tenant_services

        tenant_services.vector_database_provision(row.id)
        inputs = [
            (f"pdf_{path.stem}", path.name, path.read_bytes()) for path in sorted((EVAL_DIR / "pdfs").glob("*.pdf"))
        ]
        if quick:
            inputs = [entry for entry in inputs if entry[1] in QUICK_FILES]
        inputs += [(label, name, content) for label, (name, content) in _office_files(quick).items()]
        totals: dict[str, list[float]] = {}
        for label, name, content in inputs:
            document = document_services.document_upload(
                row.workspace.owner, ContentFile(content, name=name), enqueue=False, workspace=row.workspace
            )
            started = time.perf_counter()
            report = document_services.document_ingest(document.id)
            elapsed = time.perf_counter() - started
            document.refresh_from_db()
            if document.status != Document.Status.READY:
                raise RuntimeError(f"{name} ended {document.status}: {document.error_message}")
            characters = sum(len(text) for text in _chunk_texts(row, document.id))
            group = "pdf" if label.startswith("pdf_") else label
            total = totals.setdefault(group, [0.0, 0.0, 0.0, 0.0])
            total[0] += elapsed
            total[1] += report.timings.parse
            total[2] += characters
            total[3] += len(content)
            progress(
                f"office: {name}: {elapsed:.1f}s ({report.timings.parse:.2f}s parsing), {document.chunk_count} chunks"
            )
        for group, (seconds, parse_seconds, characters, size) in totals.items():
            result[f"ingest_kchars_per_second_{group}"] = round(characters / seconds / 1000, 1)
            result[f"parse_mb_per_second_{group}"] = round(size / max(parse_seconds, 1e-6) / 1_000_000, 2)
        return result
    finally:
        document_services.documents_erase_for_workspace(row.workspace)
        remove_tenants(prefix)


def _chunk_texts(row, document_id: int) -> list[str]:
    from tenants.services import tenant_target
    from vectordb.chunks import chunks_export
    from vectordb.connections import get_registry

    with get_registry().connection(tenant_target(row.workspace)) as connection:
        return [chunk["content"] for chunk in chunks_export(connection, [document_id])]


if __name__ == "__main__":
    from bench.framework import setup_django

    setup_django()
    print(json.dumps(run(quick=os.environ.get("BENCH_QUICK", "").strip().lower() in {"1", "true", "yes", "on"})))
