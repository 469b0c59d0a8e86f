"""`make run`: the whole app on this machine with its embedded defaults, stopped cleanly by Ctrl-C.

Starts (or reuses) the embedded PostgreSQL and a Redis, applies migrations, then runs the ASGI web server and a
Celery worker as child processes. The worker runs Celery beat too, which keeps the warm pool of tenant databases
filled (`TENANT_WARM_POOL_REFILL_SECONDS`), and an OCR worker serves
the scanned-pages queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from config.settings_paths import BASE_DIR, data_root_from_environment
from config.web_server import web_server_command


def _worker_command(python: str, queue: str, concurrency: int, name: str) -> list[str]:
    return [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
            "--queues", queue, "--hostname", f"{name}@%h"]  # fmt: skip


def ingest_worker_command(python: str) -> list[str]:
    return _worker_command(python, os.environ.get("CELERY_QUEUE") or "silo", 2, "celery")  # settings' default queue


def provisioning_worker_command(python: str, beat_schedule: Path) -> list[str]:
    # settings.CELERY_PROVISIONING_QUEUE: a worker of its own, so ingest never keeps a sign-up waiting. Beat runs inside
    # it (the warm pool's refill is a provisioning task); its schedule file lives with the rest of the data.
    queue = f"{os.environ.get('CELERY_QUEUE') or 'silo'}-provisioning"
    return [*_worker_command(python, queue, 1, "provisioning"), "--beat", "--schedule", str(beat_schedule)]


def main() -> int:
    from config.embedded_postgres import is_running, stop
    from config.local_redis import ensure_redis

    data_root = data_root_from_environment()
    data_root.mkdir(parents=True, exist_ok=True)
    embedded = not os.environ.get("DATABASE_URL")
    postgres_was_running = embedded and is_running(data_root)

    redis = ensure_redis(data_root, os.environ.get("REDIS_URL"))
    environment = dict(os.environ, REDIS_URL=redis.url, PYTHONUNBUFFERED="1")
    # Password-reset and verification mail is printed to this terminal: no mail server needed on a laptop.
    environment.setdefault("EMAIL_BACKEND", "console")
    host = os.environ.get("SILO_HOST", "127.0.0.1")
    port = os.environ.get("SILO_PORT", "8000")
    python = sys.executable

    children: list[subprocess.Popen] = []
    initial_fill: list[subprocess.Popen] = []  # a one-off: its exit stops nothing

    def shut_down(*_args) -> None:
        for child in children + initial_fill:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children + initial_fill:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        redis.stop()
        if embedded and not postgres_was_running:
            stop(data_root)

    try:
        # Importing settings starts the embedded server on demand; migrate creates the main database's tables.
        subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=BASE_DIR, env=environment, check=True)
        children.append(
            subprocess.Popen(
                ingest_worker_command(python),
                cwd=BASE_DIR,
                env=environment,
            )
        )
        # Scanned PDFs have a queue and a worker of their own (one process: OCR takes a core per page).
        main_queue = os.environ.get("CELERY_QUEUE") or "silo"
        ocr_queue = os.environ.get("CELERY_OCR_QUEUE") or f"{main_queue}-ocr"
        children.append(
            subprocess.Popen(
                [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--concurrency", "1",
                 "--queues", ocr_queue, "--hostname", "ocr@%h"],
                cwd=BASE_DIR,
                env=environment,
            )
        )  # fmt: skip
        # Provisioning has a worker of its own, so a queue full of ingest never keeps a sign-up waiting.
        children.append(
            subprocess.Popen(
                provisioning_worker_command(python, data_root / "celerybeat-schedule"), cwd=BASE_DIR, env=environment
            )
        )
        children.append(
            subprocess.Popen(
                web_server_command(host, port),
                cwd=BASE_DIR,
                env=environment,
            )
        )
        # The warm pool is filled once now (beat's first refill comes one interval later), beside the others.
        initial_fill.append(
            subprocess.Popen([python, "manage.py", "tenants", "pool", "fill"], cwd=BASE_DIR, env=environment)
        )
        print(f"\n  Silo is running at http://{host}:{port}/  (Ctrl-C stops everything)\n", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a Silo process exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping Silo...", flush=True)
        return 0
    finally:
        shut_down()


if __name__ == "__main__":
    sys.exit(main())
