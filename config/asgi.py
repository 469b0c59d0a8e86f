import os
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_asgi_application()


def _warm_up_embedder() -> None:
    # Load the embedding model now, off the request path: the first question would otherwise wait seconds for it.
    from vectordb.embeddings import get_embedder

    get_embedder().embed_query("warm up")


threading.Thread(target=_warm_up_embedder, name="embedder-warm-up", daemon=True).start()
