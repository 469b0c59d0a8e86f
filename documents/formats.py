"""Which formats Silo reads, how it tells them apart, and the one dispatcher from a file to its located text units.

Binary formats are recognised by their content, never by their name (a PDF renamed .docx is still a PDF, a zip
renamed .xlsx is refused); text formats (CSV, HTML, Markdown, plain text) have no signature, so they go by extension
and must be UTF-8. Every parser is a plain function `(path, limits) -> list[TextUnit]` with no Django in it, so any of
them can run wherever the pipeline runs parsing (in-process, or in a bounded child process).
"""

from __future__ import annotations

import codecs
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from documents.parse_errors import (
    ACCEPTED_DESCRIPTION,
    ArchiveTooLarge,
    EncryptedDocument,
    NoText,
    NotUtf8,
    ParseLimits,
    TooManyRows,
    UnreadableDocument,
    UnsupportedFormat,
)
from documents.parsing import HEADER_SEARCH_BYTES, EmptyFile, TextUnit

__all__ = [
    "ArchiveTooLarge",
    "EncryptedDocument",
    "NoText",
    "NotUtf8",
    "ParseLimits",
    "TooManyRows",
    "UnreadableDocument",
    "UnsupportedFormat",
    "detect_format",
    "extract_units",
]

PDF = "pdf"
DOCX = "docx"
PPTX = "pptx"
XLSX = "xlsx"
CSV = "csv"
HTML = "html"
MARKDOWN = "markdown"
TEXT = "text"

# The stored file's extension per format (the user's own file name never becomes a path on our disk).
EXTENSIONS = {
    PDF: "pdf",
    DOCX: "docx",
    PPTX: "pptx",
    XLSX: "xlsx",
    CSV: "csv",
    HTML: "html",
    MARKDOWN: "md",
    TEXT: "txt",
}
TEXT_FORMATS_BY_EXTENSION = {".csv": CSV, ".html": HTML, ".htm": HTML, ".md": MARKDOWN, ".markdown": MARKDOWN}
TEXT_FORMATS_BY_EXTENSION[".txt"] = TEXT
# The upload form's `accept`: a hint for the file picker only; content decides.
ACCEPT_ATTRIBUTE = ".pdf,.docx,.pptx,.xlsx,.csv,.html,.htm,.md,.markdown,.txt"

# The part of an Office Open XML package that says what it is.
_OOXML_MAIN_PARTS = (("word/document.xml", DOCX), ("ppt/presentation.xml", PPTX), ("xl/workbook.xml", XLSX))
# Office encrypts OOXML by wrapping it in an OLE compound file with this stream (MS-OFFCRYPTO 2.3.4.4).
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
_OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
)


def detect_format(source: str | Path | BinaryIO, filename: str) -> str:
    """The format of a file (a path, or a seekable binary file) uploaded as `filename`. Raises an
    `UnreadableDocument` that says why a file is refused: empty, an image, an old or encrypted Office file, an
    archive, text that is not UTF-8, or an unknown extension."""
    if isinstance(source, (str, Path)):
        with Path(source).open("rb") as file:
            return detect_format(file, filename)
    source.seek(0)
    head = source.read(HEADER_SEARCH_BYTES)
    if not head:
        raise EmptyFile()
    if b"%PDF-" in head:
        return PDF
    if head.startswith(b"PK\x03\x04"):
        return _office_format(source)
    if head.startswith(_OLE_SIGNATURE):
        if _contains(source, _ENCRYPTED_PACKAGE):
            raise EncryptedDocument()
        raise UnsupportedFormat(
            "This is an old-style Office file (.doc, .xls or .ppt); save it as .docx, .xlsx or .pptx and upload it "
            "again."
        )
    if Path(filename).suffix.lower() == ".pdf":
        raise UnsupportedFormat("This file is not a PDF.")  # whatever it is, its name promised a PDF
    for signature, kind in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            raise UnsupportedFormat(
                f"This file is {kind}; Silo reads scanned pages inside PDFs: save or print the image as a PDF."
            )
    text_format = TEXT_FORMATS_BY_EXTENSION.get(Path(filename).suffix.lower())
    if text_format is None:
        raise UnsupportedFormat()
    _check_utf8(source)
    return text_format


def _office_format(source: BinaryIO) -> str:
    source.seek(0)
    try:
        with zipfile.ZipFile(source) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise UnsupportedFormat("This file looks like a ZIP archive but is damaged.") from error
    for part, file_format in _OOXML_MAIN_PARTS:
        if part in names:
            return file_format
    raise UnsupportedFormat(f"This file is a ZIP archive; Silo reads {ACCEPTED_DESCRIPTION} files.")


def _contains(source: BinaryIO, needle: bytes, block_size: int = 1 << 20) -> bool:
    source.seek(0)
    tail = b""
    while block := source.read(block_size):
        if needle in tail + block:
            return True
        tail = block[-len(needle) :]
    return False


def _check_utf8(source: BinaryIO, block_size: int = 1 << 20) -> None:
    source.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while block := source.read(block_size):
            if b"\x00" in block:
                raise NotUtf8("This file holds binary data, not text; Silo cannot read it.")
            decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise NotUtf8() from error


def check_archive(path: str | Path | BinaryIO, limits: ParseLimits) -> None:
    """Refuses a zip bomb before any parser unpacks it: the sizes the archive declares, checked against limits (the
    parsers' reads are bounded by the same declared sizes, which zipfile enforces)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UnsupportedFormat("This Office file is damaged; save it again from the program that made it.") from error
    unpacked = sum(member.file_size for member in members)
    packed = max(1, sum(member.compress_size for member in members))
    if unpacked > limits.max_unpacked_bytes or (
        unpacked > 1024 * 1024 and unpacked / packed > limits.max_compression_ratio
    ):
        raise ArchiveTooLarge(
            f"This file unpacks to {unpacked / 1_000_000:,.0f} MB from {packed / 1_000_000:,.1f} MB, which no "
            "ordinary document does, so Silo does not open it. Save it again from the program that made it."
        )
    if len(members) > 10_000:
        raise ArchiveTooLarge(f"This file holds {len(members):,} parts, which no ordinary document does.")


Parser = Callable[[Path, ParseLimits], list[TextUnit]]


def _parsers() -> dict[str, Parser]:
    # Imported here: each converter library loads only when its format is read.
    from documents import markup, office

    return {
        DOCX: office.docx_units,
        PPTX: office.pptx_units,
        XLSX: office.xlsx_units,
        CSV: office.csv_units,
        HTML: markup.html_units,
        MARKDOWN: markup.markdown_units,
        TEXT: markup.text_units,
    }


def extract_units(path: str | Path, file_format: str, limits: ParseLimits | None = None) -> list[TextUnit]:
    """The located text units of a non-PDF document, in reading order. Raises an `UnreadableDocument` with the
    reason (NoText when nothing readable is left). PDFs go through `parsing.extract_pages` (and OCR)."""
    limits = limits or ParseLimits()
    path = Path(path)
    parser = _parsers().get(file_format)
    if parser is None:
        raise UnsupportedFormat()
    if file_format in (DOCX, PPTX, XLSX):
        check_archive(path, limits)
    units = [unit for unit in parser(path, limits) if unit.text.strip()]
    if not units:
        raise NoText()
    return units
