"""What a format's parser may take on (ParseLimits) and the errors a user can cause with a file beyond PDFs'
own (`parsing`), apart from the parsers, so that the dispatcher and every parser can import them."""

from __future__ import annotations

from dataclasses import dataclass

from documents.parsing import UnreadablePdf

# The base of every error a user can cause with a file; `str(error)` is the message to show.
UnreadableDocument = UnreadablePdf
ACCEPTED_DESCRIPTION = "PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx), CSV, HTML, Markdown or plain text (.txt)"


class UnsupportedFormat(UnreadableDocument):
    default_message = f"Silo cannot read this kind of file; it reads {ACCEPTED_DESCRIPTION} files."


class EncryptedDocument(UnreadableDocument):
    default_message = "This document is password protected; remove the password and upload it again."


class NotUtf8(UnreadableDocument):
    default_message = "This file is not UTF-8 text; save it as UTF-8 (e.g. “CSV UTF-8” in Excel) and upload it again."


class ArchiveTooLarge(UnreadableDocument):
    default_message = "This file unpacks to far more data than its size suggests, so Silo does not open it."


class TooManyRows(UnreadableDocument):
    default_message = "This spreadsheet has too many rows."


class NoText(UnreadableDocument):
    default_message = "This document has no text Silo could read."


@dataclass(frozen=True)
class ParseLimits:
    """What a parser may take on; the pipeline fills it from settings."""

    max_rows: int = 100_000  # spreadsheet rows (all sheets together)
    max_unpacked_bytes: int = 200 * 1024 * 1024  # an Office file's parts, unpacked
    max_compression_ratio: int = 100  # of an Office file's unpacked parts to its packed size, above 1 MB unpacked
