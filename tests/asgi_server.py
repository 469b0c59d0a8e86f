"""The real web server for end-to-end tests and benchmarks: uvicorn serving config.asgi in a child process, as
`make run` serves it.

The parent binds the listening socket (port 0: no race for a free port) and hands it down; the child wraps it in a
TCP socket object rather than letting uvicorn's `--fd` take it for a Unix one, so asyncio turns Nagle's algorithm off
and streamed events (conversation, sources, tokens) leave at once instead of waiting for the next write.
config.asgi starts loading the embedding model in a background thread as the process starts.

The child:  python -m tests.asgi_server <listening socket fd> <log level> [<default thread-pool size>]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from config.settings_paths import BASE_DIR


class AsgiServerProcess:
    """`start()` returns once /healthz answers; `url` is where; `stop()` ends the process (terminate, then kill)."""

    def __init__(
        self,
        environment: dict[str, str],
        log_path: Path,
        *,
        log_level: str = "warning",
        default_threads: int | None = None,  # diagnosis: the size of every ThreadPoolExecutor left at its default
        ready_timeout_seconds: float = 90.0,
        processes: int = 1,  # web processes sharing the listening socket (the kernel spreads connections over them)
    ):
        self.environment = environment
        self.log_path = Path(log_path)
        self.log_level = log_level
        self.default_threads = default_threads
        self.ready_timeout_seconds = ready_timeout_seconds
        self.process_count = processes
        self.processes: list[subprocess.Popen] = []
        self.process: subprocess.Popen | None = None  # the first
        self.url = ""

    def start(self) -> AsgiServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        port = listener.getsockname()[1]
        command = [sys.executable, "-m", "tests.asgi_server", str(listener.fileno()), self.log_level]
        if self.default_threads:
            command.append(str(self.default_threads))
        try:
            for number in range(self.process_count):
                with self._log_path_of(number).open("wb") as log:  # this run's log only
                    self.processes.append(
                        subprocess.Popen(
                            command,
                            cwd=BASE_DIR,
                            env=self.environment,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            pass_fds=(listener.fileno(),),
                        )
                    )
            self.process = self.processes[0]
        finally:
            listener.close()  # the children hold their own copies
        self.url = f"http://127.0.0.1:{port}"
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_seconds
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"uvicorn exited with {process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"uvicorn not ready after {self.ready_timeout_seconds:g}s: {self.log_tail()}")

    def stop(self, timeout_seconds: float = 20.0) -> None:
        processes_stop(self.processes, timeout_seconds)

    def _log_path_of(self, number: int) -> Path:
        return self.log_path if number == 0 else self.log_path.with_name(f"{self.log_path.stem}-{number + 1}.log")

    def log_lines(self) -> list[str]:
        lines: list[str] = []
        for number in range(self.process_count):
            try:
                lines += self._log_path_of(number).read_text(errors="replace").splitlines()
            except FileNotFoundError:
                pass
        return lines

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines()[-lines:])


def main() -> None:
    listening_fd, log_level = int(sys.argv[1]), sys.argv[2]
    if len(sys.argv) > 3:
        _default_thread_pools_of(int(sys.argv[3]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import uvicorn

    listening = socket.socket(fileno=listening_fd)
    from config.web_server import WEB_MAX_CONCURRENCY, HeaderTimeoutH11Protocol

    # The same protocol and bounds as `make run`'s server (config.web_server.web_server_command).
    config = uvicorn.Config(
        "config.asgi:application",
        access_log=False,
        log_level=log_level,
        http=HeaderTimeoutH11Protocol,
        limit_concurrency=WEB_MAX_CONCURRENCY,
    )
    uvicorn.Server(config).run(sockets=[listening])


def _default_thread_pools_of(threads: int) -> None:
    import concurrent.futures.thread as thread

    original = thread.ThreadPoolExecutor.__init__

    def init(self, max_workers=None, *arguments, **options):
        original(self, max_workers or threads, *arguments, **options)

    thread.ThreadPoolExecutor.__init__ = init


if __name__ == "__main__":
    main()


def processes_stop(processes: list[subprocess.Popen], timeout_seconds: float) -> None:
    """Ask every running process to stop at once, then wait for each; one that does not stop in time is killed."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
