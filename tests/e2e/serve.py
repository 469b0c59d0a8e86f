"""The e2e tests' web server: uvicorn serving config.asgi on an inherited socket, as `make run` serves it.

config.asgi starts loading the embedding model in a background thread as the process starts, so the journeys' first
question does not wait for it.

    python -m tests.e2e.serve <listening socket file descriptor>
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    listening_fd = int(sys.argv[1])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import uvicorn

    uvicorn.run("config.asgi:application", fd=listening_fd, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
