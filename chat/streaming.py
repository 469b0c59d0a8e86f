"""How a chat turn's events travel from the thread that runs the turn to the response the event loop writes.

A model streams ~85 tokens a second per answer; 50 answers at once are ~4,000 tokens a second. Handed over and
written one by one, every token cost a wake-up of the event loop, a queue hand-over, its own server-sent event, an
ASGI message and a socket write. Here the turn's thread only appends to a buffer and wakes the loop when it is not
already woken, and tokens that arrive within CHAT_STREAM_COALESCE_SECONDS of the last written ones leave together as
one `token` event (the page appends each event's text, so it sees the same answer). The first token of an answer is
never held back, and no other event is merged or reordered: `conversation`, `sources`, `done` and `error` keep their
place between the tokens.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable
from typing import Any


class EventHandOver:
    """Events from one producing thread to one coroutine on `loop`: `put()` from the thread, `take()` in the loop.

    The loop is woken once for everything that arrives until it takes it, instead of once per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        # None: the loop is learnt when it first waits (a turn starts producing before its response is read).
        self._loop = loop
        self._lock = threading.Lock()
        self._events: list[Any] = []
        self._wake_pending = False
        self._arrived = asyncio.Event()  # set and cleared in the loop only

    def put(self, event: Any) -> None:
        with self._lock:
            self._events.append(event)
            if self._wake_pending or self._loop is None:
                # The loop has been told and has not taken yet, or nobody waits yet: this event goes with the others.
                return
            self._wake_pending = True
            loop = self._loop
        loop.call_soon_threadsafe(self._arrived.set)

    async def wait(self) -> None:
        """Until at least one event is there to take."""
        if self._loop is None:
            with self._lock:
                self._loop = asyncio.get_running_loop()
                if self._events and not self._wake_pending:
                    self._wake_pending = True
                    self._arrived.set()  # what was put before the loop was known
        await self._arrived.wait()

    def take(self) -> list[Any]:
        """Everything put so far, in order (possibly nothing)."""
        self._arrived.clear()
        with self._lock:
            events, self._events = self._events, []
            self._wake_pending = False
        return events


def server_sent_events(events: Iterable[tuple[str, dict]]) -> str:
    """`(kind, data)` pairs as server-sent events, each run of consecutive tokens as one `token` event."""
    written: list[str] = []
    tokens: list[str] = []
    for kind, data in events:
        if kind == "token":
            tokens.append(data["text"])
            continue
        if tokens:
            written.append(_event("token", {"text": "".join(tokens)}))
            tokens = []
        written.append(_event(kind, data))
    if tokens:
        written.append(_event("token", {"text": "".join(tokens)}))
    return "".join(written)


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"
