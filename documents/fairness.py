"""Per-tenant ingest slots, so one tenant's bulk upload cannot starve everyone else's.

A slot is a redis-py lock with a lease: a worker that dies frees its slot when the lease expires, and a worker that
lives renews it while it works, however long the document takes. A task that finds its tenant's slots taken goes back
to the queue (with a delay), leaving the worker free for other tenants' work.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import redis
from django.conf import settings
from redis.exceptions import LockError

logger = logging.getLogger(__name__)


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def _slot_name(tenant_id: int, slot: int) -> str:
    return f"{settings.CACHE_KEY_PREFIX_FOR_SLOTS}:ingest:{tenant_id}:{slot}"


@contextlib.contextmanager
def tenant_ingest_slot(tenant_id: int, lease_seconds: float | None = None) -> Iterator[bool]:
    """Yields True with a slot held for the block, or False when all of the tenant's slots are busy. The lease
    (INGEST_SLOT_LEASE_SECONDS) is renewed every third of it while the block runs."""
    lease = lease_seconds or settings.INGEST_SLOT_LEASE_SECONDS
    client = _client()
    held = None
    for slot in range(settings.INGEST_MAX_CONCURRENT_PER_TENANT):
        # Not thread-local: the renewing thread must see the token the acquiring thread got.
        lock = client.lock(_slot_name(tenant_id, slot), timeout=lease, blocking=False, thread_local=False)
        if lock.acquire():
            held = lock
            break
    if held is None:
        yield False
        return
    done = threading.Event()
    renewer = threading.Thread(
        target=_renew_until_done, args=(held, lease, done), name="ingest-slot-lease", daemon=True
    )
    renewer.start()
    try:
        yield True
    finally:
        done.set()
        renewer.join()
        with contextlib.suppress(LockError):  # the lease ran out (Redis unreachable meanwhile): nothing to free
            held.release()


def _renew_until_done(lock, lease: float, done: threading.Event) -> None:
    while not done.wait(lease / 3):
        try:
            lock.reacquire()  # the lease starts again from now
        except (LockError, redis.RedisError) as error:
            logger.warning("could not renew the ingest slot %s: %s", lock.name, error)
            if isinstance(error, LockError):
                return  # lost: another worker may hold it now
