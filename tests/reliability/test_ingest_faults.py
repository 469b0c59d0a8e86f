"""Ingestion survives what production throws at it: a worker killed mid-parse, mid-embedding and mid-write, Redis
restarted under a running ingest, the tenant database going away during the write. Each time the document ends ready
with exactly the chunks a clean ingest makes (same count, same text, the deterministic ids, no duplicates).

Every test here runs its own Celery worker process on its own Redis server and queue, so it can kill the worker (and
restart Redis) without touching the session's worker or anybody else's.

Redelivery: with `acks_late` a killed worker's message stays in kombu's `unacked` hash, and a worker gives it back to
the queue once it is older than the visibility timeout (an hour here; at least 60 s by our settings). Rather than
wait, the tests move the message's delivery time back past the timeout (and let the tenant's fairness-slot lease
expire, as it would by then); the next worker's own `restore_visible` pass at start-up then redelivers it, through
kombu's real code. Were the message acked early, there would be nothing to restore and the tests would fail.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from psycopg import sql
from pypdf import PdfReader, PdfWriter

from config.celery import app
from config.local_redis import LocalRedis, start_redis
from config.settings_paths import BASE_DIR
from documents import services
from documents.chunking import chunk_pages
from documents.models import Document
from documents.parsing import extract_pages
from documents.tasks import ingest_document
from tenants import services as tenant_services
from tenants.models import User, VectorDatabase
from tests.conftest import CeleryWorker, _worker_environment
from tests.helpers import personal_workspace
from vectordb.chunks import chunk_id

EVAL_PDF = Path("/work/shared/eval/pdfs/clsguide.pdf")
PAGES = 10  # about 30 chunks: long enough to be caught while embedding, short enough to keep the suite fast
SETTLE_TIMEOUT_SECONDS = 120  # a fresh worker loads torch and the model: slow on a busy machine
SLOT_PREFIX = "silo-faults"
Status = Document.Status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pdf() -> bytes:
    reader = PdfReader(EVAL_PDF)
    writer = PdfWriter()
    for page in reader.pages[:PAGES]:
        writer.add_page(page)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of this test's own: the broker, the fairness slots and the cache of its worker."""
    running = start_redis(tmp_path / "redis-data")
    holder = {"redis": running}
    yield holder
    holder["redis"].stop()


@pytest.fixture
def tenant_database(owner):
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    vector_database = tenant_services.vector_database_provision(row.id)
    assert vector_database.status == VectorDatabase.Status.READY, vector_database.last_error
    yield vector_database
    tenant_services.vector_database_deprovision(vector_database.id)


class IsolatedWorker(CeleryWorker):
    """A worker on a private Redis and queue, in a process group of its own so SIGKILL takes its pool children too
    (killing only the parent would leave a child finishing the task: not a crash at all)."""

    def __init__(self, database_name: str, log_path: Path, redis_url: str, queue: str, media_root: Path):
        super().__init__(database_name, log_path, concurrency=1)
        self.redis_url = redis_url
        self.queue = queue
        self.media_root = media_root

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        environment = _worker_environment(self.database_name)
        environment.update(
            REDIS_URL=self.redis_url,
            CELERY_QUEUE=self.queue,
            CACHE_KEY_PREFIX=SLOT_PREFIX,
            SILO_MEDIA_ROOT=str(self.media_root),
        )
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker",
                "--loglevel", "INFO", "--concurrency", str(self.concurrency), "--queues", self.queue,
                "--hostname", f"faults-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            cwd=BASE_DIR, env=environment, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            if " ready." in self.log():
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_bytes()[self._log_offset :].decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole worker, as when its machine goes away: no cleanup, no ack, no status update."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def workers(private_redis, media_root, tmp_path):
    """Starts isolated workers on demand (all on one queue); stops whatever is still running afterwards."""
    started: list[IsolatedWorker] = []
    queue = f"faults-{uuid.uuid4().hex[:8]}"

    def start() -> IsolatedWorker:
        worker = IsolatedWorker(
            connection.settings_dict["NAME"], tmp_path / "worker.log", private_redis["redis"].url, queue, media_root
        )
        worker.start()
        started.append(worker)
        return worker

    start.queue = queue
    yield start
    for worker in started:
        worker.stop()


# --- helpers -------------------------------------------------------------------------------------------------------


def enqueue(redis_url: str, queue: str, document_id: int) -> None:
    """What `document_upload` does, sent to the private broker and queue."""
    with app.connection_for_write(redis_url) as broker:
        ingest_document.apply_async((document_id,), queue=queue, connection=broker)


def upload(owner: User, pdf: bytes) -> Document:
    return services.document_upload(owner, SimpleUploadedFile("guide.pdf", pdf, "application/pdf"), enqueue=False)


def expected_chunks(document: Document) -> list[tuple[uuid.UUID, int, str]]:
    """What a clean ingest writes: the same parse and chunking, in-process."""
    from django.conf import settings

    chunks = chunk_pages(extract_pages(document.file.path), settings.CHUNK_SIZE, settings.CHUNK_OVERLAP)
    return [(chunk_id(document.id, chunk.index), chunk.index, chunk.text.replace("\x00", "")) for chunk in chunks]


def tenant_dsn(vector_database: VectorDatabase) -> str:
    return tenant_services.vector_database_credentials(VectorDatabase.objects.get(id=vector_database.id))["dsn"]


def stored_chunks(vector_database: VectorDatabase) -> list[tuple[uuid.UUID, int, str]]:
    """Every row of the tenant's embeddings table (any document), read with the tenant's own credentials."""
    with psycopg.connect(tenant_dsn(vector_database)) as tenant:
        return [
            tuple(row)
            for row in tenant.execute("SELECT id, chunk_index, content FROM embeddings ORDER BY chunk_index, id")
        ]


def wait_for(document: Document, predicate, what: str, timeout: float = SETTLE_TIMEOUT_SECONDS, worker=None):
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        row = Document.objects.filter(id=document.id).values("status", "progress", "error_message", "attempts").get()
        seen = row
        if predicate(row):
            return row
        time.sleep(0.005)
    raise AssertionError(f"document never {what}; last seen {seen}\n{worker.log() if worker else ''}")


def advance_past_visibility_timeout_and_slot_lease(redis_url: str, document: Document) -> int:
    """What an hour of waiting does: every unacked message becomes due for restoring, the dead worker's ingest slot
    lease (its workspace's) expires. Returns how many unacked messages there were."""
    client = redis.Redis.from_url(redis_url)
    unacked = client.zrange("unacked_index", 0, -1)
    if unacked:
        client.zadd("unacked_index", dict.fromkeys(unacked, 0))
    for key in client.scan_iter(f"{SLOT_PREFIX}:ingest:{document.workspace_id}:*"):
        client.delete(key)
    return len(unacked)


def assert_ingested_exactly_once(document: Document, vector_database: VectorDatabase) -> None:
    document.refresh_from_db()
    expected = expected_chunks(document)
    assert (document.status, document.error_message, document.progress) == (Status.READY, "", 1.0)
    assert document.chunk_count == len(expected) > 10
    stored = stored_chunks(vector_database)
    assert sorted(stored) == sorted(expected)  # same ids, indexes and text: nothing lost, nothing twice
    assert len({row[0] for row in stored}) == len(stored)


# --- a worker killed mid-ingest --------------------------------------------------------------------------------------


SLOW_WRITE_TRIGGER = """
CREATE FUNCTION silo_test_slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.chunk_index = 5 THEN PERFORM pg_sleep(600); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER silo_test_slow_write BEFORE INSERT ON embeddings FOR EACH ROW EXECUTE FUNCTION silo_test_slow_write();
"""
DROP_SLOW_WRITE_TRIGGER = "DROP TRIGGER silo_test_slow_write ON embeddings; DROP FUNCTION silo_test_slow_write();"


def tenant_admin(admin_dsn: str, vector_database: VectorDatabase) -> psycopg.Connection:
    return psycopg.connect(admin_dsn, dbname=vector_database.external_id, autocommit=True)


def terminate_tenant_backends(admin: psycopg.Connection, vector_database: VectorDatabase) -> int:
    return len(
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [vector_database.external_id],
        ).fetchall()
    )


def wait_for_write_in_progress(admin: psycopg.Connection, vector_database: VectorDatabase, worker) -> None:
    """Until the worker's COPY sits in the slow-write trigger: five rows written, the transaction open."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while not admin.execute(
        "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'", [vector_database.external_id]
    ).fetchone():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_workers_killed_while_parsing_embedding_and_writing_leave_nothing_and_the_last_redelivery_ends_ready_once(
    owner, tenant_database, workers, private_redis, pdf, admin_dsn
):
    """One document, one message, four workers: the first three are SIGKILLed at successive stages."""
    document = upload(owner, pdf)
    redis_url = private_redis["redis"].url
    enqueue(redis_url, workers.queue, document.id)
    killed_at = []

    # 1. While parsing: a fresh worker loads the embedding model after marking the document `parsing`.
    worker = workers()
    killed_at.append(wait_for(document, lambda row: row["status"] == Status.PARSING, "parsing", worker=worker))
    worker.kill()
    assert stored_chunks(tenant_database) == []
    assert advance_past_visibility_timeout_and_slot_lease(redis_url, document) == 1  # acks_late kept the message

    # 2. While embedding (before the last batch is done).
    worker = workers()
    killed_at.append(
        wait_for(
            document,
            lambda row: row["status"] == Status.EMBEDDING and row["progress"] < services.PROGRESS_EMBEDDED,
            "embedding",
            worker=worker,
        )
    )
    worker.kill()
    assert stored_chunks(tenant_database) == []
    assert advance_past_visibility_timeout_and_slot_lease(redis_url, document) == 1

    # 3. In the middle of writing the chunks: the COPY stops after five rows, inside its transaction.
    with tenant_admin(admin_dsn, tenant_database) as admin:
        admin.execute(SLOW_WRITE_TRIGGER)
        worker = workers()
        wait_for_write_in_progress(admin, tenant_database, worker)
        killed_at.append(Document.objects.filter(id=document.id).values("status", "progress", "attempts").get())
        worker.kill()
        # The dead worker's server process would notice when its sleep ends; end it now, as a restart would.
        assert terminate_tenant_backends(admin, tenant_database) >= 1
        admin.execute(DROP_SLOW_WRITE_TRIGGER)
    assert stored_chunks(tenant_database) == []  # the five rows died with their transaction
    assert [(row["status"], row["attempts"]) for row in killed_at] == [
        (Status.PARSING, 1), (Status.EMBEDDING, 2), (Status.EMBEDDING, 3)
    ]  # fmt: skip
    assert killed_at[2]["progress"] == services.PROGRESS_EMBEDDED  # embedded, never written
    assert advance_past_visibility_timeout_and_slot_lease(redis_url, document) == 1

    # 4. The last redelivery finishes the job, once.
    worker = workers()
    settled = wait_for(document, lambda row: row["status"] in {Status.READY, Status.FAILED}, "settled", worker=worker)

    assert settled["attempts"] == 4
    assert_ingested_exactly_once(document, tenant_database)


# --- Redis restarted under a running ingest ----------------------------------------------------------------------------


def test_ingest_completes_when_redis_restarts_in_the_middle_of_it(
    owner, tenant_database, workers, private_redis, pdf, tmp_path
):
    document = upload(owner, pdf)
    running: LocalRedis = private_redis["redis"]
    port = int(running.url.rsplit(":", 1)[1].split("/")[0])
    enqueue(running.url, workers.queue, document.id)
    worker = workers()
    wait_for(document, lambda row: row["status"] in {Status.PARSING, Status.EMBEDDING}, "started", worker=worker)

    # A clean restart (SHUTDOWN SAVE, then the server comes back with its data): what a managed Redis does.
    redis.Redis.from_url(running.url).shutdown(save=True)
    running.process.wait(timeout=10)
    time.sleep(1)
    private_redis["redis"] = start_redis(tmp_path / "redis-data", port=port)

    settled = wait_for(document, lambda row: row["status"] in {Status.READY, Status.FAILED}, "settled", worker=worker)

    assert settled["status"] == Status.READY, worker.log()
    assert_ingested_exactly_once(document, tenant_database)
    # And the worker is still serving its queue on the restarted server: a second document goes through too (other
    # bytes: the same file twice is refused).
    second = upload(owner, pdf + b"\n% a second copy\n")
    enqueue(private_redis["redis"].url, workers.queue, second.id)
    assert wait_for(second, lambda row: row["status"] == Status.READY, "ready", worker=worker)["attempts"] == 1


# --- the tenant database going away during the write -------------------------------------------------------------------


def test_the_tenant_database_going_away_during_the_write_is_retried_and_leaves_no_partial_chunks(
    owner, tenant_database, workers, private_redis, pdf, admin_dsn
):
    document = upload(owner, pdf)
    database = sql.Identifier(tenant_database.external_id)
    with tenant_admin(admin_dsn, tenant_database) as admin:
        admin.execute(SLOW_WRITE_TRIGGER)
        enqueue(private_redis["redis"].url, workers.queue, document.id)
        worker = workers()
        wait_for_write_in_progress(admin, tenant_database, worker)
        # Mid-write, the database "restarts": every session ends and new ones are refused for a while.
        with psycopg.connect(admin_dsn, autocommit=True) as server:
            server.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(database))
        assert terminate_tenant_backends(admin, tenant_database) >= 1
        admin.execute(DROP_SLOW_WRITE_TRIGGER)

        interrupted = wait_for(document, lambda row: row["status"] == Status.QUEUED, "re-queued", worker=worker)
        assert interrupted["error_message"] == services.TEMPORARY_FAILURE_MESSAGE
        assert admin.execute("SELECT count(*) FROM embeddings").fetchone() == (0,)  # nothing half-written
    with psycopg.connect(admin_dsn, autocommit=True) as server:
        server.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(database))

    settled = wait_for(document, lambda row: row["status"] in {Status.READY, Status.FAILED}, "settled", worker=worker)

    # Two runs, but the transient failure gave its attempt back: only runs that die count against the document.
    assert settled["attempts"] == 1, worker.log()
    assert "Retry in" in worker.log()  # the task's TransientIngestError retry, not a redelivery
    assert_ingested_exactly_once(document, tenant_database)
