"""One account cannot take the chat from everyone else: a few answers streaming at once and a number of questions a
minute per person, counted in Redis across web processes, each refusal saying which limit and when to ask again, and
a stream's slot freed as soon as it ends or its client goes away."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.limits import chat_stream_admit, chat_streams_in_progress
from config.asgi import application
from tenants.models import User
from tests.reliability.test_isolation import sse_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def ask(client: Client, question: str = "When is the lamp cleaned?"):
    return client.post(reverse("chat_stream"), {"question": question}, HTTP_ACCEPT="text/event-stream")


@pytest.fixture(autouse=True)
def no_streams_left_over(owner, stranger):
    yield
    assert chat_streams_in_progress(owner.pk) == 0
    assert chat_streams_in_progress(stranger.pk) == 0


def test_past_the_concurrent_stream_limit_a_question_is_refused_with_the_limit_and_others_are_served(
    owner, stranger, settings
):
    settings.CHAT_MAX_CONCURRENT_STREAMS = 2
    streaming = [chat_stream_admit(owner.pk) for _ in range(2)]  # two answers in progress, in any web process

    refused = ask(signed_in(owner))
    served = ask(signed_in(stranger))

    assert refused.status_code == 429
    assert refused["Retry-After"] == "5"
    assert refused.json() == {
        "error": "You already have 2 answers in progress, the most Silo runs at once for one person; wait for one "
        "to finish (or stop it), then ask again."
    }
    assert served.status_code == 200
    assert [kind for kind, _ in sse_events(served)] == ["error"]  # the stranger has no database: served, not refused
    streaming[0].release()
    again = ask(signed_in(owner))
    assert again.status_code == 200
    sse_events(again)
    streaming[1].release()


def test_a_stream_holds_its_slot_while_it_runs_and_frees_it_when_it_ends(owner):
    response = ask(signed_in(owner))

    assert response.status_code == 200
    assert chat_streams_in_progress(owner.pk) == 1  # admitted; its events are not read yet
    sse_events(response)
    assert chat_streams_in_progress(owner.pk) == 0


def test_a_stream_frees_its_slot_when_its_client_goes_away(owner):
    """Through the ASGI application as a server drives it: the client disconnects after the first bytes."""
    client = signed_in(owner)
    csrf = "a" * 32
    body = urlencode({"question": "When is the lamp cleaned?"}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/chat/stream",
        "raw_path": b"/chat/stream",
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
            (b"cookie", f"sessionid={client.cookies['sessionid'].value}; csrftoken={csrf}".encode()),
            (b"x-csrftoken", csrf.encode()),
        ],
    }
    sent: list[dict] = []

    async def converse() -> None:
        gone = asyncio.Event()
        requests = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if requests:
                return requests.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.start":
                gone.set()  # the client reads the status line and leaves

        await asyncio.wait_for(application(scope, receive, send), timeout=60)

    asyncio.run(converse())

    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    deadline = time.monotonic() + 10
    while chat_streams_in_progress(owner.pk) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat_streams_in_progress(owner.pk) == 0


def test_past_the_questions_a_minute_a_question_is_refused_with_the_limit(owner, stranger, settings):
    settings.CHAT_MAX_QUESTIONS_PER_MINUTE = 2
    if timezone.now().second >= 50:
        time.sleep(61 - timezone.now().second)  # the three questions fall in one clock minute
    client = signed_in(owner)

    answered = [ask(client) for _ in range(2)]
    for response in answered:
        sse_events(response)
    refused = ask(client)

    assert [response.status_code for response in answered] == [200, 200]
    assert refused.status_code == 429
    assert refused.json() == {
        "error": "You have asked 2 questions this minute, the most Silo answers for one person; please wait a "
        "moment, then ask again."
    }
    assert 1 <= int(refused["Retry-After"]) <= 60
    other = ask(signed_in(stranger))  # per person
    assert other.status_code == 200
    sse_events(other)
