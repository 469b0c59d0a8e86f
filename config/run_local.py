"""`make run`: the whole app on this machine with its embedded defaults, stopped cleanly by Ctrl-C.

Starts (or reuses) the embedded PostgreSQL and a Redis, applies migrations, then runs the ASGI web server, a
Celery worker and an OCR worker (the scanned-pages queue) as child processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from config.settings_paths import BASE_DIR, data_root_from_environment


def main() -> int:
    from config.embedded_postgres import is_running, stop
    from config.local_redis import ensure_redis

    data_root = data_root_from_environment()
    data_root.mkdir(parents=True, exist_ok=True)
    embedded = not os.environ.get("DATABASE_URL")
    postgres_was_running = embedded and is_running(data_root)

    redis = ensure_redis(data_root, os.environ.get("REDIS_URL"))
    environment = dict(os.environ, REDIS_URL=redis.url, PYTHONUNBUFFERED="1")
    host = os.environ.get("SILO_HOST", "127.0.0.1")
    port = os.environ.get("SILO_PORT", "8000")
    python = sys.executable

    children: list[subprocess.Popen] = []

    def shut_down(*_args) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
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
                [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO", "--concurrency", "2"],
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
        children.append(
            subprocess.Popen(
                [python, "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", port, "--no-access-log"],
                cwd=BASE_DIR,
                env=environment,
            )
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
