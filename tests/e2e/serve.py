"""The e2e tests' web server: uvicorn serving config.asgi on an inherited socket, as `make run` serves it.

config.asgi starts loading the embedding model in a background thread as the process starts, so the journeys' first
question does not wait for it.

    python -m tests.e2e.serve <listening socket file descriptor>
"""

from __future__ import annotations

import os
import socket
import sys


def main() -> None:
    listening_fd = int(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import uvicorn

    # A socket object of the right family (uvicorn's fd= treats it as AF_UNIX), so asyncio turns Nagle's algorithm off
    # and streamed events leave at once instead of waiting for the next write.
    listening = socket.socket(fileno=listening_fd)
    config = uvicorn.Config("config.asgi:application", access_log=False, log_level="info")
    uvicorn.Server(config).run(sockets=[listening])


if __name__ == "__main__":
    main()
