import os
import threading

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

django_application = get_asgi_application()


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
