"""Named advisory locks in the main database (Django's `default` connection): the one way this project serialises
work across processes and machines.

Session-level: a process that dies loses its session and so its locks, and the work is taken over. They live in the
main database, never in a tenant's: tenant roles have no access to the advisory-lock functions at all (a tenant able
to take them could fill the server's shared lock table).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from django.db import connections


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL's bigint)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextlib.contextmanager
def advisory_lock(name: str, *, wait: bool = True, using: str = "default") -> Iterator[bool]:
    """Holds the lock `name` for the block. With `wait=False`, yields False at once (holding nothing) when another
    session has it; otherwise waits for it and yields True."""
    key = advisory_lock_key(name)
    with connections[using].cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
            acquired = True
        else:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connections[using].cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
