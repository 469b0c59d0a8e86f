"""Where uploaded files live: the local media folder (the embedded default) or S3-compatible object storage with a
bucket per region (`SILO_S3_BUCKETS`), so web and worker processes on different machines see the same files.

A file's name carries its workspace's region (`documents/<region>/workspace-<id>/<random>.pdf`); the regional storage sends
each name to that region's bucket. Files are never public: the app streams them to workspace members
(`documents.views.file`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO, Any

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import Storage
from django.utils.deconstruct import deconstructible

UPLOAD_ROOT = "documents"


def upload_name(region: str, workspace_id: int, random_part: str, extension: str = "pdf") -> str:
    return f"{UPLOAD_ROOT}/{region}/workspace-{workspace_id}/{random_part}.{extension}"


def region_of(name: str) -> str | None:
    """The region a stored name records (names from before regions were recorded have none)."""
    parts = name.split("/")
    return parts[1] if len(parts) == 4 and parts[0] == UPLOAD_ROOT else None


def with_region(name: str, region: str) -> str:
    """The same file's name in another region."""
    parts = name.split("/")
    return "/".join([UPLOAD_ROOT, region, *parts[-2:]])


@deconstructible
class RegionalS3Storage(Storage):
    """One S3 bucket per region (settings.S3_BUCKETS); a name without a known region goes to the default region's."""

    def __init__(self) -> None:
        self._storages: dict[str, Any] = {}

    def _bucket_storage(self, name: str) -> Any:
        from storages.backends.s3 import S3Storage

        region = region_of(name)
        if region not in settings.S3_BUCKETS:
            region = settings.TENANT_DEFAULT_REGION if settings.TENANT_DEFAULT_REGION in settings.S3_BUCKETS else None
        if region is None:
            region = next(iter(settings.S3_BUCKETS))
        if region not in self._storages:
            self._storages[region] = S3Storage(
                bucket_name=settings.S3_BUCKETS[region],
                endpoint_url=settings.S3_ENDPOINT_URL or None,
                access_key=settings.S3_ACCESS_KEY_ID or None,
                secret_key=settings.S3_SECRET_ACCESS_KEY or None,
                region_name=settings.S3_REGION_NAME or None,
                default_acl=None,
                file_overwrite=False,
                querystring_auth=True,
                querystring_expire=settings.S3_SIGNED_URL_SECONDS,
            )
        return self._storages[region]

    def _open(self, name: str, mode: str = "rb") -> File:
        return self._bucket_storage(name)._open(name, mode)

    def _save(self, name: str, content: IO[Any]) -> str:
        return self._bucket_storage(name)._save(name, content)

    def delete(self, name: str) -> None:
        self._bucket_storage(name).delete(name)

    def exists(self, name: str) -> bool:
        return self._bucket_storage(name).exists(name)

    def size(self, name: str) -> int:
        return self._bucket_storage(name).size(name)

    def url(self, name: str | None) -> str:
        """A signed URL that expires after S3_SIGNED_URL_SECONDS (for operators; the app streams files itself)."""
        return self._bucket_storage(name or "").url(name)

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        return self._bucket_storage(name).get_available_name(name, max_length)


@contextlib.contextmanager
def local_path(stored: Any) -> Iterator[str]:
    """A path on this machine for a stored file: its own on the local folder, else a temporary copy (a worker on
    another machine than the web process that took the upload)."""
    try:
        path = stored.path
    except NotImplementedError:
        path = None
    if path is not None:
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=PurePosixPath(stored.name).suffix) as copy, stored.open("rb") as source:
        shutil.copyfileobj(source, copy)
        copy.flush()
        yield copy.name
