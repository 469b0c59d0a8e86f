"""`make run`'s moving parts: the embedded PostgreSQL, a local Redis, and the whole stack started and stopped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psycopg
import pytest
from django.conf import settings

from config import embedded_postgres
from config.local_redis import redis_reachable, redis_server_binary, start_redis
from config.settings_paths import BASE_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_embedded_postgres_keeps_its_data_across_restarts_and_has_pgvector(tmp_path):
    server = embedded_postgres.ensure_running(tmp_path, fast_unsafe=True)
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
            connection.execute("CREATE TABLE kept (v vector(3))")
            connection.execute("INSERT INTO kept VALUES ('[1,2,3]')")
            version = connection.execute("SHOW server_version_num").fetchone()[0]
        assert int(version) >= 180000

        assert embedded_postgres.stop(tmp_path) is True
        assert embedded_postgres.is_running(tmp_path) is False
        again = embedded_postgres.ensure_running(tmp_path, fast_unsafe=True)
        assert embedded_postgres.ensure_running(tmp_path) == again  # reused, not started twice

        with psycopg.connect(again.dsn()) as connection:
            assert connection.execute("SELECT v::text FROM kept").fetchone() == ("[1,2,3]",)
    finally:
        embedded_postgres.stop(tmp_path)


def test_embedded_postgres_demands_a_password(tmp_path):
    server = embedded_postgres.ensure_running(tmp_path, fast_unsafe=True)
    try:
        wrong = server.dsn().replace(server.password, "not-the-password")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong)
    finally:
        embedded_postgres.stop(tmp_path)


def test_a_redis_is_started_from_the_bundled_binary_when_none_runs(tmp_path):
    assert redis_server_binary() is not None
    redis = start_redis(tmp_path, port=_free_port())
    try:
        assert redis_reachable(redis.url)
    finally:
        redis.stop()
    assert not redis_reachable(redis.url)


def test_make_run_starts_the_whole_stack_and_ctrl_c_stops_it(tmp_path):
    port = _free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"SILO_MAIN_DATABASE", "SILO_TEST_DATABASE", "DATABASE_URL"}
    }
    environment.update(SILO_DATA_DIR=str(tmp_path / "data"), SILO_PORT=str(port), SILO_EMBEDDED_FAST="true")
    # A queue of its own: the session's test worker must not take this stack's tasks (a pool refill) into the tests'
    # database.
    environment["CELERY_QUEUE"] = f"silo-run-{os.getpid()}-{port}"
    log = (tmp_path / "run.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "config.run_local"], cwd=BASE_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {"status": "ok"}:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        # The worker is a real process too: wait for Celery's "ready" before stopping everything.
        while "ready." not in (tmp_path / "run.log").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        signup = httpx.get(f"http://127.0.0.1:{port}/accounts/signup/", timeout=10)
        assert signup.status_code == 200
        assert "Sign up" in signup.text
        assert f"Silo is running at http://127.0.0.1:{port}/" in (tmp_path / "run.log").read_text()
        assert embedded_postgres.is_running(tmp_path / "data")
        # The warm pool fills (TENANT_WARM_POOL_SIZE, 3 by default), and beat runs in the worker to keep it filled.
        while (pool := _pool_status(environment))["pooled"] < 3:
            assert process.poll() is None and time.monotonic() < deadline, (pool, (tmp_path / "run.log").read_text())
            time.sleep(1)
        assert (pool["target"], pool["pooled"]) == (3, 3)
        assert "beat: Starting..." in (tmp_path / "run.log").read_text()

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        embedded_postgres.stop(tmp_path / "data")
    assert not embedded_postgres.is_running(tmp_path / "data")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    output = (tmp_path / "run.log").read_text()
    assert "stopping Silo" in output
    # The worker really ran: Celery prints its banner, then a warm shutdown on Ctrl-C.
    assert "celery@" in output and "Warm shutdown" in output
    # So did the OCR worker, on the scanned-pages queue only.
    ocr_queue = f"{environment.get('CELERY_QUEUE') or 'silo'}-ocr"
    assert "ocr@" in output and f".> {ocr_queue} " in output


def _pool_status(environment: dict[str, str]) -> dict:
    status = subprocess.run(
        [sys.executable, "manage.py", "tenants", "pool", "status", "--json"],
        cwd=BASE_DIR, env=environment, capture_output=True, text=True, check=True,
    )  # fmt: skip
    [region] = json.loads(status.stdout)
    return region


def test_every_command_works_on_a_fresh_data_folder(tmp_path):
    """A newcomer's first command on the embedded default sets up the main database itself (no traceback)."""
    import redis

    queue = f"silo-fresh-{os.getpid()}"
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"SILO_MAIN_DATABASE", "SILO_TEST_DATABASE", "DATABASE_URL"}
    }
    environment.update(SILO_DATA_DIR=str(tmp_path / "data"), SILO_EMBEDDED_FAST="true", CELERY_QUEUE=queue)

    def manage(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *arguments],
            cwd=BASE_DIR,
            env=environment,
            capture_output=True,
            text=True,
            timeout=240,
        )

    try:
        added = manage("tenants", "add", "newcomer@example.com")
        shown = manage("tenants", "show", "newcomer@example.com", "--json")
        listed = manage("tenants", "list")
    finally:
        embedded_postgres.stop(tmp_path / "data")
        redis.Redis.from_url(settings.REDIS_URL).delete(queue)  # the provisioning task the command also enqueued

    assert added.returncode == 0, added.stderr
    assert "Traceback" not in added.stderr
    assert "setting up the embedded main database" in added.stderr
    assert "newcomer@example.com: ready (postgres, silo_t_" in added.stdout
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "ready"
    assert "setting up" not in shown.stderr  # once only
    assert listed.stdout.strip().endswith("1 workspace database(s)")
