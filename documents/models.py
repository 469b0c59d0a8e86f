from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from documents.formats import EXTENSIONS


def document_upload_path(document: Document, filename: str) -> str:
    # Random names: the user's file name never becomes a path on our disk. The region sends the file to the bucket
    # of its workspace's region when uploads live on object storage (documents/storage.py).
    from documents.storage import upload_name
    from tenants.selectors import workspace_region

    return upload_name(
        workspace_region(document.workspace_id),
        document.workspace_id,
        uuid.uuid4().hex,
        EXTENSIONS.get(document.file_format, "bin"),
    )


class Document(models.Model):
    """A document uploaded to a workspace (PDF, office file or text). Its chunks and embeddings live in the
    workspace's own database."""

    class Format(models.TextChoices):
        PDF = "pdf", "PDF"
        DOCX = "docx", "Word"
        PPTX = "pptx", "PowerPoint"
        XLSX = "xlsx", "Excel"
        CSV = "csv", "CSV"
        HTML = "html", "HTML"
        MARKDOWN = "markdown", "Markdown"
        TEXT = "text", "Text"

    class Status(models.TextChoices):
        QUEUED = "queued"
        PARSING = "parsing"
        EMBEDDING = "embedding"
        READY = "ready"
        FAILED = "failed"

    workspace = models.ForeignKey("tenants.Workspace", on_delete=models.CASCADE, related_name="documents")
    # Who uploaded it; the document stays with the workspace when that person leaves or deletes their account. The
    # column keeps the name it had when documents belonged to a person (renaming it would break the running app).
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="uploaded_documents",
        db_column="owner_id",
    )
    title = models.CharField(max_length=255)
    file = models.FileField(upload_to=document_upload_path, max_length=255)
    original_filename = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    # Told by content (binary formats) or extension (text formats) at upload: see documents.formats.
    file_format = models.CharField(max_length=20, choices=Format.choices, default=Format.PDF)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)  # 0..1 within the whole pipeline
    page_count = models.PositiveIntegerField(null=True, blank=True)
    # Pages counted against the workspace's monthly allowance, reserved at upload (tenants.usage): counted once.
    pages_metered = models.PositiveIntegerField(default=0)
    chunk_count = models.PositiveIntegerField(default=0)
    # While embedding: how many chunks this run embeds, and how many it has embedded ("embedding 120/300 chunks").
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    # While reading scanned pages: how many this run OCRs, and how many it has read ("reading scans 12/300 pages").
    ocr_pages_total = models.PositiveIntegerField(default=0)
    ocr_pages_done = models.PositiveIntegerField(default=0)
    error_message = models.TextField(blank=True)
    embedding_model = models.CharField(max_length=100, blank=True)
    # Runs of the pipeline started since the owner last queued it (upload, re-ingest, re-embed). A run that dies
    # never reports back; after INGEST_MAX_ATTEMPTS of them the document fails instead of dying again.
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "documents"
        ordering = ["-created_at"]
        indexes = [models.Index(name="documents_workspace_created", fields=["workspace", "-created_at"])]

    def __str__(self) -> str:
        return self.title

    @property
    def is_busy(self) -> bool:
        return self.status in {self.Status.QUEUED, self.Status.PARSING, self.Status.EMBEDDING}
