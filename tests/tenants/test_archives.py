"""Tenant archives: a backup restores exactly the earlier state (database, documents, files), leaves every other
tenant alone, refuses damaged and foreign archives, survives a worker dying half way, and a workspace moves between
two PostgreSQL servers with writes refused while it moves. Exports stream decrypted and import again."""

from __future__ import annotations

import io
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from django.db import connections as db_connections
from django.utils import timezone

from chat import services as chat_services
from config import embedded_postgres
from documents import services as document_services
from documents.models import Document
from tenants import archive_store, archives, tasks
from tenants import services as tenant_services
from tenants.archive_files import archive_write
from tenants.models import TenantArchive, User, VectorDatabase, Workspace
from tenants.permissions import MOVING_MESSAGE, WorkspaceMoving
from tests.emulators.neon import NeonEmulator
from tests.helpers import neon_settings_for, personal_workspace
from tests.pdf_factory import text_pdf
from tests.workspaces import client_in, erase_databases, make_team
from vectordb.connections import get_registry

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

HARBOUR = [
    "The lighthouse keeper logs the fog horn schedule. The lamp is cleaned every morning at dawn.",
    "The second page explains the tide tables and the harbour pilot's duties during storms.",
]
ORCHARD = ["The orchard has forty apple trees. Pruning happens in late winter, before the buds open."]


class WorkerKilled(BaseException):
    """Stands for a worker killed at a step: nothing of the operation's own error handling runs."""


@dataclass
class Tenant:
    user: User

    @property
    def workspace(self) -> Workspace:
        return personal_workspace(self.user)

    @property
    def database(self) -> VectorDatabase:
        return VectorDatabase.objects.get(workspace=self.workspace)

    def rows(self, query: str) -> list[tuple]:
        dsn = tenant_services.vector_database_credentials(self.database)["dsn"]
        with psycopg.connect(dsn) as connection:
            return connection.execute(query).fetchall()

    def upload(self, name: str, pages: list[str]) -> Document:
        document = document_services.document_upload(self.user, ContentFile(text_pdf(pages), name=name), enqueue=False)
        document_services.document_ingest(document.id)
        document.refresh_from_db()
        assert document.status == Document.Status.READY, document.error_message
        return document

    def ask(self, question: str) -> list:
        return list(chat_services.chat_turn(self.user, question))

    def snapshot(self) -> dict:
        """What a restore must bring back exactly: documents (rows and file bytes), chunks, conversations."""
        documents = Document.objects.filter(workspace=self.workspace).order_by("id")
        return {
            "documents": list(documents.values_list("id", "title", "status", "chunk_count", "sha256", "created_at")),
            "files": {document.id: document.file.open("rb").read() for document in documents},
            "chunks": self.rows(
                "SELECT document_id, chunk_index, content, embedding::text FROM embeddings ORDER BY 1, 2"
            ),
            "conversations": self.rows("SELECT id, title, document_id, started_by FROM conversations ORDER BY id"),
            "messages": self.rows("SELECT conversation_id, role, content FROM messages ORDER BY id"),
        }


def make_tenant(user: User) -> Tenant:
    row = VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres")
    assert tenant_services.vector_database_provision(row.id).status == VectorDatabase.Status.READY
    tenant = Tenant(user)
    tenant.upload("harbour.pdf", HARBOUR)
    assert tenant.ask("When is the lamp cleaned?")[-1].kind == "done"
    return tenant


@pytest.fixture
def archive_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.ARCHIVE_ROOT = tmp_path / "archives"
    settings.OPENAI_API_KEY = ""  # extractive answers: no chat model needed
    return settings


@pytest.fixture
def tenant(owner, archive_settings) -> Iterator[Tenant]:
    made = make_tenant(owner)
    yield made
    _erase_all()


def _erase_all() -> None:
    for row in VectorDatabase.objects.exclude(status=VectorDatabase.Status.DELETED):
        tenant_services.vector_database_deprovision(row.id)


def _tenant_databases(admin_url: str) -> set[str]:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        return {
            name
            for (name,) in connection.execute("SELECT datname FROM pg_database WHERE starts_with(datname, 'silo_t_')")
        }


def _stored_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


# --- backup and restore --------------------------------------------------------------------------------------------


def test_restore_brings_back_exactly_the_state_of_the_backup_with_its_files(tenant, archive_settings, admin_dsn):
    before = tenant.snapshot()
    old_database = tenant.database
    archive = archives.archive_create(tenant.workspace)
    assert (archive.status, archive.documents, archive.chunks) == ("ready", 1, len(before["chunks"]))
    # The archive at rest is encrypted: none of the workspace's text is readable in it.
    assert b"lighthouse" not in archives.archive_path(archive).read_bytes()

    # Change everything: a new document, the old one deleted, another conversation.
    orchard = tenant.upload("orchard.pdf", ORCHARD)
    harbour_id = before["documents"][0][0]
    document_services.document_delete(tenant.user, harbour_id)
    assert tenant.ask("How many apple trees are there?")[-1].kind == "done"
    assert tenant.snapshot() != before

    outcome = archives.workspace_restore(tenant.workspace, archive=archive)

    assert tenant.snapshot() == before
    assert outcome.documents == 1
    # The document made after the backup is gone, its file too; the registry points at the new database only.
    assert not Document.objects.filter(id=orchard.id).exists()
    assert len(_stored_files(archive_settings.MEDIA_ROOT)) == 1
    database = tenant.database
    assert database.id != old_database.id and database.status == "ready" and database.operation == ""
    assert VectorDatabase.objects.get(id=old_database.id).status == "deleted"
    assert old_database.external_id not in _tenant_databases(admin_dsn)
    # And it works: chat finds the restored chunks.
    events = tenant.ask("When is the lamp cleaned?")
    assert events[-1].kind == "done" and "dawn" in "".join(e.data.get("text", "") for e in events if e.kind == "token")


def test_restore_at_a_moment_takes_the_newest_archive_at_or_before_it(tenant, archive_settings):
    first = archives.archive_create(tenant.workspace)
    state_then = tenant.snapshot()
    tenant.upload("orchard.pdf", ORCHARD)
    second = archives.archive_create(tenant.workspace)
    TenantArchive.objects.filter(id=first.id).update(created_at=timezone.now() - timedelta(hours=3))
    TenantArchive.objects.filter(id=second.id).update(created_at=timezone.now() - timedelta(hours=1))

    call_command("tenants", "restore", tenant.user.email, "--at", (timezone.now() - timedelta(hours=2)).isoformat())

    assert tenant.snapshot() == state_then
    with pytest.raises(CommandError, match=r"has no restore point at or before .*; the oldest is"):
        call_command("tenants", "restore", tenant.user.email, "--at", "2020-01-01T00:00:00Z")
    with pytest.raises(CommandError, match="is not an ISO 8601 time"):
        call_command("tenants", "restore", tenant.user.email, "--at", "yesterday")


def test_a_restore_leaves_every_other_tenant_untouched(tenant, stranger, archive_settings):
    other = make_tenant(stranger)
    other_before = other.snapshot()
    other_database = other.database
    archive = archives.archive_create(tenant.workspace)
    # The other tenant keeps a connection open through the restore, as a streaming answer would.
    target = tenant_services.tenant_target(other.workspace)
    with get_registry().connection(target) as open_connection:
        archives.workspace_restore(tenant.workspace, archive=archive)
        assert open_connection.execute("SELECT count(*) FROM embeddings").fetchone()[0] == len(other_before["chunks"])

    assert other.snapshot() == other_before
    assert VectorDatabase.objects.filter(id=other_database.id).values_list(
        "status", "external_id", "encrypted_credentials"
    ).get() == (other_database.status, other_database.external_id, other_database.encrypted_credentials)


def test_damaged_foreign_and_other_workspaces_archives_are_refused_and_nothing_changes(
    tenant, stranger, archive_settings, tmp_path
):
    archive = archives.archive_create(tenant.workspace)
    path = archives.archive_path(archive)
    before, database = tenant.snapshot(), tenant.database

    damaged = path.with_name("damaged.silo")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    with pytest.raises(archives.ArchiveRefused, match=r"This archive is damaged \(part 1 fails its integrity check\)"):
        archives.workspace_restore(tenant.workspace, path=damaged)

    cut = path.with_name("cut.silo")
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(archives.ArchiveRefused, match="cut short"):
        archives.workspace_restore(tenant.workspace, path=cut)

    not_an_archive = path.with_name("notes.txt")
    not_an_archive.write_text("hello")
    with pytest.raises(archives.ArchiveRefused, match="not a Silo archive"):
        archives.workspace_restore(tenant.workspace, path=not_an_archive)

    other = make_tenant(stranger)
    theirs = archives.archive_create(other.workspace)
    with pytest.raises(archives.ArchiveRefused, match=r"This archive is of workspace .*use `tenants import`"):
        archives.workspace_restore(tenant.workspace, path=archives.archive_path(theirs))
    with pytest.raises(archives.ArchiveRefused, match="not a ready archive of this workspace"):
        archives.workspace_restore(tenant.workspace, archive=theirs)

    ours = archive_settings.CREDENTIALS_KEYS
    # Another installation's archive: written under its key, opened here with ours.
    archive_settings.CREDENTIALS_KEYS = [Fernet.generate_key().decode()]
    foreign = path.with_name("foreign.silo")
    archive_write(tmp_path, {"workspace": {"id": tenant.workspace.id, "slug": tenant.workspace.slug}}, foreign)
    archive_settings.CREDENTIALS_KEYS = ours
    with pytest.raises(archives.ArchiveRefused, match="encrypted by another Silo installation"):
        archives.workspace_restore(tenant.workspace, path=foreign)

    assert tenant.snapshot() == before
    assert tenant.database.id == database.id and tenant.database.operation == ""


def test_a_worker_killed_mid_restore_leaves_the_old_database_and_a_rerun_finishes(tenant, archive_settings, admin_dsn):
    archive = archives.archive_create(tenant.workspace)
    before = tenant.snapshot()
    tenant.upload("orchard.pdf", ORCHARD)
    changed, database = tenant.snapshot(), tenant.database

    def die(step: str) -> None:
        if step == "checking the restored database":
            raise WorkerKilled(step)

    with pytest.raises(WorkerKilled):
        archives.workspace_restore(tenant.workspace, archive=archive, on_step=die)

    # Still on its old database, consistent; the registry shows what was under way and writes wait for it.
    assert tenant.database.id == database.id
    assert tenant.snapshot() == changed
    assert (tenant.database.operation, tenant.database.operation_step) == (
        "restoring",
        "checking the restored database",
    )
    with pytest.raises(WorkspaceMoving, match="back in a moment"):
        document_services.document_delete(tenant.user, changed["documents"][0][0])
    assert tenant.ask("When is the lamp cleaned?")[-1].data == {"message": MOVING_MESSAGE}
    half_built = VectorDatabase.objects.get(replaces=database)
    assert half_built.external_id in _tenant_databases(admin_dsn)

    archives.workspace_restore(tenant.workspace, archive=archive)

    assert tenant.snapshot() == before
    assert VectorDatabase.objects.get(id=half_built.id).status == "deleted"
    assert half_built.external_id not in _tenant_databases(admin_dsn)
    assert tenant.ask("When is the lamp cleaned?")[-1].kind == "done"  # writes are back


def test_a_worker_killed_after_the_switch_leaves_the_new_state_and_the_next_run_drops_the_old_database(
    tenant, archive_settings, admin_dsn
):
    archive = archives.archive_create(tenant.workspace)
    before, old = tenant.snapshot(), tenant.database

    def die(step: str) -> None:
        if step == "dropping the old database":
            raise WorkerKilled(step)

    with pytest.raises(WorkerKilled):
        archives.workspace_restore(tenant.workspace, archive=archive, on_step=die)

    # Switched: the workspace is on the new database and reads the archive's state; the old one awaits its drop.
    assert tenant.database.id != old.id and tenant.database.operation == "" and tenant.snapshot() == before
    assert VectorDatabase.objects.get(id=old.id).status == "deleting"
    assert old.external_id in _tenant_databases(admin_dsn)

    archives.workspace_restore(tenant.workspace, archive=archive)

    assert VectorDatabase.objects.get(id=old.id).status == "deleted"
    assert old.external_id not in _tenant_databases(admin_dsn)
    assert tenant.snapshot() == before


def _reconcile(*args: str) -> tuple[str, str]:
    """`tenants reconcile`'s output and its error ("" when it agrees)."""
    out = io.StringIO()
    try:
        call_command("tenants", "reconcile", *args, stdout=out)
    except CommandError as error:
        return out.getvalue(), str(error)
    return out.getvalue(), ""


def test_reconcile_reports_a_half_done_restore_and_never_reprovisions_the_database_it_was_building(
    tenant, archive_settings, admin_dsn
):
    archive = archives.archive_create(tenant.workspace)
    database, label = tenant.database, tenant.workspace.label

    def dies_at(when: str):
        def die(step: str) -> None:
            if step == when:
                raise WorkerKilled(step)

        return die

    with pytest.raises(WorkerKilled):
        archives.workspace_restore(tenant.workspace, archive=archive, on_step=dies_at("checking the restored database"))
    half_built = VectorDatabase.objects.get(replaces=database)
    long_ago = timezone.now() - timedelta(hours=1)  # well past reconcile's "stuck" age
    VectorDatabase.objects.filter(id__in=[database.id, half_built.id]).update(updated_at=long_ago)

    out, error = _reconcile()
    assert f"half done: {label}: restoring stopped at 'checking the restored database' since " in out
    assert f"(database {half_built.tenant_key} half built)" in out
    assert f"run `tenants restore {label} --from ARCHIVE (or --at TIMESTAMP)" in out
    assert half_built.tenant_key not in out.replace(f"(database {half_built.tenant_key} half built)", "")
    assert error

    out, _ = _reconcile("--apply")
    assert f"re-provisioning {half_built.tenant_key}" not in out
    half_built.refresh_from_db()
    assert (half_built.status, half_built.workspace_id) == ("provisioning", None)
    assert half_built.external_id in _tenant_databases(admin_dsn)

    # A worker killed after the switch: the old database lingers; reconcile says so and --apply drops it.
    with pytest.raises(WorkerKilled):
        archives.workspace_restore(tenant.workspace, archive=archive, on_step=dies_at("dropping the old database"))
    assert VectorDatabase.objects.get(id=half_built.id).status == "deleted"  # the re-run removed it
    out, _ = _reconcile()
    assert f"{label}: restoring stopped" not in out
    assert f"half done: {label}: the database it switched away from ({database.tenant_key}) was not dropped" in out
    out, _ = _reconcile("--apply")
    assert f"fixed: dropped {database.tenant_key}, which {label} switched away from" in out
    assert VectorDatabase.objects.get(id=database.id).status == "deleted"
    assert database.external_id not in _tenant_databases(admin_dsn)
    out, _ = _reconcile()
    assert "half done" not in out


# --- moves between servers -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_server() -> Iterator[str]:
    """A second embedded PostgreSQL 18 + pgvector, as a second administered server would be. Its data lives in this
    run's own folder: pytest's shared temporary folders are pruned by other runs on the machine."""
    root = django_settings.DATA_DIR / "second-postgres"
    server = embedded_postgres.ensure_running(root, fast_unsafe=True)
    yield server.dsn()
    embedded_postgres.stop(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def two_servers(archive_settings, second_server):
    first = archive_settings.TENANT_POSTGRES_SERVERS[0]
    archive_settings.TENANT_POSTGRES_SERVERS = [first, {"name": "second", "region": "us", "admin_url": second_server}]
    return first, second_server


def test_a_move_to_another_server_keeps_every_chunk_and_conversation_and_refuses_writes_meanwhile(
    tenant, two_servers, admin_dsn
):
    first, second_admin = two_servers
    before = tenant.snapshot()
    source = tenant.database
    refused = []

    def try_writing(step: str) -> None:
        if step == "restoring the database":
            assert tenant.ask("anything?")[-1].data == {"message": MOVING_MESSAGE}
            with pytest.raises(WorkspaceMoving, match="moving to a new database"):
                tenant.upload("orchard.pdf", ORCHARD)
            refused.append(tenant.database.operation_step)  # the registry shows how far the move is

    call_command("tenants", "move", tenant.user.email, "--server", "second")
    assert refused == []  # the command ran without the hook; now with it, back to the first server
    assert (tenant.database.server, tenant.database.region) == ("second", "us")
    assert tenant.database.external_id in _tenant_databases(second_admin)
    assert source.external_id not in _tenant_databases(admin_dsn)
    assert tenant.snapshot() == before

    archives.workspace_move(tenant.workspace, server=first["name"], on_step=try_writing)

    assert refused == ["restoring the database"]
    assert tenant.database.server == first["name"]
    assert tenant.snapshot() == before
    assert _tenant_databases(second_admin) == set()
    assert tenant.ask("When is the lamp cleaned?")[-1].kind == "done"


def test_an_answer_streaming_when_a_move_starts_stores_its_final_message_in_the_new_database(tenant, two_servers):
    """The move refuses new writes, then waits for the answer already streaming; the answer ends normally and its
    final message is in the archive the move restores, so it is on the new server."""
    events = chat_services.chat_turn(tenant.user, "When is the lamp cleaned?")
    streamed = []
    for event in events:
        streamed.append(event)
        if event.kind == "token":
            break  # streaming: its question is stored, its answer not yet
    outcome: dict = {}

    def move() -> None:
        try:
            outcome["moved"] = archives.workspace_move(tenant.workspace, server="second")
        except BaseException as error:
            outcome["error"] = error
        finally:
            db_connections.close_all()

    mover = threading.Thread(target=move)
    mover.start()
    deadline = time.monotonic() + 30
    while tenant.database.operation_step != "waiting for 1 chat answer(s) to finish":
        assert time.monotonic() < deadline and mover.is_alive(), (tenant.database.operation_step, outcome)
        time.sleep(0.05)
    assert tenant.ask("Another question?")[-1].data == {"message": MOVING_MESSAGE}  # new writes are refused

    streamed += list(events)  # the answer goes on to its end
    mover.join(timeout=240)

    assert "error" not in outcome, outcome
    assert streamed[-1].kind == "done", streamed[-1]
    assert tenant.database.server == "second"
    answer = "".join(event.data["text"] for event in streamed if event.kind == "token")
    assert tenant.rows("SELECT role, content FROM messages ORDER BY id")[-2:] == [
        ("user", "When is the lamp cleaned?"),
        ("assistant", answer),
    ]


def test_a_move_is_refused_when_an_answer_streams_past_the_bound_and_nothing_changes(
    tenant, two_servers, archive_settings
):
    database = tenant.database
    archive_settings.TENANT_SWITCH_STREAM_WAIT_SECONDS = 0.5
    events = chat_services.chat_turn(tenant.user, "When is the lamp cleaned?")
    assert next(event for event in events if event.kind == "token")
    try:
        with pytest.raises(archives.ArchiveRefused, match=r"1 chat answer\(s\) in .* still streaming after 0.5 s"):
            archives.workspace_move(tenant.workspace, server="second")
        assert (tenant.database.id, tenant.database.operation) == (database.id, "")
    finally:
        events.close()
    assert tenant.rows("SELECT role FROM messages ORDER BY id")[-1] == ("assistant",)  # stopped, stored as such


def test_a_worker_killed_mid_move_leaves_the_workspace_on_its_server_and_a_rerun_finishes(
    tenant, two_servers, admin_dsn
):
    _first, second_admin = two_servers
    before, source = tenant.snapshot(), tenant.database

    def die(step: str) -> None:
        if step == "switching to the new database":
            raise WorkerKilled(step)

    with pytest.raises(WorkerKilled):
        archives.workspace_move(tenant.workspace, server="second", on_step=die)
    assert tenant.database.id == source.id and tenant.snapshot() == before
    assert tenant.database.operation == "moving"

    archives.workspace_move(tenant.workspace, server="second")

    assert tenant.database.server == "second" and tenant.snapshot() == before
    assert len(_tenant_databases(second_admin)) == 1
    assert source.external_id not in _tenant_databases(admin_dsn)


def test_a_move_to_nowhere_or_to_where_it_is_is_refused(tenant, two_servers):
    database = tenant.database
    with pytest.raises(CommandError, match=r"No server 'nowhere' in TENANT_POSTGRES_SERVERS \(known: .*second\)"):
        call_command("tenants", "move", tenant.user.email, "--server", "nowhere")
    with pytest.raises(CommandError, match=r"No server in region 'mars' \(regions: .*us\)"):
        call_command("tenants", "move", tenant.user.email, "--region", "mars")
    with pytest.raises(CommandError, match="is already there"):
        call_command("tenants", "move", tenant.user.email, "--server", database.server)
    assert VectorDatabase.objects.get(id=database.id).operation == ""


def test_a_move_waits_for_documents_being_processed(tenant, two_servers):
    document_services.document_upload(tenant.user, ContentFile(text_pdf(ORCHARD), name="orchard.pdf"), enqueue=False)
    with pytest.raises(CommandError, match=r"1 document\(s\) of this workspace are being processed"):
        call_command("tenants", "move", tenant.user.email, "--server", "second")
    assert tenant.database.operation == ""


@pytest.fixture
def neon(admin_dsn, archive_settings):
    """The Neon emulator, configured beside the postgres provider (new tenants still go to our own servers)."""
    emulator = NeonEmulator(admin_dsn, operation_delay_seconds=0.05, retry_after_seconds=0)
    emulator.start()
    for name, value in neon_settings_for(emulator).items():
        if name != "TENANT_PROVIDER":
            setattr(archive_settings, name, value)
    yield emulator
    _erase_all()
    emulator.stop()


def test_a_move_to_neon_and_back_keeps_every_chunk_and_conversation(tenant, neon, admin_dsn):
    before, source = tenant.snapshot(), tenant.database

    call_command("tenants", "move", tenant.user.email, "--provider", "neon")

    on_neon = tenant.database
    assert (on_neon.provider, on_neon.region, on_neon.status) == ("neon", "aws-us-east-2", "ready")
    assert neon.project_ids == [on_neon.external_id]
    assert source.external_id not in _tenant_databases(admin_dsn)
    assert tenant.snapshot() == before  # the files followed to the Neon region's folder, unchanged
    assert all("/aws-us-east-2/" in name for name in Document.objects.values_list("file", flat=True))

    call_command("tenants", "move", tenant.user.email, "--provider", "postgres")

    assert (tenant.database.provider, tenant.database.server) == ("postgres", source.server)
    assert neon.project_ids == []
    assert tenant.snapshot() == before
    assert tenant.ask("When is the lamp cleaned?")[-1].kind == "done"


def test_on_neon_a_point_in_time_restore_uses_the_branch_restore_endpoint_and_rows_agree(tenant, neon):
    call_command("tenants", "move", tenant.user.email, "--provider", "neon")
    archives.archive_create(tenant.workspace)  # the rows and files of documents deleted later come from here
    moment = neon.record_history()  # what Neon keeps continuously, the emulator keeps when told
    before = tenant.snapshot()
    harbour_id = before["documents"][0][0]
    tenant.upload("orchard.pdf", ORCHARD)
    document_services.document_delete(tenant.user, harbour_id)
    assert tenant.ask("How many apple trees are there?")[-1].kind == "done"

    call_command("tenants", "restore", tenant.user.email, "--at", moment.isoformat())

    assert tenant.snapshot() == before
    assert [(r.method, r.status) for r in neon.requests if r.path.endswith("/restore")] == [("POST", 200)]
    assert (tenant.database.provider, tenant.database.operation) == ("neon", "")
    assert len(_stored_files(django_settings.MEDIA_ROOT)) == 1  # the orchard's file went with its row
    with pytest.raises(CommandError, match="is before the start of the branch's history"):
        call_command("tenants", "restore", tenant.user.email, "--at", "2020-01-01T00:00:00Z")
    assert tenant.snapshot() == before and tenant.database.operation == ""


# --- take your data with you ---------------------------------------------------------------------------------------


def test_an_exported_archive_imports_as_a_new_workspace_with_everything(tenant, stranger, archive_settings, tmp_path):
    before = tenant.snapshot()
    archive = archives.archive_create(tenant.workspace)
    # What the owner downloads: the plain tar, decrypted as it streams.
    exported = tmp_path / "export.tar"
    exported.write_bytes(b"".join(archives.archive_download_chunks(archive)))
    with tarfile.open(exported) as plain:
        names = set(plain.getnames())
        dump = plain.extractfile("database.dump").read()
    assert {"manifest.json", "database.dump", "main.json"} <= names and dump.startswith(b"PGDMP")

    call_command("tenants", "import", str(exported), "--owner", stranger.email, "--name", "Harbour copy")

    imported = Workspace.objects.get(name="Harbour copy")
    assert imported.owner == stranger and list(imported.memberships.values_list("user__email", "role")) == [
        (stranger.email, "owner")
    ]
    documents = list(Document.objects.filter(workspace=imported))
    assert [(d.title, d.sha256, d.chunk_count) for d in documents] == [(r[1], r[4], r[3]) for r in before["documents"]]
    assert documents[0].id != before["documents"][0][0]
    assert documents[0].file.open("rb").read() == next(iter(before["files"].values()))
    dsn = tenant_services.vector_database_credentials(VectorDatabase.objects.get(workspace=imported))["dsn"]
    with psycopg.connect(dsn) as connection:
        chunks = connection.execute("SELECT document_id, chunk_index, content FROM embeddings ORDER BY 2").fetchall()
        authors = connection.execute("SELECT DISTINCT started_by FROM conversations").fetchall()
    assert chunks == [(documents[0].id, index, content) for _id, index, content, _e in before["chunks"]]
    assert authors == [(stranger.id,)]
    # The original is untouched.
    assert tenant.snapshot() == before


def test_an_encrypted_archive_of_a_workspace_imports_too_and_a_bad_one_leaves_nothing(
    tenant, stranger, archive_settings, tmp_path
):
    archive = archives.archive_create(tenant.workspace)
    outcome = archives.workspace_import(archives.archive_path(archive), stranger)
    assert Document.objects.filter(workspace=outcome.workspace).count() == 1

    workspaces = Workspace.objects.count()
    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as plain:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        plain.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(CommandError, match=r"This archive holds .\.\./escape\.txt., which no Silo archive holds"):
        call_command("tenants", "import", str(broken), "--owner", stranger.email)
    assert Workspace.objects.count() == workspaces
    assert not (tmp_path.parent / "escape.txt").exists()


# --- scheduled backups, retention, erasure -------------------------------------------------------------------------


def test_scheduled_backups_record_success_and_failure_and_retention_keeps_the_newest(
    tenant, archive_settings, tmp_path, caplog
):
    workspace = tenant.workspace
    assert archives.workspaces_due_for_backup() == [workspace.id]
    assert archives.backup_status(workspace).last_status == ""

    archive_settings.TENANT_PG_BIN_DIR = str(tmp_path / "no-binaries-here")
    with pytest.raises(archives.ArchiveFailed, match=r"The backup of .* failed"):
        archives.archive_create(workspace, TenantArchive.Kind.SCHEDULED)
    status = archives.backup_status(workspace)
    assert (status.last_status, status.last_success) == ("failed", None) and status.last_error
    assert any(r.levelname == "ERROR" and "backup of workspace" in r.getMessage() for r in caplog.records)
    assert archives.workspaces_due_for_backup() == [workspace.id]  # a failed backup is retried

    archive_settings.TENANT_PG_BIN_DIR = ""
    archive = archives.archive_create(workspace, TenantArchive.Kind.SCHEDULED)
    status = archives.backup_status(workspace)
    assert (status.last_status, status.last_success) == ("ready", archive.created_at)
    assert archives.workspaces_due_for_backup() == []

    # Retention: archives older than TENANT_BACKUP_RETENTION_DAYS go, except the newest ready one.
    archive_settings.TENANT_BACKUP_RETENTION_DAYS = 7
    newer = archives.archive_create(workspace)
    TenantArchive.objects.filter(id=archive.id).update(created_at=timezone.now() - timedelta(days=9))
    TenantArchive.objects.filter(id=newer.id).update(created_at=timezone.now() - timedelta(days=8))
    TenantArchive.objects.filter(status="failed").update(created_at=timezone.now() - timedelta(days=10))
    assert archives.archives_prune(workspace) == 2  # the old one and the failed attempt
    assert list(TenantArchive.objects.filter(workspace=workspace).values_list("id", flat=True)) == [newer.id]
    assert not archives.archive_path(archive).exists() and archives.archive_path(newer).exists()


def test_erasing_a_workspace_leaves_no_archive_behind(tenant, archive_settings):
    archives.archive_create(tenant.workspace)
    archives.archive_create(tenant.workspace)
    assert len(_stored_files(archive_settings.ARCHIVE_ROOT)) == 2

    tenant_services.tenant_erase(tenant.user.id)

    assert _stored_files(archive_settings.ARCHIVE_ROOT) == []
    assert TenantArchive.objects.count() == 0


def test_the_backup_commands_report_what_they_did(tenant, archive_settings):
    out = io.StringIO()
    call_command("tenants", "backup", tenant.user.email, stdout=out)
    archive = TenantArchive.objects.get()
    assert out.getvalue() == (
        f"{tenant.user.email}: archive {archive.id} ready ({archive.size_bytes} bytes, 1 documents, {archive.chunks} "
        f"chunks) at {archives.archive_path(archive)}\n"
    )

    out = io.StringIO()
    call_command("tenants", "backups", tenant.user.email, stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"last success: {archive.created_at}; last attempt: ready"
    assert lines[1].split() == [
        str(archive.id), f"{archive.created_at:%Y-%m-%dT%H:%M:%SZ}", "manual", "ready", str(archive.size_bytes),
        "1", "docs", str(archive.chunks), "chunks",
    ]  # fmt: skip
    assert len(lines) == 2

    with pytest.raises(CommandError, match=r"^no user with email nobody@example\.com$"):
        call_command("tenants", "backup", "nobody@example.com")


def test_only_owners_download_and_rewind_and_only_their_workspaces_archives(owner, stranger, archive_settings):
    team = make_team(owner)
    theirs = make_tenant(stranger)
    archive = archives.archive_create(team.workspace)
    other = archives.archive_create(theirs.workspace)
    download, rewind = f"/workspace/backups/{archive.id}/download", f"/workspace/backups/{archive.id}/rewind"
    try:
        response = client_in(owner, team.workspace).get(download)
        assert response.status_code == 200 and response["Content-Type"] == "application/x-tar"
        assert response["Content-Disposition"].startswith(f'attachment; filename="{team.workspace.slug}-')
        with tarfile.open(fileobj=io.BytesIO(b"".join(response.streaming_content))) as plain:
            assert plain.getnames()[-1] == "manifest.json"
        page = client_in(owner, team.workspace).get("/workspace/members")
        assert b"Backups and Rewind" in page.content and download.encode() in page.content

        for role in ("admin", "editor", "viewer"):
            client = client_in(getattr(team, role), team.workspace)
            assert client.get(download).status_code == 403, role
            assert client.post(rewind).status_code == 403, role
            assert b"Backups and Rewind" not in client.get("/workspace/members").content
        # Another workspace's archive does not exist for this owner.
        assert client_in(owner, team.workspace).get(f"/workspace/backups/{other.id}/download").status_code == 404
        assert client_in(stranger).get(download).status_code == 404
    finally:
        erase_databases()


def test_a_failed_rewind_or_backup_shows_on_the_workspace_page_with_its_reason(tenant, archive_settings, tmp_path):
    """What the worker did with an owner's Rewind or Back up now reaches the owner on the page, not only the logs."""
    workspace, page = tenant.workspace, client_in(tenant.user)
    archive = archives.archive_create(workspace)
    assert b'id="backup-outcome"' not in page.get("/workspace/members").content

    archive_store.delete(archive.file_name)  # the storage lost the restore point's file
    assert tasks.rewind_workspace(workspace.id, archive.id) is False
    html = page.get("/workspace/members").content.decode()
    assert 'id="backup-outcome"' in html and 'data-ok="false"' in html and "Rewind failed" in html
    assert (
        f"Rewind to {archive.created_at:%d %b %Y %H:%M} UTC did not happen: The file of the restore point of "
        f"{archive.created_at:%d %b %Y %H:%M} UTC is missing from the archive storage: choose another restore point."
    ) in html
    assert tenant.database.operation == ""  # refused: the workspace is as it was, writes allowed

    archive_settings.TENANT_PG_BIN_DIR = str(tmp_path / "no-binaries-here")
    with pytest.raises(archives.ArchiveFailed):
        tasks.back_up_workspace(workspace.id, "manual")
    html = page.get("/workspace/members").content.decode()
    assert "Backup failed" in html and "It is tried again automatically." in html and "pg_dump" in html
    assert "the latest attempt failed (" in html  # the status line says why too

    archive_settings.TENANT_PG_BIN_DIR = ""
    made = TenantArchive.objects.get(id=tasks.back_up_workspace(workspace.id, "manual"))
    html = page.get("/workspace/members").content.decode()
    assert "Backup done" in html and 'data-ok="true"' in html
    assert f"Restore point of {made.created_at:%d %b %Y %H:%M} UTC made." in html
