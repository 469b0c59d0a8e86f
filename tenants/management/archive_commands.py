"""The `tenants` subcommands for archives: backup, backups, restore, move, import. Each calls one service in
tenants.archives and turns a refusal or failure into a one-line CommandError."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from tenants import archives
from tenants.management.lookup import user_for_command, workspace_for_command

WORKSPACE_HELP = "A workspace slug, or an email for that person's personal workspace."


def add_archive_subcommands(subcommands) -> None:
    backup = subcommands.add_parser("backup", help="Archive a workspace now (database, rows, files; encrypted).")
    backup.add_argument("identifier", metavar="SLUG_OR_EMAIL", help=WORKSPACE_HELP)
    backups = subcommands.add_parser("backups", help="A workspace's archives and backup status; --prune applies "
                                     "the retention policy.")  # fmt: skip
    backups.add_argument("identifier", metavar="SLUG_OR_EMAIL", help=WORKSPACE_HELP)
    backups.add_argument("--prune", action="store_true")
    restore = subcommands.add_parser("restore", help="Restore a workspace from an archive or to a moment.")
    restore.add_argument("identifier", metavar="SLUG_OR_EMAIL", help=WORKSPACE_HELP)
    source = restore.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="archive", metavar="ARCHIVE", help="An archive id (see `backups`) or file.")
    source.add_argument("--at", metavar="TIMESTAMP", help="ISO 8601: the newest archive at or before it.")
    move = subcommands.add_parser("move", help="Move a workspace's database to another server, region or provider.")
    move.add_argument("identifier", metavar="SLUG_OR_EMAIL", help=WORKSPACE_HELP)
    target = move.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", help="A server's name in TENANT_POSTGRES_SERVERS.")
    target.add_argument("--region", help="A region (the least-loaded server there).")
    target.add_argument("--provider", choices=["postgres", "neon"])
    imported = subcommands.add_parser("import", help="Create a team workspace from an archive file.")
    imported.add_argument("path", metavar="ARCHIVE")
    imported.add_argument("--owner", metavar="EMAIL", required=True)
    imported.add_argument("--name", default=None, help="The new workspace's name (default: the archived one's).")
    imported.add_argument("--region", default=None)


def _run(command: BaseCommand, action):
    def step(text: str) -> None:
        command.stdout.write(f"  {text}")

    try:
        return action(step)
    except (archives.ArchiveRefused, archives.ArchiveFailed) as error:
        raise CommandError(str(error)) from None


def backup(command: BaseCommand, identifier: str, **_) -> None:
    workspace = workspace_for_command(identifier)
    archive = _run(command, lambda _step: archives.archive_create(workspace))
    command.stdout.write(
        command.style.SUCCESS(
            f"{workspace.label}: archive {archive.id} ready ({archive.size_bytes} bytes, {archive.documents} "
            f"documents, {archive.chunks} chunks) at {archives.archive_location(archive)}"
        )
    )


def backups(command: BaseCommand, identifier: str, prune: bool, **_) -> None:
    workspace = workspace_for_command(identifier)
    if prune:
        command.stdout.write(f"{archives.archives_prune(workspace)} archive(s) past the retention removed")
    status = archives.backup_status(workspace)
    command.stdout.write(
        f"last success: {status.last_success or 'never'}; last attempt: {status.last_status or 'none'}"
        + (f" ({status.last_error})" if status.last_status == "failed" else "")
    )
    for archive in archives.archives_for(workspace):
        command.stdout.write(
            f"{archive.id:>6} {archive.created_at:%Y-%m-%dT%H:%M:%SZ} {archive.kind:<9} {archive.status:<7} "
            f"{archive.size_bytes:>12} {archive.documents:>5} docs {archive.chunks:>7} chunks"
        )


def restore(command: BaseCommand, identifier: str, archive: str | None, at: str | None, **_) -> None:
    workspace = workspace_for_command(identifier)
    if at is not None:
        moment = _moment(at)
        outcome = _run(command, lambda step: archives.workspace_restore(workspace, at=moment, on_step=step))
    else:
        assert archive is not None
        if archive.isdigit():
            chosen = _run(command, lambda _step: archives.archive_get_for_workspace(workspace, archive))
            outcome = _run(command, lambda step: archives.workspace_restore(workspace, archive=chosen, on_step=step))
        else:
            path = Path(archive)
            outcome = _run(command, lambda step: archives.workspace_restore(workspace, path=path, on_step=step))
    command.stdout.write(
        command.style.SUCCESS(
            f"{workspace.label}: restored ({outcome.documents} documents, {outcome.counts.get('embeddings', 0)} "
            f"chunks) on {outcome.database.server or outcome.database.provider}"
        )
    )


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--at {text!r} is not an ISO 8601 time, e.g. 2026-05-01T09:30:00Z") from None
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, UTC)


def move(command: BaseCommand, identifier: str, server: str | None, region: str | None, provider: str | None,
         **_) -> None:  # fmt: skip
    workspace = workspace_for_command(identifier)
    outcome = _run(
        command,
        lambda step: archives.workspace_move(workspace, server=server, region=region, provider=provider, on_step=step),
    )
    where = outcome.database.server or outcome.database.provider
    command.stdout.write(command.style.SUCCESS(f"{workspace.label}: moved to {where} ({outcome.database.region})"))


def import_archive(command: BaseCommand, path: str, owner: str, name: str | None, region: str | None, **_) -> None:
    person = user_for_command(owner)
    outcome = _run(command, lambda _step: archives.workspace_import(Path(path), person, name=name, region=region))
    command.stdout.write(
        command.style.SUCCESS(
            f"imported as workspace {outcome.workspace.slug} owned by {person.email} ({outcome.documents} documents, "
            f"{outcome.counts.get('embeddings', 0)} chunks)"
        )
    )


SUBCOMMANDS: dict[str, Callable[..., None]] = {
    "backup": backup,
    "backups": backups,
    "restore": restore,
    "move": move,
    "import": import_archive,
}
