"""What the emulators share: an HTTP server on a daemon thread, started and stopped, usable as a context manager."""

from __future__ import annotations

import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 refuses bursts of concurrent clients (they then wait a second to retry the SYN).
    request_queue_size = 256


class ServedEmulator:
    """Serves its `request_handler()` on its `bind_address()` from a daemon thread named `thread_name`. The handler
    reaches the emulator as `self.emulator` (set on a subclass made per start, so two emulators never share one)."""

    thread_name: str

    _server: EmulatorHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        handler_class = self.request_handler()
        handler = type(handler_class.__name__, (handler_class,), {"emulator": self})
        self._server = EmulatorHTTPServer(self.bind_address(), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def serve_until_stopped(self) -> None:
        """For a run by hand: serve until Ctrl-C or a plain `kill`, then stop cleanly."""
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        signal.signal(signal.SIGINT, lambda *_: stopping.set())
        stopping.wait()
        self.stop()

    def bind_address(self) -> tuple[str, int]:
        raise NotImplementedError

    def request_handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def origin(self) -> str:
        """http://host:port of the running server."""
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"
