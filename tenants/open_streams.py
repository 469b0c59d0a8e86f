"""The workspace's answers still streaming, counted in Redis across every web process: a restore or move, once it has
refused new writes, waits for them to end (TENANT_SWITCH_STREAM_WAIT_SECONDS at most), so an answer that was already
streaming stores its final message in the database that is then archived or switched away from, never in one being
dropped. A stream registers before it checks that the workspace is writable: an operation that marks the workspace
after that sees it and waits; a stream that registers after the mark is refused by the check.

Each entry is a lease (CHAT_STREAM_SLOT_LEASE_SECONDS): a process that dies mid-stream holds up no operation for long.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable

import redis
from django.conf import settings

logger = logging.getLogger(__name__)


def _client() -> redis.Redis:
    return _client_for(settings.REDIS_URL)


@functools.lru_cache(maxsize=4)
def _client_for(url: str) -> redis.Redis:
    """One client (and its connection pool) per URL: a new connection for every answer cost a connect each time."""
    return redis.Redis.from_url(url)


def _key(workspace_id: int) -> str:
    return f"{settings.CACHE_KEY_PREFIX_FOR_SLOTS}:workspace-streams:{workspace_id}"


class OpenStream:
    """One answer streaming into the workspace; `close()` (idempotent) when its final message is stored."""

    def __init__(self, workspace_id: int):
        self._key = _key(workspace_id)
        self._member = uuid.uuid4().hex
        self._open = False
        lease = settings.CHAT_STREAM_SLOT_LEASE_SECONDS
        try:
            pipeline = _client().pipeline(transaction=False)  # one round trip
            pipeline.zadd(self._key, {self._member: time.time() + lease})
            pipeline.expire(self._key, int(lease) + 60)
            pipeline.execute()
            self._open = True
        except redis.RedisError as error:  # Redis down: the answer still streams; a move will not wait for it
            logger.warning("could not count an open stream: %s", type(error).__name__)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            _client().zrem(self._key, self._member)
        except redis.RedisError:
            pass  # its lease runs out


def workspace_stream_open(workspace_id: int) -> OpenStream:
    return OpenStream(workspace_id)


def workspace_streams_open(workspace_id: int) -> int:
    """How many answers are streaming into the workspace now (expired leases dropped)."""
    client = _client()
    client.zremrangebyscore(_key(workspace_id), "-inf", time.time())
    return int(client.zcard(_key(workspace_id)))


def workspace_streams_wait(
    workspace_id: int, timeout: float, on_waiting: Callable[[int], None] | None = None, poll: float = 0.1
) -> int:
    """Wait until no answer streams into the workspace, `timeout` seconds at most; returns how many still do."""
    deadline = time.monotonic() + timeout
    reported = -1
    while True:
        try:
            count = workspace_streams_open(workspace_id)
        except redis.RedisError as error:
            logger.warning("could not count the open streams: %s", type(error).__name__)
            return 0
        if count == 0 or time.monotonic() >= deadline:
            return count
        if on_waiting and count != reported:
            on_waiting(count)
            reported = count
        time.sleep(poll)
