"""How much chat one user may ask of Silo at once: a few concurrent answer streams, and a number of questions a minute.

Without them one account opened hundreds of streams and moved everyone else's first token from 0.04 s to 8.7 s. Both
are counted in Redis, so they hold across every web process. A stream holds a slot (a redis-py lock with a lease,
renewed while it streams) from its admission until it ends or its client goes away; a process that dies frees its
slots when their leases run out.
"""

from __future__ import annotations

import functools
import threading
import time

import redis
from django.conf import settings
from django.utils import timezone
from redis.exceptions import LockError


class ChatLimitReached(Exception):
    """A question refused because of a limit; `str(error)` says which and what to do."""

    def __init__(self, message: str, retry_after_seconds: int):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def _client() -> redis.Redis:
    return _client_for(settings.REDIS_URL)


@functools.lru_cache(maxsize=4)
def _client_for(url: str) -> redis.Redis:
    """One client, and so one connection pool, per URL: a client per question opened a new connection every time."""
    return redis.Redis.from_url(url)


def _slot_name(user_id: object, slot: int) -> str:
    return f"{settings.CACHE_KEY_PREFIX_FOR_SLOTS}:chat-stream:{user_id}:{slot}"


class ChatStreamSlot:
    """One of the user's concurrent streams; `renew()` while streaming, `release()` when the stream is over."""

    def __init__(self, lock, lease_seconds: float):
        self._lock = lock
        self._lease_seconds = lease_seconds
        self._renewed_at = time.monotonic()
        self._released = threading.Event()

    def renew(self) -> None:
        """Cheap to call for every event: it reaches Redis once a third of the lease."""
        if time.monotonic() - self._renewed_at < self._lease_seconds / 3:
            return
        self._renewed_at = time.monotonic()
        try:
            self._lock.reacquire()
        except (LockError, redis.RedisError):
            pass  # lost (Redis restarted): the stream goes on, and the next question is counted afresh

    def release(self) -> None:
        """Idempotent: the stream's thread and its response both release it, whichever ends first."""
        if self._released.is_set():
            return
        self._released.set()
        try:
            self._lock.release()
        except (LockError, redis.RedisError):
            pass  # the lease ran out meanwhile: nothing to free


def chat_stream_admit(user_id: object, max_streams: int | None = None) -> ChatStreamSlot:
    """Admit one more question from this user now, or raise ChatLimitReached with the reason. `max_streams`: the
    workspace plan's cap (default CHAT_MAX_CONCURRENT_STREAMS)."""
    client = _client()
    max_streams = max_streams or settings.CHAT_MAX_CONCURRENT_STREAMS
    lease = settings.CHAT_STREAM_SLOT_LEASE_SECONDS
    slot = None
    for index in range(max_streams):
        lock = client.lock(_slot_name(user_id, index), timeout=lease, blocking=False, thread_local=False)
        if lock.acquire():
            slot = ChatStreamSlot(lock, lease)
            break
    if slot is None:
        limit = max_streams
        raise ChatLimitReached(
            f"You already have {limit} answer{'s' if limit != 1 else ''} in progress, the most Silo runs at once "
            "for one person; wait for one to finish (or stop it), then ask again.",
            retry_after_seconds=5,
        )
    # Counted only once admitted: a refused question does not use up the minute's allowance.
    key = f"{settings.CACHE_KEY_PREFIX_FOR_SLOTS}:chat-questions:{user_id}:{timezone.now():%Y%m%d%H%M}"
    asked = client.incr(key)
    if asked == 1:
        client.expire(key, 120)
    if asked > settings.CHAT_MAX_QUESTIONS_PER_MINUTE:
        slot.release()
        raise ChatLimitReached(
            f"You have asked {settings.CHAT_MAX_QUESTIONS_PER_MINUTE} questions this minute, the most Silo answers "
            "for one person; please wait a moment, then ask again.",
            retry_after_seconds=60 - timezone.now().second,
        )
    return slot


def chat_streams_in_progress(user_id: object) -> int:
    """How many of the user's stream slots are held right now."""
    client = _client()
    names = [_slot_name(user_id, index) for index in range(settings.CHAT_MAX_CONCURRENT_STREAMS)]
    return int(client.exists(*names)) if names else 0
