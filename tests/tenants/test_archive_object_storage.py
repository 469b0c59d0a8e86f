"""Archives on S3-compatible object storage when the uploads are there (moto in server mode, over a socket, as in
tests/documents/test_object_storage.py): written encrypted under their own prefix, listed, restored from, downloaded
decrypted as they stream, pruned, and erased with the workspace; nothing lands in the local archive folder."""

from __future__ import annotations

import io
import tarfile
from datetime import timedelta

import pytest
from django.utils import timezone

from tenants import archives
from tenants import services as tenant_services
from tenants.models import TenantArchive
from tests.helpers import s3_client
from tests.tenants.test_archives import ORCHARD, _erase_all, _stored_files, make_tenant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

UPLOADS = {"local": "silo-uploads-local"}
ARCHIVES = "silo-archives"


@pytest.fixture
def s3(s3_server, settings, tmp_path):
    client = s3_client(s3_server)
    buckets = [*UPLOADS.values(), ARCHIVES]
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ARCHIVE_ROOT = tmp_path / "archives"
    settings.OPENAI_API_KEY = ""
    settings.S3_BUCKETS = UPLOADS
    settings.S3_ENDPOINT_URL = s3_server
    settings.S3_ACCESS_KEY_ID, settings.S3_SECRET_ACCESS_KEY, settings.S3_REGION_NAME = (
        "silo",
        "silo-secret",
        "us-east-1",
    )
    settings.TENANT_DEFAULT_REGION = "local"
    settings.ARCHIVE_S3_BUCKET = ARCHIVES
    settings.ARCHIVE_S3_PREFIX = "backups"
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "documents.storage.RegionalS3Storage"}}
    yield client
    for bucket in buckets:
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)


def _keys(client, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.fixture
def tenant(owner, s3):
    made = make_tenant(owner)
    yield made
    _erase_all()


def test_archives_live_encrypted_on_object_storage_and_restore_download_prune_and_erase_from_there(
    tenant, s3, settings
):
    workspace = tenant.workspace
    before = tenant.snapshot()
    assert _keys(s3, UPLOADS["local"])  # the uploads are on S3 too

    archive = archives.archive_create(workspace)

    key = f"backups/{archive.file_name}"
    assert _keys(s3, ARCHIVES) == [key] and key.startswith(f"backups/workspace-{workspace.id}/")
    assert not settings.ARCHIVE_ROOT.exists() or _stored_files(settings.ARCHIVE_ROOT) == []
    assert archives.archive_location(archive) == f"s3://{ARCHIVES}/{key}"
    stored = s3.get_object(Bucket=ARCHIVES, Key=key)["Body"].read()
    assert stored.startswith(b"SILOARC1") and b"lighthouse" not in stored and len(stored) == archive.size_bytes
    assert [point.id for point in archives.restore_points(workspace)] == [archive.id]

    # The owner's download streams from the bucket, decrypted.
    plain = b"".join(archives.archive_download_chunks(archive))
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        assert {"manifest.json", "database.dump", "main.json"} <= set(tar.getnames())

    # A restore reads it back from the bucket: exactly the earlier state, files included.
    tenant.upload("orchard.pdf", ORCHARD)
    archives.workspace_restore(workspace, archive=archive)
    assert tenant.snapshot() == before

    # Retention removes the object with the row; erasure removes every one of the workspace's.
    settings.TENANT_BACKUP_RETENTION_DAYS = 7
    newer = archives.archive_create(workspace)
    TenantArchive.objects.filter(id=archive.id).update(created_at=timezone.now() - timedelta(days=9))
    assert archives.archives_prune(workspace) == 1
    assert _keys(s3, ARCHIVES) == [f"backups/{newer.file_name}"]
    s3.put_object(Bucket=ARCHIVES, Key=f"backups/workspace-{workspace.id}/stray.silo.partial", Body=b"x")

    tenant_services.tenant_erase(tenant.user.id)

    assert _keys(s3, ARCHIVES) == []
    assert TenantArchive.objects.count() == 0
