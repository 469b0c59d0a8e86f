"""Chat: retrieval from the tenant's own ready documents, the streamed answer over the real ASGI server (extractive,
and through the OpenAI emulator with its faults), conversations kept in the tenant's database, and the `ask` command.

Documents are small PDFs made here (one topic per page), ingested in-process through the real pipeline into a tenant
database provisioned for the test; the chat endpoint is served by uvicorn in a thread and read with httpx streaming.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.http import Http404
from django.test import Client
from django.urls import reverse

from chat import services
from documents import services as document_services
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import VectorDatabase
from tests.emulators.openai import OpenAIEmulator
from tests.helpers import server_sent_events
from tests.pdf_factory import text_pdf

API_KEY = "sk-test-chat-emulator"
STILL_BEING_SET_UP = "Your database is still being set up; try again in a moment."
MODEL_STOPPED = "The language model stopped responding before the answer was complete. Please try again."

# One topic per page, each long enough to fill most of a chunk, so a passage's page range says which topic it is about.
ESPRESSO_PAGES = [
    "Warranty. The espresso machine is guaranteed for two years from the date of purchase. The warranty covers "
    "parts and labour for manufacturing defects of the pump, the boiler, the heating element and the electronics. "
    "Damage caused by limescale, by dropping the machine or by opening the housing is not covered by the warranty. "
    "Keep the receipt: a warranty claim needs proof of the purchase date. To make a claim, write to the service "
    "centre with the serial number printed under the drip tray and a short description of the fault. The service "
    "centre answers within five working days and sends a prepaid label for the parcel. Repairs under warranty are "
    "free of charge, and the repaired machine is returned within three weeks. A replacement machine carries the "
    "rest of the original warranty period, not a new one.",
    "Descaling. Hard water leaves limescale in the boiler and the pipes, which slows the flow and spoils the taste. "
    "Descale the machine every three months, or every month where the water is very hard. Dissolve one descaling "
    "tablet in a litre of warm water, pour the solution into the tank and start the cleaning programme by holding "
    "the two cup buttons for five seconds. The programme pumps the solution through the boiler in short bursts and "
    "takes about twenty minutes. Rinse the tank thoroughly afterwards and run two full tanks of clean water through "
    "the machine before brewing coffee again. Never use vinegar: its acid attacks the seals of the boiler.",
    "Milk frothing. The steam wand heats and froths milk for cappuccino and latte. Purge the steam wand for two "
    "seconds before and after every use so that no milk dries inside the nozzle. Fill a steel jug a third full with "
    "cold whole milk, dip the tip of the wand just below the surface and open the steam knob fully. Lower the jug "
    "slowly as the milk expands, and stop when the jug feels too hot to hold. Wipe the wand with a damp cloth at "
    "once. Tap the jug on the counter to break large bubbles and swirl it until the microfoam shines. Oat and soy "
    "drinks made for baristas froth as well as dairy milk.",
]
GARDEN_PAGES = [
    "Tomatoes. Sow tomato seeds indoors six weeks before the last frost, a centimetre deep in small pots of seed "
    "compost kept warm on a windowsill. Plant the seedlings out when nights stay above ten degrees, burying the "
    "stem up to the first leaves so that it grows extra roots. Tomatoes need full sun, a sturdy stake and deep "
    "watering twice a week rather than a little every day. Pinch out the side shoots that grow between the main "
    "stem and the leaves. Feed the plants with a potash-rich liquid once the first flowers open. Pick the fruit "
    "when it is fully coloured and slightly soft; green tomatoes left at the end of the season ripen indoors.",
    "Compost. A compost heap needs a balance of green kitchen scraps and brown material such as dry leaves, straw "
    "and torn cardboard, roughly one part green to two parts brown. Chop large pieces so that they rot faster. "
    "Turn the heap every two weeks with a fork to let air in; a heap without air smells bad and rots slowly. Keep "
    "it as moist as a wrung-out sponge, covering it in heavy rain. Leave out meat, dairy and cooked food, which "
    "attract rats. Compost is ready after six months to a year, when it is dark, crumbly and smells of forest "
    "soil. Spread it on the beds in autumn and let the worms work it in over the winter.",
    "Pests. Aphids cluster under young leaves and suck the sap, leaving the leaves curled and sticky. Spray them "
    "off with a jet of water, or invite ladybirds and lacewings, whose larvae eat hundreds of aphids a day. Slugs "
    "and snails eat seedlings at night: a ring of crushed eggshells or a copper band around the pot keeps them "
    "away, and a saucer of beer sunk into the soil traps them. Cabbage white butterflies lay yellow eggs under "
    "brassica leaves; a fine net over the crop stops them. Vine weevil grubs eat the roots of potted plants and "
    "are controlled with nematodes watered into the compost in late summer.",
]
KETTLE_PAGES = [
    "Kettle care. The electric kettle switches itself off when the water boils. Descale the kettle every month with "
    "white vinegar: fill it halfway, boil, leave overnight and rinse. Never immerse the kettle base in water.",
]
SCRIPT_PAGES = [
    "Security notice. A page that quotes markup: <script>alert(1)</script> must stay text. The vault door "
    "combination is changed every Monday by the night guard.",
]


# --- PDFs made for the tests ---------------------------------------------------------------------------------------


# --- tenants and documents -----------------------------------------------------------------------------------------


@pytest.fixture
def tenants():
    """Provisions tenant databases on demand; drops every one of them afterwards."""
    created: list[int] = []

    def provision(user, status: str | None = None) -> VectorDatabase:
        row = VectorDatabase.objects.create(tenant=user, provider="postgres")
        created.append(row.id)
        row = tenant_services.vector_database_provision(row.id)
        assert row.status == VectorDatabase.Status.READY, row.last_error
        if status:
            VectorDatabase.objects.filter(id=row.id).update(status=status)
            row.refresh_from_db()
        return row

    yield provision
    for row_id in created:
        if VectorDatabase.objects.filter(id=row_id).exclude(status=VectorDatabase.Status.DELETED).exists():
            tenant_services.vector_database_deprovision(row_id)


def ingest(user, name: str, pages: list[str], status: str | None = None) -> Document:
    """Upload and ingest in-process; `status` then overrides the result (a failed or re-queued document that still
    has chunks in the tenant database)."""
    document = document_services.document_upload(user, ContentFile(text_pdf(pages), name=name), enqueue=False)
    document_services.document_ingest(document.id)
    document.refresh_from_db()
    assert document.status == Document.Status.READY, document.error_message
    if status:
        Document.objects.filter(id=document.id).update(status=status)
        document.refresh_from_db()
    return document


@pytest.fixture
def espresso(owner, tenants) -> Document:
    tenants(owner)
    return ingest(owner, "espresso_manual.pdf", ESPRESSO_PAGES)


def tenant_rows(user, query: str, parameters: tuple = ()) -> list[tuple]:
    """Rows straight from the tenant's own database, with its own credentials."""
    row = VectorDatabase.objects.get(tenant=user)
    with psycopg.connect(tenant_services.vector_database_credentials(row)["dsn"]) as connection:
        return connection.execute(query, parameters).fetchall()


def page_of(phrase: str, pages: list[str]) -> int:
    (page,) = [number for number, text in enumerate(pages, start=1) if phrase in text]
    return page


# --- the real ASGI server ------------------------------------------------------------------------------------------


class _ClosingExecutor(ThreadPoolExecutor):
    """The loop's default executor, where the view's `sync_to_async(thread_sensitive=False)` steps run: closes each
    step's Django connections, which no request_finished would close in these threads, so the test database can be
    dropped at the end of the session."""

    def submit(self, fn, /, *args, **kwargs):
        from django.db import connections

        def step():
            try:
                return fn(*args, **kwargs)
            finally:
                connections.close_all()

        return super().submit(step)


@pytest.fixture(scope="module")
def server_url(django_db_setup, django_db_blocker):
    """uvicorn serving config.asgi in a thread on a free port."""
    import gc

    import uvicorn
    from django.db import connections

    from config.asgi import application

    # Request threads close their connections at request_finished (as Django's own live server does), so none is
    # left open on the test database when it is dropped at the end of the session.
    database_settings = connections.settings["default"]
    kept_max_age = database_settings["CONN_MAX_AGE"]
    database_settings["CONN_MAX_AGE"] = 0

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False)
    )
    executor = _ClosingExecutor(max_workers=8)

    def serve():
        loop = asyncio.new_event_loop()
        loop.set_default_executor(executor)
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=serve, name="uvicorn", daemon=True)
    with django_db_blocker.unblock():
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(timeout=20)
        executor.shutdown(wait=True)
        gc.collect()  # connections of request threads that have ended
    database_settings["CONN_MAX_AGE"] = kept_max_age


@dataclass
class Browser:
    """httpx with the user's session cookie: what the chat page's JavaScript does, over a real socket."""

    http: httpx.Client

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(self, path: str, data: dict) -> httpx.Response:
        return self.http.post(path, data=data, headers=self._csrf())

    def chat(
        self, question: str, conversation: str | None = None, document: int | None = None
    ) -> list[tuple[str, dict]]:
        """POST /chat/stream and read the server-sent events as they arrive: [(kind, data), ...]."""
        form = {"question": question, "conversation": conversation or "", "document": document or ""}
        with self.http.stream("POST", reverse("chat_stream"), data=form, headers=self._csrf()) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            return server_sent_events(response.iter_lines())

    def _csrf(self) -> dict:
        if "csrftoken" not in self.http.cookies:
            self.http.get(reverse("chat"))  # the chat page sets the CSRF cookie, as in a browser
        return {"X-CSRFToken": self.http.cookies["csrftoken"]}


@pytest.fixture
def browser_for(server_url):
    opened = []

    def open_for(user) -> Browser:
        client = Client()
        client.force_login(user)
        http = httpx.Client(base_url=server_url, cookies={"sessionid": client.cookies["sessionid"].value}, timeout=30)
        opened.append(http)
        return Browser(http)

    yield open_for
    for http in opened:
        http.close()


@pytest.fixture
def emulator(settings):
    """The OpenAI emulator as the chat model; embeddings stay local (settings choose OpenAI's only at import)."""
    with OpenAIEmulator(api_key=API_KEY) as running:
        settings.OPENAI_API_KEY = API_KEY
        settings.OPENAI_BASE_URL = running.base_url
        settings.EMBEDDING_MODEL = "all-MiniLM-L6-v2"
        settings.EMBEDDING_DIMENSIONS = 384
        yield running


@pytest.fixture
def without_model(settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""


def kinds(events: list[tuple[str, dict]]) -> list[str]:
    return [kind for kind, _ in events]


def answer_of(events: list[tuple[str, dict]]) -> str:
    return "".join(data["text"] for kind, data in events if kind == "token")


pytestmark = pytest.mark.django_db(transaction=True)


# --- retrieval -------------------------------------------------------------------------------------------------------


def test_retrieval_searches_only_the_tenants_own_ready_documents(owner, stranger, tenants, espresso):
    failed = ingest(owner, "kettle_failed.pdf", KETTLE_PAGES, status=Document.Status.FAILED)
    queued = ingest(owner, "kettle_queued.pdf", KETTLE_PAGES, status=Document.Status.QUEUED)
    tenants(stranger)
    strangers_copy = ingest(stranger, "espresso_manual.pdf", ESPRESSO_PAGES)

    owners_passages = services.chunks_retrieve(owner, "How often should I descale the kettle?", k=10)
    strangers_passages = services.chunks_retrieve(stranger, "How often should I descale the kettle?", k=10)

    # Every chunk of the owner's one ready document, and nothing of the failed, queued or stranger's documents,
    # although they have chunks about descaling too.
    assert {citation.document_id for citation in owners_passages} == {espresso.id}
    assert len(owners_passages) == espresso.chunk_count
    assert failed.chunk_count > 0 and queued.chunk_count > 0
    assert {citation.document_id for citation in strangers_passages} == {strangers_copy.id}
    assert len(strangers_passages) == strangers_copy.chunk_count
    assert strangers_copy.id != espresso.id


def test_a_document_filter_restricts_retrieval_to_that_document(owner, stranger, tenants, espresso):
    garden = ingest(owner, "garden.pdf", GARDEN_PAGES)
    failed = ingest(owner, "kettle.pdf", KETTLE_PAGES, status=Document.Status.FAILED)
    tenants(stranger)
    strangers_document = ingest(stranger, "garden.pdf", GARDEN_PAGES)

    only_garden = services.chunks_retrieve(owner, "How do I descale the espresso machine?", document_id=garden.id, k=10)

    assert {citation.document_id for citation in only_garden} == {garden.id}
    assert len(only_garden) == garden.chunk_count
    assert [citation.title for citation in only_garden] == ["garden"] * garden.chunk_count
    assert services.chunks_retrieve(owner, "How do I descale the kettle?", document_id=failed.id) == []
    with pytest.raises(Http404):
        services.chunks_retrieve(owner, "aphids", document_id=strangers_document.id)


@pytest.mark.parametrize("hybrid", [True, False], ids=["hybrid", "vector-only"])
def test_retrieval_returns_k_passages_in_rank_order_with_their_pages(owner, espresso, hybrid):
    garden = ingest(owner, "garden.pdf", GARDEN_PAGES)
    pages = {espresso.id: ESPRESSO_PAGES, garden.id: GARDEN_PAGES}
    assert espresso.chunk_count + garden.chunk_count > 3

    passages = services.chunks_retrieve(owner, "How often do I descale the espresso machine?", k=3, hybrid=hybrid)

    assert [citation.number for citation in passages] == [1, 2, 3]
    scores = [citation.score for citation in passages]
    assert scores == sorted(scores, reverse=True)
    best = passages[0]
    assert (best.document_id, best.title) == (espresso.id, "espresso manual")
    descaling_page = page_of("Hard water leaves limescale", ESPRESSO_PAGES)
    assert "Hard water leaves limescale" in best.text
    assert best.page <= descaling_page <= best.page_end
    for citation in passages:  # every passage's pages are where its sentences are printed
        assert 1 <= citation.page <= citation.page_end <= len(pages[citation.document_id])
        first_sentence = " ".join(citation.text.split()).split(". ")[0][:40]
        found_on = [n for n, text in enumerate(pages[citation.document_id], start=1) if first_sentence in text]
        assert found_on and citation.page <= found_on[0] <= citation.page_end, (first_sentence, citation)


def test_a_question_of_stopwords_and_search_operators_still_finds_passages(owner, espresso):
    for question in ["What is it?", "warranty & (descale | !froth) <-> 'milk':*"]:
        passages = services.chunks_retrieve(owner, question, k=2, hybrid=True)

        assert [citation.number for citation in passages] == [1, 2]
        assert {citation.document_id for citation in passages} == {espresso.id}


# --- the streamed answer, over uvicorn -------------------------------------------------------------------------------


def test_without_a_model_an_extractive_answer_streams_over_the_asgi_server(owner, espresso, browser_for, without_model):
    events = browser_for(owner).chat("How often should the espresso machine be descaled?")

    assert kinds(events)[:2] == ["conversation", "sources"]
    assert kinds(events)[-1] == "done"
    assert set(kinds(events)[2:-1]) == {"token"} and len(events) > 10
    assert events[-1][1] == {"extractive": True}
    answer = answer_of(events)
    assert answer.startswith(services.EXTRACTIVE_LABEL)
    assert "[1] espresso manual, p" in answer
    citations = events[1][1]["citations"]
    assert [citation["number"] for citation in citations] == list(range(1, len(citations) + 1))
    assert citations[0]["document_id"] == espresso.id
    assert "Hard water leaves limescale" in citations[0]["text"]
    conversation_id = events[0][1]["id"]
    assert events[0][1]["title"] == "How often should the espresso machine be descaled?"
    # The conversation and both messages are in the tenant's own database.
    assert tenant_rows(owner, "SELECT id::text, title, document_id FROM conversations") == [
        (conversation_id, "How often should the espresso machine be descaled?", None)
    ]
    assert tenant_rows(owner, "SELECT role, content, jsonb_array_length(citations) FROM messages ORDER BY id") == [
        ("user", "How often should the espresso machine be descaled?", 0),
        ("assistant", answer, len(citations)),
    ]


def test_with_the_model_the_answer_streams_token_by_token_and_cites_sources(owner, espresso, browser_for, emulator):
    events = browser_for(owner).chat("How long is the warranty?", document=espresso.id)

    assert kinds(events)[:2] == ["conversation", "sources"]
    assert kinds(events)[-1] == "done" and events[-1][1] == {"extractive": False}
    tokens = [data["text"] for kind, data in events if kind == "token"]
    assert len(tokens) > 5  # streamed, not sent in one piece
    answer = "".join(tokens)
    first_source = events[1][1]["citations"][0]
    assert (first_source["number"], first_source["document_id"]) == (1, espresso.id)
    # The emulator quotes the first line of source [1]: the prompt carried the retrieved passages, numbered.
    assert answer.startswith(f"According to [1], espresso manual, page {first_source['page']}")
    assert emulator.request_counts == {"chat.completions": 1}
    assert tenant_rows(owner, "SELECT role, content FROM messages ORDER BY id") == [
        ("user", "How long is the warranty?"),
        ("assistant", answer),
    ]
    assert tenant_rows(owner, "SELECT document_id FROM conversations") == [(espresso.id,)]


def test_a_model_failing_mid_stream_ends_with_a_readable_error_and_keeps_the_partial_answer(
    owner, espresso, browser_for, emulator
):
    emulator.drop_stream_next(after_tokens=3)

    events = browser_for(owner).chat("How long is the warranty?")

    assert kinds(events) == ["conversation", "sources", "token", "token", "token", "error"]
    assert events[-1][1] == {"message": MODEL_STOPPED}
    partial = answer_of(events)
    assert partial == "According to ["
    assert tenant_rows(owner, "SELECT role, content FROM messages ORDER BY id") == [
        ("user", "How long is the warranty?"),
        ("assistant", partial),
    ]


def test_a_model_answering_500_ends_the_stream_with_an_error_not_a_hang(owner, espresso, browser_for, emulator):
    emulator.fault_rate = 1.0
    emulator.fault_status = 500
    started = time.monotonic()

    events = browser_for(owner).chat("How long is the warranty?")

    assert kinds(events) == ["conversation", "sources", "error"]
    assert events[-1][1] == {"message": MODEL_STOPPED}
    assert time.monotonic() - started < 20  # the client's two bounded retries, then the error
    assert emulator.request_counts == {"chat.completions": 3}
    assert tenant_rows(owner, "SELECT role, content FROM messages ORDER BY id") == [
        ("user", "How long is the warranty?"),
        ("assistant", ""),
    ]


def test_a_tenant_database_still_provisioning_ends_with_still_being_set_up(owner, tenants, browser_for):
    tenants(owner, status=VectorDatabase.Status.PROVISIONING)

    events = browser_for(owner).chat("How long is the warranty?")

    assert events == [("error", {"message": STILL_BEING_SET_UP})]
    page = browser_for(owner).get(reverse("chat"))
    assert page.status_code == 200
    assert "Your database is still being set up. Chat opens as soon as it is ready." in page.text


def test_an_over_long_question_is_refused_with_the_limit_and_nothing_is_stored(owner, espresso, browser_for, settings):
    settings.CHAT_MAX_QUESTION_CHARS = 4000

    events = browser_for(owner).chat("why " * 1000 + "?")

    assert events == [("error", {"message": "Your question is 4,001 characters long; Silo accepts up to 4,000."})]
    assert tenant_rows(owner, "SELECT count(*) FROM conversations") == [(0,)]
    assert tenant_rows(owner, "SELECT count(*) FROM messages") == [(0,)]


# --- conversations ---------------------------------------------------------------------------------------------------


def test_a_conversation_is_listed_resumable_and_deletable(owner, espresso, browser_for, without_model):
    browser = browser_for(owner)
    first = browser.chat("How long is the warranty?")
    conversation_id = first[0][1]["id"]
    second = browser.chat("And what does it not cover?", conversation=conversation_id)

    assert second[0] == ("conversation", {"id": conversation_id, "title": "How long is the warranty?"})
    listing = browser.get(reverse("chat"))
    assert listing.status_code == 200
    assert f'<a class="conversation-link" href="?c={conversation_id}">' in listing.text
    assert '<span class="conversation-title">How long is the warranty?</span>' in listing.text
    resumed = browser.get(f"{reverse('chat')}?c={conversation_id}")
    assert resumed.status_code == 200
    assert resumed.text.count('class="turn turn-user"') == 2
    assert resumed.text.count('class="turn turn-assistant"') == 2
    assert "And what does it not cover?" in resumed.text
    assert f'name="conversation" value="{conversation_id}"' in resumed.text
    assert tenant_rows(owner, "SELECT count(*) FROM messages") == [(4,)]

    deleted = browser.post(reverse("conversation_delete", args=[conversation_id]), {})

    assert deleted.status_code == 302
    assert tenant_rows(owner, "SELECT count(*) FROM conversations") == [(0,)]
    assert tenant_rows(owner, "SELECT count(*) FROM messages") == [(0,)]
    assert browser.get(f"{reverse('chat')}?c={conversation_id}").status_code == 404
    assert browser.chat("Still there?", conversation=conversation_id) == [
        ("error", {"message": "That conversation no longer exists."})
    ]


def test_a_stranger_gets_404_for_the_owners_conversation_and_document(
    owner, stranger, tenants, espresso, browser_for, without_model
):
    conversation_id = browser_for(owner).chat("How long is the warranty?")[0][1]["id"]
    tenants(stranger)
    intruder = browser_for(stranger)

    assert intruder.get(f"{reverse('chat')}?c={conversation_id}").status_code == 404
    assert intruder.get(reverse("document_chat", args=[espresso.id])).status_code == 404
    assert intruder.post(reverse("conversation_delete", args=[conversation_id]), {}).status_code == 404
    assert intruder.chat("Continue", conversation=conversation_id) == [
        ("error", {"message": "That conversation no longer exists."})
    ]
    with pytest.raises(httpx.HTTPStatusError) as refused:
        intruder.http.post(
            reverse("chat_stream"), data={"question": "Warranty?", "document": espresso.id}, headers=intruder._csrf()
        ).raise_for_status()
    assert refused.value.response.status_code == 404
    # Nothing changed for the owner.
    assert tenant_rows(owner, "SELECT id::text FROM conversations") == [(conversation_id,)]
    assert tenant_rows(owner, "SELECT count(*) FROM messages") == [(2,)]
    assert tenant_rows(stranger, "SELECT count(*) FROM conversations") == [(0,)]


def test_model_output_and_pdf_text_are_shown_escaped_in_the_history(owner, espresso, browser_for, emulator):
    notice = ingest(owner, "notice.pdf", SCRIPT_PAGES)
    emulator.answer = "<script>alert('model')</script> The vault combination changes on Mondays [1]."
    browser = browser_for(owner)
    from_model = browser.chat("When does the vault combination change?", document=notice.id)[0][1]["id"]
    emulator.answer = lambda messages: messages[0]["content"].split("Sources:\n", 1)[1]  # echoes the PDF text
    from_pdf = browser.chat("What does the security notice quote?", document=notice.id)[0][1]["id"]

    model_page = browser.get(f"{reverse('document_chat', args=[notice.id])}?c={from_model}").text
    pdf_page = browser.get(f"{reverse('document_chat', args=[notice.id])}?c={from_pdf}").text

    assert "<script>alert(" not in model_page
    assert "&lt;script&gt;alert(&#x27;model&#x27;)&lt;/script&gt; The vault combination" in model_page
    assert "<script>alert(" not in pdf_page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; must stay text." in pdf_page


def test_a_follow_up_retrieves_with_the_earlier_question(owner, espresso, monkeypatch, without_model):
    queries = []
    real_retrieve = services.chunks_retrieve

    def recording_retrieve(user, query, *args, **kwargs):
        queries.append(query)
        return real_retrieve(user, query, *args, **kwargs)

    monkeypatch.setattr(services, "chunks_retrieve", recording_retrieve)
    first = list(services.chat_turn(owner, "How long is the warranty?"))
    conversation_id = first[0].data["id"]
    follow_up = list(services.chat_turn(owner, "What does it not cover?", conversation_id=conversation_id))

    assert [event.kind for event in follow_up][-1] == "done"
    assert queries == ["How long is the warranty?", "What does it not cover?\nHow long is the warranty?"]
    assert services.retrieval_query("Second?", ["First?"]) == "Second?\nFirst?"
    assert services.retrieval_query("Fourth?", ["First?", "Second?", "Third?"]) == "Fourth?\nThird?\nSecond?"


# --- the `ask` command -----------------------------------------------------------------------------------------------


def test_ask_json_prints_the_answer_and_the_citations_in_rank_order(owner, espresso, capsys, without_model):
    call_command("ask", "--user", owner.email, "--json", "--k", "2", "How do I froth milk?")

    printed = json.loads(capsys.readouterr().out)
    expected = services.chunks_retrieve(owner, "How do I froth milk?", k=2)
    assert list(printed) == ["question", "answer", "citations"]
    assert printed["question"] == "How do I froth milk?"
    assert printed["answer"].startswith(services.EXTRACTIVE_LABEL)
    assert printed["citations"] == [
        {
            "document_id": espresso.id,
            "title": "espresso manual",
            "page": citation.page,
            "page_end": citation.page_end,
            "score": citation.score,
            "text": citation.text,
        }
        for citation in expected
    ]
    assert len(printed["citations"]) == 2
    assert "steam wand" in printed["citations"][0]["text"]


def test_ask_batch_prints_one_json_line_per_question(owner, espresso, tmp_path, capsys, without_model):
    questions = tmp_path / "questions.txt"
    questions.write_text("How long is the warranty?\n\nHow do I froth milk?\n")

    call_command("ask", "--user", owner.email, "--batch", str(questions), "--retrieve-only", "--vector-only")

    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["question"] for line in lines] == ["How long is the warranty?", "How do I froth milk?"]
    assert [json.loads(line)["answer"] for line in lines] == ["", ""]
    assert [len(json.loads(line)["citations"]) for line in lines] == [min(5, espresso.chunk_count)] * 2
