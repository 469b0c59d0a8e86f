"""Tenant archives: back a workspace up, restore it (from an archive or to a moment), move it to another server or
region, hand it over to its owner and import it again. One format serves them all (tenants.archive_files).

Restore and move build the new database beside the old one, check it, switch the registry in one transaction, then
drop the old one: the workspace reads the old state until the switch and the new one after it. While one runs, writes
to the workspace are refused (tenants.permissions.workspace_writable_require). A worker that dies half way leaves the
workspace on its old database; running the same command again clears what it left and finishes.

The workspace's main-database rows (documents and their files) belong to other apps: they register an ArchivePart
(documents does, in documents.archives), so `tenants` archives and restores them without importing those apps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tenants import archive_store
from tenants.archive_files import ArchiveUnreadable, OpenedArchive, archive_open, archive_write, stream_plaintext_chunks
from tenants.models import Membership, TenantArchive, User, VectorDatabase, Workspace
from tenants.open_streams import workspace_streams_wait
from tenants.provisioners import ProvisioningError, get_provisioner
from tenants.services import (
    TRANSIENT_ERRORS,
    TenantDatabaseNotReady,
    _set_location,
    vector_database_credentials,
    vector_database_deprovision,
    vector_database_target,
)
from vectordb.advisory_locks import advisory_lock
from vectordb.connections import get_registry
from vectordb.dumps import (
    DumpFailed,
    conversation_authors_renumber,
    database_dump,
    database_restore,
    document_ids_renumber,
    own_tables_drop,
    table_row_counts,
)
from vectordb.schema import BreakingMigrationRefused, schema_target, tenant_database_migrate
from vectordb.tenant_embedding_model import embedding_model_recorded

logger = logging.getLogger(__name__)
Status = VectorDatabase.Status

ARCHIVE_ERRORS = (DumpFailed, ArchiveUnreadable, BreakingMigrationRefused, OSError, *TRANSIENT_ERRORS)


class ArchiveRefused(Exception):
    """The operation cannot run now or with this input; the message says why and what to do."""


class ArchiveFailed(Exception):
    """The operation failed part way; what it made was removed and the workspace is as it was."""


# --- the parts other apps contribute ---------------------------------------------------------------------------------


class StagedRows(Protocol):
    """A part's rows and files from an archive, made ready beside the workspace's current ones."""

    document_ids: dict[int, int]  # archived id -> id in this installation (the same, unless imported)

    def commit(self) -> None: ...  # inside the switch's transaction: the rows become the workspace's

    def finish(self) -> None: ...  # after it committed: what the old rows held (their files) goes

    def abort(self) -> None: ...  # the operation failed: what stage made goes


@dataclass(frozen=True)
class ArchivePart:
    name: str
    # Writes the part's files under `folder` and returns its rows (JSON).
    dump: Callable[[Workspace, Path], dict]
    # (workspace, rows, folder, imported) -> the rows and files staged; nothing the workspace shows changes yet.
    stage: Callable[[Workspace, dict, Path, bool], StagedRows]
    # Why the workspace cannot be archived for a restore or move now ("" when it can): work in flight.
    busy: Callable[[Workspace], str]
    # The workspace moved to another region: its files follow. Returns how many moved.
    relocate: Callable[[Workspace, str], int] = lambda _workspace, _region: 0
    # After a point-in-time restore of the database alone (Neon): make the rows agree with it. Gets the document ids
    # the restored database holds chunks of, the moment, and the newest archive at or before it (rows and files of
    # documents deleted since come from there), if any.
    agree: Callable[[Workspace, set[int], datetime, OpenedArchive | None], None] = lambda *_: None


_PARTS: dict[str, ArchivePart] = {}


def archive_part_register(part: ArchivePart) -> None:
    _PARTS[part.name] = part


# --- backups ---------------------------------------------------------------------------------------------------------


def archive_root() -> Path:
    return archive_store.local_root()


def archive_path(archive: TenantArchive) -> Path:
    """The archive's file on the local folder (object storage: see archive_location, archive_file)."""
    return archive_root() / archive.file_name


def archive_location(archive: TenantArchive) -> str:
    return archive_store.location(archive.file_name)


@contextlib.contextmanager
def archive_file(archive: TenantArchive) -> Iterator[Path]:
    """A path on this machine holding the archive, wherever it is stored."""
    with archive_store.local_copy(archive.file_name) as path:
        if not path.is_file():
            raise ArchiveUnreadable(
                f"The file of the restore point of {archive.created_at:%d %b %Y %H:%M} UTC is missing from the "
                "archive storage: choose another restore point."
            )
        yield path


def _ready_database(workspace: Workspace) -> VectorDatabase:
    vector_database = VectorDatabase.objects.filter(workspace=workspace).first()
    if vector_database is None or vector_database.status != Status.READY:
        status = vector_database.status if vector_database else "missing"
        raise ArchiveRefused(
            f"{workspace.label}'s database is {status}: there is nothing to archive until it is ready."
        )
    return vector_database


def archive_create(workspace: Workspace, kind: str = TenantArchive.Kind.MANUAL) -> TenantArchive:
    """Archive the workspace now: its database, its rows in the main database and its files, encrypted into
    ARCHIVE_ROOT. A failure is recorded on the archive's row (the workspace's backup status shows it), logged as an
    error, and raised as ArchiveFailed."""
    vector_database = _ready_database(workspace)
    archive = TenantArchive.objects.create(
        workspace=workspace,
        kind=kind,
        schema_version=vector_database.schema_version,
        embedding_model=vector_database.embedding_model,
    )
    folder = Path(tempfile.mkdtemp(prefix="silo-backup-"))
    try:
        main_rows = _main_rows_dump(workspace, folder)
        (folder / "main.json").write_text(json.dumps(main_rows, default=str))
        database_dump(
            vector_database_credentials(vector_database)["migration_dsn"], folder / "database.dump", _bin_dir()
        )
        with get_registry().connection(vector_database_target(vector_database)) as connection:
            counts = table_row_counts(connection)
        manifest = {
            "workspace": _workspace_description(workspace),
            "tenant_key": vector_database.tenant_key,
            "provider": vector_database.provider,
            "region": vector_database.region,
            "schema_version": vector_database.schema_version,
            "embedding_model": {
                "name": vector_database.embedding_model,
                "dimensions": vector_database.embedding_dimensions,
            },
            "created_at": archive.created_at.isoformat(),
            "counts": counts,
            "documents": len(main_rows["parts"].get("documents", {}).get("documents", [])),
        }
        file_name = f"workspace-{workspace.id}/{archive.created_at:%Y%m%dT%H%M%S}-{archive.id}.silo"
        with archive_store.writing(file_name) as target:
            size, digest = archive_write(folder, manifest, target)
    except (*ARCHIVE_ERRORS, TenantDatabaseNotReady) as error:
        message = str(error) or type(error).__name__
        TenantArchive.objects.filter(id=archive.id).update(
            status=TenantArchive.Status.FAILED, error=message[:2000], finished_at=timezone.now()
        )
        logger.error("backup of workspace %s failed: %s", workspace.id, message)
        raise ArchiveFailed(f"The backup of {workspace.label} failed: {message}") from error
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    TenantArchive.objects.filter(id=archive.id).update(
        status=TenantArchive.Status.READY,
        file_name=file_name,
        size_bytes=size,
        sha256=digest,
        documents=manifest["documents"],
        chunks=counts.get("embeddings", 0),
        finished_at=timezone.now(),
    )
    archive.refresh_from_db()
    logger.info("workspace %s archived: %s (%d bytes)", workspace.id, file_name, size)
    return archive


def _bin_dir() -> str | None:
    return settings.TENANT_PG_BIN_DIR or None


def _workspace_description(workspace: Workspace) -> dict:
    return {
        "id": workspace.id,
        "slug": workspace.slug,
        "name": workspace.name,
        "personal": workspace.personal,
        "owner_email": workspace.owner.email,
    }


def _main_rows_dump(workspace: Workspace, folder: Path) -> dict:
    members = list(workspace.memberships.values("user_id", "user__email", "role"))
    return {
        "workspace": _workspace_description(workspace),
        "members": [{"user_id": m["user_id"], "email": m["user__email"], "role": m["role"]} for m in members],
        "parts": {name: part.dump(workspace, folder) for name, part in _PARTS.items()},
    }


def archives_for(workspace: Workspace) -> list[TenantArchive]:
    return list(TenantArchive.objects.filter(workspace=workspace).order_by("-created_at", "-id"))


def restore_points(workspace: Workspace, days: int | None = None) -> list[TenantArchive]:
    """The workspace's ready archives (of the last `days`), newest first: the moments it can be rewound to."""
    archives = TenantArchive.objects.filter(workspace=workspace, status=TenantArchive.Status.READY)
    if days is not None:
        archives = archives.filter(created_at__gte=timezone.now() - timedelta(days=days))
    return list(archives.order_by("-created_at", "-id"))


@dataclass
class BackupStatus:
    last_success: datetime | None
    last_attempt: datetime | None
    last_status: str  # ready, failed, running, or "" (never backed up)
    last_error: str
    archives: int

    def as_dict(self) -> dict:
        return {
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_attempt": self.last_attempt.isoformat() if self.last_attempt else None,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "archives": self.archives,
        }


def backup_status(workspace: Workspace) -> BackupStatus:
    rows = TenantArchive.objects.filter(workspace=workspace).exclude(kind=TenantArchive.Kind.MOVE)
    last = rows.order_by("-created_at", "-id").first()
    success = rows.filter(status=TenantArchive.Status.READY).order_by("-created_at").first()
    return BackupStatus(
        last_success=success.created_at if success else None,
        last_attempt=last.created_at if last else None,
        last_status=last.status if last else "",
        last_error=last.error if last else "",
        archives=rows.filter(status=TenantArchive.Status.READY).count(),
    )


def workspaces_due_for_backup() -> list[int]:
    """Workspaces with a ready database whose last successful backup is older than TENANT_BACKUP_INTERVAL_HOURS (or
    that have none), and that no backup is running for."""
    due_before = timezone.now() - timedelta(hours=settings.TENANT_BACKUP_INTERVAL_HOURS)
    recent = TenantArchive.objects.filter(created_at__gte=due_before).exclude(status=TenantArchive.Status.FAILED)
    return list(
        Workspace.objects.filter(vector_database__status=Status.READY)
        .exclude(id__in=recent.values("workspace_id"))
        .order_by("id")
        .values_list("id", flat=True)
    )


def archives_prune(workspace: Workspace, now: datetime | None = None) -> int:
    """Apply the retention policy: archives older than TENANT_BACKUP_RETENTION_DAYS go (file and row), except the
    newest ready one, which is kept whatever its age. Returns how many went."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.TENANT_BACKUP_RETENTION_DAYS)
    newest = restore_points(workspace)[:1]
    doomed = TenantArchive.objects.filter(workspace=workspace, created_at__lt=cutoff).exclude(
        id__in=[archive.id for archive in newest]
    )
    doomed = doomed.exclude(status=TenantArchive.Status.RUNNING)
    removed = 0
    for archive in list(doomed):
        _archive_file_delete(archive)
        archive.delete()
        removed += 1
    return removed


def _archive_file_delete(archive: TenantArchive) -> None:
    if archive.file_name:
        archive_store.delete(archive.file_name)


def archives_erase(workspace: Workspace) -> int:
    """Erasure: every archive of the workspace goes, files and rows, with half-written ones. Nothing is kept."""
    archives = list(TenantArchive.objects.filter(workspace=workspace))
    for archive in archives:
        _archive_file_delete(archive)
    TenantArchive.objects.filter(workspace=workspace).delete()
    archive_store.erase_workspace(workspace.id)
    return len(archives)


def archive_download_chunks(archive: TenantArchive) -> Iterator[bytes]:
    """The archive as its owner downloads it: the plain tar (manifest, the database as a `pg_dump --no-owner
    --no-acl` any PostgreSQL with pgvector restores, rows, files), decrypted as it streams."""
    return _stream_closing(archive_store.open_stream(archive.file_name))


def _stream_closing(handle) -> Iterator[bytes]:
    with contextlib.closing(handle):
        yield from stream_plaintext_chunks(handle)


def archive_get_for_workspace(workspace: Workspace, archive_id: int | str) -> TenantArchive:
    """One of the workspace's ready archives; another workspace's is not found (callers checked the role)."""
    try:
        return TenantArchive.objects.get(id=int(archive_id), workspace=workspace, status=TenantArchive.Status.READY)
    except (TenantArchive.DoesNotExist, ValueError):
        raise ArchiveRefused("No such restore point.") from None


# --- restore and move ------------------------------------------------------------------------------------------------


@dataclass
class Placement:
    provider: str
    region: str
    server: str | None = None  # administered servers: this one; None: the least loaded in the region


@dataclass
class Outcome:
    workspace: Workspace
    database: VectorDatabase
    archive: TenantArchive | None = None
    documents: int = 0
    counts: dict[str, int] = field(default_factory=dict)


Step = Callable[[str], None]


@contextlib.contextmanager
def _operation(workspace: Workspace, name: str, on_step: Step | None) -> Iterator[tuple[VectorDatabase, Step]]:
    """One restore or move of the workspace at a time; while it runs its registry row says so (writes are refused)
    and shows the step it is at. A handled failure clears the mark; a dead worker leaves it for the re-run."""
    with advisory_lock(f"tenant-archive-operation:{workspace.id}", wait=False) as acquired:
        if not acquired:
            raise ArchiveRefused(f"A restore or move of {workspace.label} is running; wait for it to finish.")
        source = _ready_database(workspace)
        VectorDatabase.objects.filter(id=source.id).update(
            operation=name, operation_step="starting", operation_started_at=timezone.now(), updated_at=timezone.now()
        )

        def step(text: str) -> None:
            VectorDatabase.objects.filter(id=source.id).update(operation_step=text[:200])
            logger.info("%s of workspace %s: %s", name, workspace.id, text)
            if on_step:
                on_step(text)

        try:
            _streams_wait(workspace, step)
            yield source, step
        except (ArchiveRefused, ArchiveFailed):
            _operation_clear(source)
            raise


def _streams_wait(workspace: Workspace, step: Step) -> None:
    """New writes are refused from now on; answers already streaming store their final message first (in the database
    about to be archived or switched away from). Bounded: past it the operation is refused rather than lose one."""
    limit = settings.TENANT_SWITCH_STREAM_WAIT_SECONDS
    still = workspace_streams_wait(
        workspace.id, limit, on_waiting=lambda count: step(f"waiting for {count} chat answer(s) to finish")
    )
    if still:
        raise ArchiveRefused(
            f"{still} chat answer(s) in {workspace.label} were still streaming after {limit:g} s; nothing changed. "
            "Try again in a minute."
        )


def _operation_clear(source: VectorDatabase) -> None:
    VectorDatabase.objects.filter(id=source.id).update(operation="", operation_step="", operation_started_at=None)


def _refuse_if_busy(workspace: Workspace) -> None:
    reasons = [reason for part in _PARTS.values() if (reason := part.busy(workspace))]
    if reasons:
        raise ArchiveRefused(" ".join(reasons))


def _leftovers_remove(source: VectorDatabase) -> None:
    """Databases an earlier run built for this workspace and died before switching to, and the one an earlier run
    switched away from and died before dropping: they go."""
    left = VectorDatabase.objects.filter(replaces=source, workspace__isnull=True).exclude(status=Status.DELETED)
    replaced = VectorDatabase.objects.filter(id=source.replaces_id or 0, workspace__isnull=True, status=Status.DELETING)
    for row in [*left, *replaced]:
        logger.warning("removing %s, left by an interrupted restore or move", row.tenant_key)
        vector_database_deprovision(row.id)


def _database_build(
    opened: OpenedArchive, placement: Placement, step: Step, *, replaces: VectorDatabase | None, workspace=None
) -> tuple[VectorDatabase, dict[str, int]]:
    """A new database with the archive's content, at the latest schema, checked against the manifest's counts. Not
    the workspace's yet (unless `workspace` is given: an import). Raises ArchiveFailed after removing it."""
    new = VectorDatabase.objects.create(
        workspace=workspace,
        provider=placement.provider,
        region=placement.region,
        status=Status.PROVISIONING,
        claimed_at=timezone.now(),  # never taken for a pool member
        replaces=replaces,
        attempts=1,
    )
    try:
        step(f"creating the new database ({placement.provider}, {placement.server or placement.region})")
        provisioner = get_provisioner(placement.provider)
        if placement.server:
            placed = provisioner.create(new.tenant_key, placement.region, on_server=placement.server)  # type: ignore[call-arg]
        else:
            placed = provisioner.create(new.tenant_key, placement.region)
        _set_location(new, placed)
        new.save(update_fields=["external_id", "server", "region", "encrypted_credentials", "updated_at"])
        target = schema_target(new.tenant_key, placed.migration_dsn)
        with get_registry().connection(target) as connection:
            own_tables_drop(connection)
        step("restoring the database")
        database_restore(opened.database, placed.migration_dsn, _bin_dir())
        migrated = tenant_database_migrate(target)
        step("checking the restored database")
        with get_registry().connection(target) as connection:
            counts = table_row_counts(connection)
            model = embedding_model_recorded(connection)
        expected = opened.manifest.get("counts", {})
        if any(counts.get(table, 0) != rows for table, rows in expected.items()):
            raise ArchiveFailed(f"the restored database holds {counts}, the archive recorded {expected}")
        new.schema_version = migrated.schema_version
        new.embedding_model = model.name if model else opened.manifest["embedding_model"]["name"]
        new.embedding_dimensions = model.dimensions if model else opened.manifest["embedding_model"]["dimensions"]
        new.save(update_fields=["schema_version", "embedding_model", "embedding_dimensions", "updated_at"])
        return new, counts
    except (*ARCHIVE_ERRORS, ArchiveFailed) as error:
        logger.error("building a database from an archive failed: %s", error)
        _database_discard(new)
        raise ArchiveFailed(f"The archive could not be restored: {error}") from error


def _database_discard(row: VectorDatabase) -> None:
    try:
        vector_database_deprovision(row.id)
    except TRANSIENT_ERRORS:  # the next run (or `tenants reconcile`) removes it
        logger.warning("could not remove %s; the next run removes it", row.tenant_key)


def _switch(
    workspace: Workspace, source: VectorDatabase, new: VectorDatabase, staged: list[StagedRows], step: Step
) -> None:
    """In one transaction: the workspace's registry row is the new database, its rows those of the archive. Then
    the old database goes."""
    with transaction.atomic():
        VectorDatabase.objects.select_for_update().filter(id=source.id).first()
        VectorDatabase.objects.filter(id=source.id).update(
            workspace=None, status=Status.DELETING, operation="", operation_step="", updated_at=timezone.now()
        )
        VectorDatabase.objects.filter(id=new.id).update(
            workspace=workspace, status=Status.READY, ready_at=timezone.now(), updated_at=timezone.now()
        )
        for rows in staged:
            rows.commit()
    step("dropping the old database")
    for rows in staged:
        rows.finish()
    get_registry().close_tenant(source.tenant_key)
    _database_discard(source)


def workspace_restore(
    workspace: Workspace,
    *,
    archive: TenantArchive | None = None,
    path: Path | None = None,
    at: datetime | None = None,
    on_step: Step | None = None,
) -> Outcome:
    """Restore the workspace from one of its archives, an archive file of its own, or the newest archive at or
    before `at`: a new database from the archive, checked, then the switch; the main database's documents and files
    become the archive's (documents made since are gone, those deleted since are back)."""
    if archive is None and path is None:
        if at is None:
            raise ArchiveRefused("Say what to restore from: an archive, or a moment (--at).")
        if _ready_database(workspace).provider == "neon":
            return _neon_point_in_time(workspace, at, on_step)
        archive = restore_point_at(workspace, at)
    if archive is not None:
        if archive.workspace_id != workspace.id or archive.status != TenantArchive.Status.READY:
            raise ArchiveRefused("That archive is not a ready archive of this workspace.")
    with _operation(workspace, "restoring", on_step) as (source, step):
        _refuse_if_busy(workspace)
        _leftovers_remove(source)
        step("reading the archive")
        with _opened(archive=archive, path=path) as opened:
            archived = opened.manifest.get("workspace", {})
            if archived.get("id") != workspace.id or archived.get("slug") != workspace.slug:
                raise ArchiveRefused(
                    f"This archive is of workspace {archived.get('slug')!r}, not {workspace.slug!r}: use "
                    "`tenants import` to make a workspace from it."
                )
            # Beside the old one: the same server of ours (or the same Neon region).
            placement = Placement(
                source.provider, source.region, source.server if source.provider == "postgres" else None
            )
            return _replace(workspace, source, opened, placement, step, archive)


@contextlib.contextmanager
def _opened(path: Path | None = None, archive: TenantArchive | None = None) -> Iterator[OpenedArchive]:
    try:
        with contextlib.ExitStack() as stack:
            if archive is not None:
                path = stack.enter_context(archive_file(archive))
            assert path is not None
            opened = stack.enter_context(archive_open(path))
            yield opened
    except ArchiveUnreadable as error:
        raise ArchiveRefused(str(error)) from None


def _replace(
    workspace: Workspace,
    source: VectorDatabase,
    opened: OpenedArchive,
    placement: Placement,
    step: Step,
    archive: TenantArchive | None,
) -> Outcome:
    new, counts = _database_build(opened, placement, step, replaces=source)
    step("putting back the documents and their files")
    staged: list[StagedRows] = []
    try:
        main_rows = opened.main_rows()
        for name, part in _PARTS.items():
            staged.append(part.stage(workspace, main_rows["parts"].get(name, {}), opened.folder, False))
        step("switching to the new database")
        _switch(workspace, source, new, staged, step)
    except (*ARCHIVE_ERRORS, ValueError, KeyError) as error:
        for rows in staged:
            rows.abort()
        _database_discard(new)
        raise ArchiveFailed(f"The restore failed before the switch; nothing changed: {error}") from error
    if placement.region != source.region:
        for part in _PARTS.values():
            part.relocate(workspace, placement.region)
    new.refresh_from_db()
    documents = sum(len(rows.document_ids) for rows in staged)
    logger.info("workspace %s now on %s (%s)", workspace.id, new.tenant_key, new.server)
    return Outcome(workspace=workspace, database=new, archive=archive, documents=documents, counts=counts)


def _neon_point_in_time(workspace: Workspace, at: datetime, on_step: Step | None) -> Outcome:
    """On Neon, `--at` is Neon's own point in time: the branch restore endpoint takes the database back to that moment
    (Neon switches it in one step; the state before is kept as a branch). Then the schema is brought to the latest
    version and the main database's rows are made to agree with what the database holds at that moment."""
    with _operation(workspace, "restoring", on_step) as (source, step):
        _refuse_if_busy(workspace)
        step(f"restoring the Neon branch to {at.isoformat()}")
        try:
            get_provisioner("neon").branch_restore(source.external_id, at.isoformat())  # type: ignore[attr-defined]
        except ProvisioningError as error:
            raise ArchiveRefused(str(error)) from None
        get_registry().close_tenant(source.tenant_key)  # no connection keeps the state from before
        step("bringing the schema up to date")
        migrated = tenant_database_migrate(schema_target(source.tenant_key, _migration_dsn(source)))
        with get_registry().connection(vector_database_target(source)) as connection:
            counts = table_row_counts(connection)
            present = {row[0] for row in connection.execute("SELECT DISTINCT document_id FROM embeddings").fetchall()}
        step("putting the documents in agreement with the restored database")
        earlier = (
            TenantArchive.objects.filter(workspace=workspace, status=TenantArchive.Status.READY, created_at__lte=at)
            .order_by("-created_at", "-id")
            .first()
        )
        with contextlib.ExitStack() as stack:
            opened = stack.enter_context(_opened(archive=earlier)) if earlier else None
            for part in _PARTS.values():
                part.agree(workspace, present, at, opened)
        VectorDatabase.objects.filter(id=source.id).update(
            schema_version=migrated.schema_version, operation="", operation_step="", operation_started_at=None,
            updated_at=timezone.now(),
        )  # fmt: skip
    source.refresh_from_db()
    logger.info("workspace %s restored to %s on Neon", workspace.id, at.isoformat())
    return Outcome(workspace=workspace, database=source, archive=earlier, documents=len(present), counts=counts)


def restore_point_at(workspace: Workspace, at: datetime) -> TenantArchive:
    """The newest ready archive taken at or before `at` (the state of the workspace then, as near as we have it)."""
    archive = (
        TenantArchive.objects.filter(workspace=workspace, status=TenantArchive.Status.READY, created_at__lte=at)
        .order_by("-created_at", "-id")
        .first()
    )
    if archive is None:
        oldest = restore_points(workspace)[-1:]
        hint = f"the oldest is {oldest[0].created_at.isoformat()}" if oldest else "it has no backup yet"
        raise ArchiveRefused(f"{workspace.label} has no restore point at or before {at.isoformat()}; {hint}.")
    return archive


def placement_for(workspace: Workspace, *, server: str | None, region: str | None, provider: str | None) -> Placement:
    """Where a move takes the workspace; ArchiveRefused for a target that does not exist or where it already is."""
    current = _ready_database(workspace)
    provider = provider or current.provider
    if provider not in ("postgres", "neon"):
        raise ArchiveRefused(f"Unknown provider {provider!r}: use postgres or neon.")
    if provider == "neon" and not settings.NEON_API_KEY:
        raise ArchiveRefused("Neon is not configured here (NEON_API_KEY is not set).")
    servers = {entry["name"]: entry for entry in settings.TENANT_POSTGRES_SERVERS}
    if server is not None:
        if provider != "postgres" or server not in servers:
            known = ", ".join(servers) or "none"
            raise ArchiveRefused(f"No server {server!r} in TENANT_POSTGRES_SERVERS (known: {known}).")
        placement = Placement("postgres", servers[server]["region"], server)
    elif provider == "postgres":
        region = region or (current.region if current.provider == "postgres" else settings.TENANT_DEFAULT_REGION)
        if not any(entry["region"] == region for entry in servers.values()):
            regions = ", ".join(sorted({entry["region"] for entry in servers.values()})) or "none"
            raise ArchiveRefused(f"No server in region {region!r} (regions: {regions}).")
        placement = Placement("postgres", region)
    else:
        placement = Placement(
            "neon", region or (current.region if current.provider == "neon" else settings.NEON_REGION)
        )
    same_place = placement.server == current.server if placement.server else placement.region == current.region
    if placement.provider == current.provider and same_place:
        raise ArchiveRefused(f"{workspace.label} is already there ({current.provider}, {current.server}).")
    return placement


def workspace_move(
    workspace: Workspace,
    *,
    server: str | None = None,
    region: str | None = None,
    provider: str | None = None,
    on_step: Step | None = None,
) -> Outcome:
    """Move the workspace's database: archive it (writes refused from now on), restore the archive on the target,
    switch, drop the source. Its files follow when the region changes."""
    placement = placement_for(workspace, server=server, region=region, provider=provider)
    with _operation(workspace, "moving", on_step) as (source, step):
        _refuse_if_busy(workspace)
        _leftovers_remove(source)
        step("archiving the database")
        archive = archive_create(workspace, TenantArchive.Kind.MOVE)
        with _opened(archive=archive) as opened:
            return _replace(workspace, source, opened, placement, step, archive)


# --- import ----------------------------------------------------------------------------------------------------------


def workspace_import(path: Path, owner: User, name: str | None = None, region: str | None = None) -> Outcome:
    """A new team workspace owned by `owner` from an archive (ours, or the decrypted one an owner downloaded): its
    database, documents and files; its conversations become the owner's. Members are not carried over: an archive
    must not give anyone access here."""
    from tenants.models import new_workspace_slug
    from tenants.services import default_region

    region = region or default_region()
    with _opened(Path(path)) as opened:
        archived = opened.manifest.get("workspace", {})
        workspace_name = (name or archived.get("name") or "Imported workspace")[:150]
        with transaction.atomic():
            workspace = Workspace.objects.create(
                name=workspace_name, slug=new_workspace_slug(workspace_name), owner=owner, personal=False
            )
            Membership.objects.create(workspace=workspace, user=owner, role=Membership.Role.OWNER)
        placement = Placement(settings.TENANT_PROVIDER, region)
        try:
            new, counts = _database_build(opened, placement, lambda _text: None, replaces=None, workspace=workspace)
        except ArchiveFailed:
            workspace.delete()
            raise
        staged: list[StagedRows] = []
        try:
            main_rows = opened.main_rows()
            for part_name, part in _PARTS.items():
                staged.append(part.stage(workspace, main_rows["parts"].get(part_name, {}), opened.folder, True))
            mapping = {old: new_id for rows in staged for old, new_id in rows.document_ids.items()}
            authors = {
                int(member["user_id"]): owner.id for member in main_rows.get("members", []) if member.get("user_id")
            }
            with get_registry().connection(schema_target(new.tenant_key, _migration_dsn(new))) as connection:
                document_ids_renumber(connection, mapping)
                conversation_authors_renumber(connection, authors)
            with transaction.atomic():
                for rows in staged:
                    rows.commit()
                VectorDatabase.objects.filter(id=new.id).update(status=Status.READY, ready_at=timezone.now())
            for rows in staged:
                rows.finish()
        except (*ARCHIVE_ERRORS, ValueError, KeyError) as error:
            for rows in staged:
                rows.abort()
            _database_discard(new)
            workspace.delete()
            raise ArchiveFailed(f"The import failed; nothing was kept: {error}") from error
    new.refresh_from_db()
    documents = sum(len(rows.document_ids) for rows in staged)
    logger.info("workspace %s imported from %s (%d documents)", workspace.id, path, documents)
    return Outcome(workspace=workspace, database=new, documents=documents, counts=counts)


def _migration_dsn(row: VectorDatabase) -> str:
    return vector_database_credentials(row)["migration_dsn"]
