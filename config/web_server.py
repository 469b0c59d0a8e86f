"""The web server `make run` starts and the Dockerfile runs: uvicorn with bounds it lacks by default.

- Concurrency: `--limit-concurrency` answers 503 past WEB_MAX_CONCURRENCY connections or requests in progress, instead
  of taking every socket and file descriptor the process has.
- Slow clients: uvicorn has no header-read timeout of its own (its keep-alive timeout only covers a connection idle
  between requests, and ends as soon as one byte arrives), so a client sending its headers a byte at a time held a
  connection for ever. `HeaderTimeoutH11Protocol`, passed with `--http`, closes a connection whose request headers are
  not complete WEB_HEADER_TIMEOUT_SECONDS after it opened or after its previous response.
- Bodies: `config.asgi` refuses a body larger than REQUEST_MAX_BODY_BYTES with 413 before reading it
  (`RequestBodyLimit`), so that holds under any ASGI server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from config.environment import env_int

# The command line is built before Django starts (`make run`, the Dockerfile), so this one is read here as well as in
# config/settings.py (same variable, same default).
WEB_MAX_CONCURRENCY = env_int("WEB_MAX_CONCURRENCY", 500, minimum=1)


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's headers."""

    _header_deadline: asyncio.TimerHandle | None = None

    @property
    def header_timeout_seconds(self) -> float:
        # Django is set up by now: uvicorn imports the application before it accepts a connection.
        from django.conf import settings

        return settings.WEB_HEADER_TIMEOUT_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in: no deadline until the next
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()  # a kept-alive connection's next request gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_seconds, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers took over %ss", self.header_timeout_seconds)
            self.transport.close()


def web_server_command(host: str, port: str | int, *extra: str, max_concurrency: int | None = None) -> list[str]:
    """The uvicorn command line of `make run` and of the Dockerfile (`python -m config.web_server ...`);
    `max_concurrency` defaults to WEB_MAX_CONCURRENCY."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        str(host),
        "--port",
        str(port),
        "--http",
        "config.web_server:HeaderTimeoutH11Protocol",
        "--limit-concurrency",
        str(max_concurrency or WEB_MAX_CONCURRENCY),
        "--no-access-log",
        *extra,
    ]


def main(arguments: list[str]) -> None:
    """`python -m config.web_server [--host H] [--port P] [more uvicorn options]`: becomes that uvicorn process."""
    parser = argparse.ArgumentParser(prog="python -m config.web_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    known, extra = parser.parse_known_args(arguments)
    command = web_server_command(known.host, known.port, *extra)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
