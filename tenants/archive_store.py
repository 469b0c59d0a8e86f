"""Where archive files live: the local ARCHIVE_ROOT folder, or S3-compatible object storage when the app's uploads are
there (SILO_S3_BUCKETS), so every web and worker machine sees the same archives. On S3 they go to
ARCHIVE_S3_BUCKET (default: the default region's uploads bucket) under ARCHIVE_S3_PREFIX, apart from the uploads.

An archive's name is `workspace-<id>/<created>-<archive id>.silo` in either; the file is the encrypted archive
(tenants.archive_files) whatever the storage, so the bucket never holds a tenant's data in the clear.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from django.conf import settings


def on_object_storage() -> bool:
    return bool(settings.S3_BUCKETS)


def _bucket() -> str:
    if settings.ARCHIVE_S3_BUCKET:
        return settings.ARCHIVE_S3_BUCKET
    buckets = settings.S3_BUCKETS
    return buckets.get(settings.TENANT_DEFAULT_REGION) or next(iter(buckets.values()))


def _key(name: str) -> str:
    return f"{settings.ARCHIVE_S3_PREFIX.strip('/')}/{name}"


def _client() -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.S3_ENDPOINT_URL or None,
        aws_access_key_id=settings.S3_ACCESS_KEY_ID or None,
        aws_secret_access_key=settings.S3_SECRET_ACCESS_KEY or None,
        region_name=settings.S3_REGION_NAME or None,
    )


def local_root() -> Path:
    return Path(settings.ARCHIVE_ROOT)


def location(name: str) -> str:
    """Where the archive is, for people: a path, or s3://bucket/key."""
    return f"s3://{_bucket()}/{_key(name)}" if on_object_storage() else str(local_root() / name)


@contextlib.contextmanager
def writing(name: str) -> Iterator[Path]:
    """A local path to write the archive to; once the block ends without error it is stored under `name` (on S3, it
    is uploaded and the local copy goes)."""
    if not on_object_storage():
        yield local_root() / name
        return
    folder = Path(tempfile.mkdtemp(prefix="silo-archive-upload-"))
    try:
        path = folder / Path(name).name
        yield path
        _client().upload_file(str(path), _bucket(), _key(name))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def local_copy(name: str) -> Iterator[Path]:
    """A path on this machine holding the stored archive (on S3, a private temporary copy that goes afterwards)."""
    if not on_object_storage():
        yield local_root() / name
        return
    folder = Path(tempfile.mkdtemp(prefix="silo-archive-download-"))
    try:
        path = folder / Path(name).name
        try:
            _client().download_file(_bucket(), _key(name), str(path))
        except Exception as error:  # botocore's ClientError for a missing key: the archive is simply not there
            if "404" not in str(error) and "NoSuchKey" not in str(error):
                raise
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def open_stream(name: str) -> IO[bytes]:
    """The stored archive as a stream read as it arrives (a download never holds it whole)."""
    if not on_object_storage():
        return open(local_root() / name, "rb")
    return _client().get_object(Bucket=_bucket(), Key=_key(name))["Body"]


def exists(name: str) -> bool:
    if not on_object_storage():
        return (local_root() / name).is_file()
    listed = _client().list_objects_v2(Bucket=_bucket(), Prefix=_key(name))
    return any(item["Key"] == _key(name) for item in listed.get("Contents", []))


def delete(name: str) -> None:
    if not on_object_storage():
        path = local_root() / name
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".partial").unlink(missing_ok=True)
        return
    _client().delete_object(Bucket=_bucket(), Key=_key(name))


def erase_workspace(workspace_id: int) -> None:
    """Every stored file of the workspace's archives, those no catalogue row names included."""
    folder = f"workspace-{workspace_id}/"
    if not on_object_storage():
        shutil.rmtree(local_root() / folder, ignore_errors=True)
        return
    client = _client()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=_bucket(), Prefix=_key(folder)):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=_bucket(), Key=item["Key"])
