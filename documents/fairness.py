"""Per-tenant ingest slots, so one tenant's bulk upload cannot starve everyone else's.

A slot is a Redis key with a lease: a worker that dies frees its slot when the lease expires. A task that finds its
tenant's slots taken goes back to the queue (with a delay), leaving the worker free for other tenants' work.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import redis
from django.conf import settings

_RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
"""


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@contextlib.contextmanager
def tenant_ingest_slot(tenant_id: int) -> Iterator[bool]:
    """Yields True with a slot held for the block, or False when all of the tenant's slots are busy."""
    client = _client()
    token = secrets.token_hex(8)
    held = None
    for slot in range(settings.INGEST_MAX_CONCURRENT_PER_TENANT):
        key = f"{settings.CACHE_KEY_PREFIX_FOR_SLOTS}:ingest:{tenant_id}:{slot}"
        if client.set(key, token, nx=True, ex=settings.INGEST_SLOT_LEASE_SECONDS):
            held = key
            break
    try:
        yield held is not None
    finally:
        if held is not None:
            client.eval(_RELEASE_IF_OURS, 1, held, token)
