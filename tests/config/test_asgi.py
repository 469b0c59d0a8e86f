"""The ASGI application: Django's synchronous middleware chain and view run in one worker thread per request, and
the event loop still writes (and streams) the response."""

import asyncio
import json
import threading

import pytest
from django.urls import path

from config.asgi import OneHopASGIHandler, django_application


def test_the_served_application_runs_its_middleware_chain_synchronously():
    assert isinstance(django_application, OneHopASGIHandler)
    assert not asyncio.iscoroutinefunction(django_application._middleware_chain)


def _seen_thread(request):
    from django.http import JsonResponse

    return JsonResponse({"thread": threading.get_ident(), "middleware_thread": request.middleware_thread})


class _RecordThread:
    """A middleware that notes the thread it runs in, as every synchronous middleware of the chain would."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.middleware_thread = threading.get_ident()
        return self.get_response(request)


urlpatterns = [path("thread", _seen_thread)]


async def _get(application, url: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict] = []
    received = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if received:
            return received.pop()
        await asyncio.sleep(3600)  # no disconnect while the response is written

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": url, "raw_path": url.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }  # fmt: skip
    await application(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.mark.django_db(transaction=True)
def test_middleware_and_view_share_the_request_thread_off_the_event_loop(settings):
    settings.ROOT_URLCONF = __name__
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}._RecordThread"]
    application = OneHopASGIHandler()

    async def scenario():
        status, headers, body = await _get(application, "/thread")
        return status, headers, body, threading.get_ident()

    status, headers, body, loop_thread = asyncio.run(scenario())

    seen = json.loads(body)
    assert status == 200
    assert seen["thread"] == seen["middleware_thread"] != loop_thread
    assert b"Content-Security-Policy" in headers  # the chain's own last middleware ran
