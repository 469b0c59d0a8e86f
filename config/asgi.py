import os
import threading

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with the synchronous middleware chain run in one worker thread per request.

    Every view here is synchronous, and so are Django's own middleware. In the asynchronous chain Django hands each
    of their steps to a thread and back (sessions, CSRF, auth, messages...: about 16 hand-overs a request, each a
    wake-up of the event loop and of a thread), which made up most of a chat turn's overhead before its first token.
    Here the whole chain and the view run in the request's one thread; the event loop still reads the body, writes
    the response and streams (a chat answer is an asynchronous iterator, written by the loop as before)."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


django.setup(set_prefix=False)
django_application = OneHopASGIHandler()


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestBodyLimit:
    """413 for a request whose declared body is larger than REQUEST_MAX_BODY_BYTES, before a byte of it is read
    (the server stops reading once its small buffer is full); a body sent without a length is cut off at the limit.
    Without it a stranger's 3 GiB POST to any URL, even a missing one, was spooled to disk before the 404."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send) -> None:
        megabytes = self.max_bytes / (1024 * 1024)
        body = f"This request is larger than the {megabytes:.0f} MB Silo accepts.\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),  # the unread body makes the connection unusable
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


application = RequestBodyLimit(django_application, settings.REQUEST_MAX_BODY_BYTES)


def _warm_up_embedder() -> None:
    # Load the embedding model now, off the request path: the first question would otherwise wait seconds for it.
    from vectordb.embeddings import LocalEmbedder, get_embedder, local_model_threads_set

    embedder = get_embedder()
    if isinstance(embedder, LocalEmbedder):
        local_model_threads_set(settings.WEB_EMBEDDING_THREADS)
    embedder.embed_query("warm up")


threading.Thread(target=_warm_up_embedder, name="embedder-warm-up", daemon=True).start()
