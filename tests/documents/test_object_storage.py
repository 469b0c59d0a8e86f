"""Uploaded files on S3-compatible object storage, a bucket per region, against a real S3 protocol server (moto in
server mode, over a socket): uploads land in the bucket of their workspace's region, members get them streamed by the
app, the worker ingests from there, and moving a workspace's files moves them between buckets."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from documents import services
from documents.models import Document
from documents.storage import local_path
from tenants.models import Membership, VectorDatabase, Workspace
from tests.helpers import personal_workspace, s3_client
from tests.pdf_factory import text_pdf

BUCKETS = {"local": "silo-uploads-local", "eu": "silo-uploads-eu"}


@pytest.fixture
def s3(s3_server, settings, media_root):
    client = s3_client(s3_server)
    for bucket in BUCKETS.values():
        client.create_bucket(Bucket=bucket)
    settings.S3_BUCKETS = BUCKETS
    settings.S3_ENDPOINT_URL = s3_server
    settings.S3_ACCESS_KEY_ID, settings.S3_SECRET_ACCESS_KEY, settings.S3_REGION_NAME = (
        "silo",
        "silo-secret",
        "us-east-1",
    )
    settings.TENANT_DEFAULT_REGION = "local"
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "documents.storage.RegionalS3Storage"}}
    yield client
    for bucket in BUCKETS.values():
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)


def _keys(client, region: str) -> list[str]:
    return [item["Key"] for item in client.list_objects_v2(Bucket=BUCKETS[region]).get("Contents", [])]


def _upload(owner, content: bytes, workspace: Workspace | None = None) -> Document:
    return services.document_upload(
        owner, SimpleUploadedFile("guide.pdf", content, "application/pdf"), enqueue=False, workspace=workspace
    )


PDF = text_pdf(["Object storage keeps uploads where every machine can read them."])


@pytest.mark.django_db
def test_an_upload_lands_in_its_workspaces_region_bucket_and_not_on_local_disk(owner, s3, media_root):
    workspace = personal_workspace(owner)
    VectorDatabase.objects.create(workspace=workspace, provider="postgres", region="eu")

    document = _upload(owner, PDF)

    assert document.file.name.startswith(f"documents/eu/workspace-{workspace.id}/")
    assert _keys(s3, "eu") == [document.file.name]
    assert _keys(s3, "local") == []
    assert not media_root.exists() or not any(media_root.rglob("*.pdf"))
    assert s3.get_object(Bucket=BUCKETS["eu"], Key=document.file.name)["Body"].read() == PDF


@pytest.mark.django_db
def test_a_team_workspaces_uploads_go_to_its_region_not_the_uploaders(client, owner, s3):
    """The region is the workspace's: a member whose personal workspace lives elsewhere uploads into the team's
    bucket, and `move_files SLUG` moves the team's files only."""
    VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres", region="local")
    team = Workspace.objects.create(name="Harbour", slug="harbour", owner=owner)
    Membership.objects.create(workspace=team, user=owner, role=Membership.Role.OWNER)
    VectorDatabase.objects.create(workspace=team, provider="postgres", region="eu")

    in_team = _upload(owner, PDF, workspace=team)
    personal = _upload(owner, text_pdf(["A personal note, not the team's."]))

    assert in_team.file.name.startswith(f"documents/eu/workspace-{team.id}/")
    assert personal.file.name.startswith(f"documents/local/workspace-{personal_workspace(owner).id}/")
    assert _keys(s3, "eu") == [in_team.file.name]
    assert _keys(s3, "local") == [personal.file.name]

    out = io.StringIO()
    call_command("move_files", "harbour", "local", stdout=out)

    assert "harbour: 1 file(s) moved to local" in out.getvalue()
    assert _keys(s3, "eu") == []
    moved = Document.objects.get(id=in_team.id)
    assert moved.file.name.startswith(f"documents/local/workspace-{team.id}/")
    assert Document.objects.get(id=personal.id).file.name == personal.file.name


@pytest.mark.django_db
def test_files_are_streamed_to_their_owner_only_and_never_public(client, owner, stranger, s3):
    document = _upload(owner, PDF)  # no database yet: the default region
    assert _keys(s3, "local") == [document.file.name]

    client.force_login(stranger)
    assert client.get(reverse("document_file", args=[document.id])).status_code == 404
    client.force_login(owner)
    response = client.get(reverse("document_file", args=[document.id]))

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PDF
    signed = document.file.url  # for operators: signed, and short-lived
    assert "Signature=" in signed and "Expires=" in signed


@pytest.mark.django_db
def test_a_worker_reads_the_file_from_object_storage(owner, s3):
    document = _upload(owner, PDF)

    with local_path(document.file) as path, open(path, "rb") as copy:
        assert copy.read() == PDF


@pytest.mark.django_db
def test_moving_a_workspace_moves_its_files_to_the_new_regions_bucket(client, owner, s3):
    documents = [_upload(owner, PDF), _upload(owner, text_pdf(["A second, different document."]))]
    out = io.StringIO()

    call_command("move_files", owner.email, "eu", stdout=out)

    assert f"{owner.email}: 2 file(s) moved to eu" in out.getvalue()
    assert _keys(s3, "local") == []
    moved = [Document.objects.get(id=document.id) for document in documents]
    assert sorted(_keys(s3, "eu")) == sorted(document.file.name for document in moved)
    workspace = personal_workspace(owner)
    assert all(document.file.name.startswith(f"documents/eu/workspace-{workspace.id}/") for document in moved)
    client.force_login(owner)
    assert b"".join(client.get(reverse("document_file", args=[moved[0].id])).streaming_content) == PDF
    call_command("move_files", owner.email, "eu", stdout=out)  # again: nothing left to move
    assert "0 file(s) moved to eu" in out.getvalue()


@pytest.mark.django_db
def test_a_region_without_a_bucket_is_refused_and_nothing_moves(owner, s3):
    document = _upload(owner, PDF)

    with pytest.raises(CommandError, match=r"no bucket for region 'us' in SILO_S3_BUCKETS \(known: eu, local\)"):
        call_command("move_files", owner.email, "us")

    assert _keys(s3, "local") == [Document.objects.get(id=document.id).file.name]
