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
from tests.helpers import personal_workspace, server_sent_events
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
        row = VectorDatabase.objects.create(workspace=personal_workspace(user), provider="postgres")
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
    row = VectorDatabase.objects.get(workspace=personal_workspace(user))
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


def runs_of(event_kinds: list[str]) -> list[str]:
    """The kinds with each run of repeats written once: tokens that arrive together may leave as one event."""
    return [kind for index, kind in enumerate(event_kinds) if index == 0 or event_kinds[index - 1] != kind]


pytestmark = pytest.mark.django_db(transaction=True)


# --- retrieval -------------------------------------------------------------------------------------------------------


def test_retrieval_searches_only_the_tenants_own_ready_documents(owner, stranger, tenants, espresso):
    failed = ingest(owner, "kettle_failed.pdf", KETTLE_PAGES, status=Document.Status.FAILED)
    queued = ingest(owner, "kettle_queued.pdf", [*KETTLE_PAGES, "Spare parts."], status=Document.Status.QUEUED)
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


def test_without_a_model_the_answer_quotes_the_sentences_that_answer_over_the_asgi_server(
    owner, espresso, browser_for, without_model
):
    events = browser_for(owner).chat("How often should the espresso machine be descaled?")

    assert kinds(events)[:2] == ["conversation", "sources"]
    assert kinds(events)[-1] == "done"
    # The quote is ready at once: its first piece leaves alone, the rest together (chat.streaming).
    assert set(kinds(events)[2:-1]) == {"token"} and len(events) >= 4
    assert events[-1][1] == {"extractive": True, "found": True}
    answer = answer_of(events)
    citations = events[1][1]["citations"]
    assert [citation["number"] for citation in citations] == list(range(1, len(citations) + 1))
    best = citations[0]
    assert best["document_id"] == espresso.id
    # The answer is the quoted sentences and their markers: short, and nothing of the other passages.
    assert answer.startswith("> ") and answer.endswith("[1]")
    assert len(answer) <= 400
    assert "Descale the machine every three months" in answer
    assert best["quote"] and best["quote"] in best["text"]  # verbatim, for the viewer to highlight
    assert " ".join(best["quote"].split()) in answer
    assert all(citation["quote"] == "" for citation in citations if f"[{citation['number']}]" not in answer)
    assert set(best) == {
        "number", "document_id", "title", "page", "page_end", "score", "text", "quote", "location", "ocr",
    }  # fmt: skip
    assert (best["location"], best["ocr"]) == ("", False)  # a PDF's text layer: cited by page
    conversation_id = events[0][1]["id"]
    assert events[0][1]["title"] == "How often should the espresso machine be descaled?"
    # The conversation and both messages are in the tenant's own database, the citations with their quotes.
    assert tenant_rows(owner, "SELECT id::text, title, document_id FROM conversations") == [
        (conversation_id, "How often should the espresso machine be descaled?", None)
    ]
    assert tenant_rows(owner, "SELECT role, content, citations FROM messages ORDER BY id") == [
        ("user", "How often should the espresso machine be descaled?", []),
        ("assistant", answer, citations),
    ]


def test_a_question_the_documents_do_not_answer_is_not_found_and_cites_nothing(
    owner, espresso, browser_for, without_model
):
    events = browser_for(owner).chat("Who painted the Mona Lisa?")

    assert kinds(events)[:2] == ["conversation", "sources"]
    assert events[1][1] == {"citations": []}
    assert answer_of(events) == services.NOT_FOUND_ANSWER
    assert events[-1] == ("done", {"extractive": True, "found": False})
    assert tenant_rows(owner, "SELECT role, content, citations FROM messages ORDER BY id") == [
        ("user", "Who painted the Mona Lisa?", []),
        ("assistant", services.NOT_FOUND_ANSWER, []),
    ]


def test_the_relevance_floor_decides_found(owner, espresso, settings, without_model):
    question = "How often should the espresso machine be descaled?"
    relevance = services.passages_for_turn(owner, question).relevance
    assert 0.3 < relevance < 1

    settings.RETRIEVAL_RELEVANCE_FLOOR = relevance
    at_the_floor = services.passages_for_turn(owner, question)
    settings.RETRIEVAL_RELEVANCE_FLOOR = relevance + 0.001
    above = services.passages_for_turn(owner, question)

    assert (at_the_floor.found, len(at_the_floor.citations)) == (True, min(5, espresso.chunk_count))
    assert (above.found, above.citations, above.relevance) == (False, [], relevance)


def test_a_name_the_documents_define_makes_a_passage_relevant_whatever_the_floor(owner, espresso, settings):
    ingest(owner, "controller.pdf", ["Controller. The ESP32 board reads the boiler temperature every second."])
    settings.RETRIEVAL_RELEVANCE_FLOOR = 0.99  # no similarity reaches it

    named = services.passages_for_turn(owner, "What does the ESP32 do?", with_model=False)
    unnamed = services.passages_for_turn(owner, "What reads the temperature?", with_model=False)
    absent = services.passages_for_turn(owner, "What does the ESP8266 do?", with_model=False)

    assert named.found and "ESP32 board" in named.citations[0].text
    assert (unnamed.found, absent.found) == (False, False)
    assert services.identifiers("Why \\mbox and not \\hbox for T1, OT1 or asn1_get_length_der in 1989?") == {
        "\\mbox",
        "\\hbox",
        "T1",
        "OT1",
        "asn1_get_length_der",
    }


def test_with_no_ready_document_the_answer_says_so(owner, tenants, without_model):
    tenants(owner)

    events = list(services.chat_turn(owner, "How long is the warranty?"))

    assert [event.kind for event in events] == ["conversation", "sources", *["token"] * (len(events) - 3), "done"]
    assert "".join(event.data["text"] for event in events if event.kind == "token") == services.NO_DOCUMENTS_ANSWER
    assert events[-1].data == {"extractive": True, "found": False}


def test_with_the_model_the_answer_streams_token_by_token_and_cites_sources(owner, espresso, browser_for, emulator):
    emulator.token_delay_seconds = 0.06  # slower than the stream's coalescing interval: each token its own event

    events = browser_for(owner).chat("How long is the warranty?", document=espresso.id)

    assert kinds(events)[:2] == ["conversation", "sources"]
    assert kinds(events)[-1] == "done" and events[-1][1] == {"extractive": False, "found": True}
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


def test_tokens_arriving_close_together_leave_together_every_token_in_order_then_done(
    owner, espresso, browser_for, emulator, settings
):
    settings.CHAT_STREAM_COALESCE_SECONDS = 0.05
    emulator.answer = " ".join(f"word{number}" for number in range(60))
    emulator.token_delay_seconds = 0.005  # ~10 tokens in each interval

    events = browser_for(owner).chat("How long is the warranty?")

    assert runs_of(kinds(events)) == ["conversation", "sources", "token", "done"]
    tokens = [data["text"] for kind, data in events if kind == "token"]
    assert "".join(tokens) == emulator.answer  # every token, in order, none twice
    assert 2 <= len(tokens) <= 30  # joined into fewer events than the model's 60 tokens, yet still streamed
    assert events[-1][1] == {"extractive": False, "found": True}
    assert tenant_rows(owner, "SELECT role, content FROM messages ORDER BY id") == [
        ("user", "How long is the warranty?"),
        ("assistant", emulator.answer),
    ]


def test_a_model_failing_mid_stream_ends_with_a_readable_error_and_keeps_the_partial_answer(
    owner, espresso, browser_for, emulator
):
    emulator.drop_stream_next(after_tokens=3)

    events = browser_for(owner).chat("How long is the warranty?")

    assert runs_of(kinds(events)) == ["conversation", "sources", "token", "error"]
    assert events[-1][1] == {"message": MODEL_STOPPED}
    partial = answer_of(events)
    assert partial == "According to ["
    assert tenant_rows(owner, "SELECT role, content FROM messages ORDER BY id") == [
        ("user", "How long is the warranty?"),
        ("assistant", partial),
    ]


def test_a_stopped_answer_keeps_what_was_streamed_marked_as_stopped(owner, espresso, emulator):
    emulator.answer = " ".join(f"word{number}" for number in range(50))
    turn = services.chat_turn(owner, "How long is the warranty?")
    events = [next(turn) for _ in range(5)]  # conversation, sources and three pieces of the answer

    turn.close()  # what the view does when the reader stops the answer or goes away

    assert kinds([(event.kind, event.data) for event in events]) == [
        "conversation",
        "sources",
        "token",
        "token",
        "token",
    ]
    streamed = "".join(event.data["text"] for event in events[2:])
    assert streamed.split() == ["word0", "word1", "word2"]
    stored = f"{streamed.rstrip()}\n\n{services.STOPPED_MARK}"
    assert tenant_rows(owner, "SELECT role, content FROM messages ORDER BY id") == [
        ("user", "How long is the warranty?"),
        ("assistant", stored),
    ]
    assert services.answer_split_stopped(stored) == (streamed.rstrip(), True)
    assert services.answer_split_stopped(streamed) == (streamed, False)


def test_a_stop_before_the_answer_began_stores_an_empty_stopped_answer(owner, espresso, without_model):
    turn = services.chat_turn(owner, "How long is the warranty?")
    assert next(turn).kind == "conversation"

    turn.close()

    assert tenant_rows(owner, "SELECT role, content FROM messages ORDER BY id") == [
        ("user", "How long is the warranty?"),
        ("assistant", services.STOPPED_MARK),
    ]
    assert services.answer_split_stopped(services.STOPPED_MARK) == ("", True)


def test_a_reader_leaving_mid_stream_stops_the_answer_and_the_page_shows_it_stopped(
    owner, espresso, browser_for, emulator
):
    emulator.answer = " ".join(f"word{number}" for number in range(400))
    emulator.token_delay_seconds = 0.05
    browser = browser_for(owner)
    form = {"question": "How long is the warranty?", "conversation": "", "document": ""}
    received, kind = [], ""
    with browser.http.stream("POST", reverse("chat_stream"), data=form, headers=browser._csrf()) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind == "token":
                received.append(json.loads(line[len("data: ") :])["text"])
            if len(received) == 3:
                break  # leaving the with block closes the connection, as a closed tab or the stop button does

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(tenant_rows(owner, "SELECT id FROM messages")) < 2:
        time.sleep(0.1)
    ((conversation_id, answer),) = tenant_rows(
        owner, "SELECT conversation_id, content FROM messages WHERE role = 'assistant'"
    )
    partial, stopped = services.answer_split_stopped(answer)
    assert stopped
    assert partial.startswith("".join(received).rstrip())
    assert emulator.answer.startswith(partial) and len(partial) < len(emulator.answer)  # cut short, not finished
    page = browser.get(f"{reverse('chat')}?c={conversation_id}").text
    assert '<p class="stopped-note">Stopped.</p>' in page
    assert services.STOPPED_MARK not in page


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


# --- retrieval per turn ------------------------------------------------------------------------------------------------


def _pages_of(citations, document: Document) -> list[int]:
    return [citation["page"] for citation in citations if citation["document_id"] == document.id]


def test_a_follow_up_searches_with_the_conversation_and_a_new_topic_does_not(owner, espresso, without_model):
    garden = ingest(owner, "garden.pdf", GARDEN_PAGES)
    descaling = page_of("Hard water leaves limescale", ESPRESSO_PAGES)
    aphids = page_of("Aphids cluster under young leaves", GARDEN_PAGES)
    first = list(services.chat_turn(owner, "How do I descale the espresso machine?"))
    conversation_id = first[0].data["id"]

    follow_up = list(services.chat_turn(owner, "How often should I do that?", conversation_id=conversation_id))
    switch = list(
        services.chat_turn(owner, "How do I get rid of aphids on my plants?", conversation_id=conversation_id)
    )

    best = follow_up[1].data["citations"][0]
    assert best["document_id"] == espresso.id and best["page"] <= descaling <= best["page_end"]
    assert "every three months" in best["quote"]
    assert follow_up[-1].data == {"extractive": True, "found": True}
    best = switch[1].data["citations"][0]
    assert best["document_id"] == garden.id and best["page"] <= aphids <= best["page_end"]
    assert "Spray them off with a jet of water" in "".join(e.data["text"] for e in switch if e.kind == "token")


def test_retrieval_per_turn_chooses_the_question_alone_or_with_its_context(owner, espresso, without_model):
    garden = ingest(owner, "garden.pdf", GARDEN_PAGES)
    history = [services.Exchange("How do I descale the espresso machine?", "> Descale the machine [1]")]

    follow_up = services.passages_for_turn(owner, "How often should I do that?", history)
    switch = services.passages_for_turn(owner, "How do I get rid of aphids on my plants?", history)
    off_topic = services.passages_for_turn(owner, "Who painted the Mona Lisa?", history)

    assert follow_up.strategy == "contextual"
    assert follow_up.query == "How often should I do that?\nHow do I descale the espresso machine?"
    assert follow_up.citations[0].document_id == espresso.id
    assert (switch.strategy, switch.query) == ("question", "How do I get rid of aphids on my plants?")
    assert switch.citations[0].document_id == garden.id
    # No word of it points back, so the conversation cannot make it relevant.
    assert (off_topic.strategy, off_topic.found, off_topic.citations) == ("question", False, [])


def test_the_decision_between_the_question_and_its_context():
    assert services.refers_back("Does it expect the tag to be part of its input?")
    assert services.refers_back("Which file would such declarations have to go into?")
    assert services.refers_back("Can I typeset anything from there?")
    assert services.refers_back("And the second one?")
    assert services.refers_back("Why?")
    assert not services.refers_back("Who painted the Mona Lisa?")
    assert not services.refers_back("How do I get rid of aphids on my plants?")

    margin = services.CONTEXT_MARGIN
    assert services.search_choice(0.30, 0.30 + margin + 0.01) == "contextual"
    assert services.search_choice(0.60, 0.60 - margin - 0.01) == "question"
    assert services.search_choice(0.60, 0.62) == "fused"
    assert services.search_choice(0.60, None) == "question"
    assert services.search_choice(None, 0.5) == "contextual"

    history = [
        services.Exchange("Which language is the OT4 encoding meant for?"),
        services.Exchange("Who designed it?"),
    ]
    # The previous question refers back itself: the one before it comes along; never more than two.
    assert services.contextual_query("Why was it needed?", history) == (
        "Why was it needed?\nWho designed it?\nWhich language is the OT4 encoding meant for?"
    )
    assert services.contextual_query("Why was it needed?", history[:1]) == (
        "Why was it needed?\nWhich language is the OT4 encoding meant for?"
    )


def test_history_pairs_each_question_with_its_answer():
    from vectordb.conversations import MessageRecord

    messages = [
        MessageRecord(1, "user", "How long is the warranty?"),
        MessageRecord(2, "assistant", "> Two years [1]", [{"number": 1}]),
        MessageRecord(3, "user", "Who painted the Mona Lisa?"),
        MessageRecord(4, "assistant", services.NOT_FOUND_ANSWER, []),
        MessageRecord(5, "user", "Unanswered, the model failed"),
    ]

    assert services.history_from_messages(messages) == [
        services.Exchange("How long is the warranty?", "> Two years [1]", True),
        services.Exchange("Who painted the Mona Lisa?", services.NOT_FOUND_ANSWER, False),
        services.Exchange("Unanswered, the model failed", "", True),
    ]


def test_with_a_model_a_follow_up_is_rewritten_as_a_standalone_question(owner, espresso, browser_for, emulator):
    garden = ingest(owner, "garden.pdf", GARDEN_PAGES)
    descaling = page_of("Hard water leaves limescale", ESPRESSO_PAGES)
    browser = browser_for(owner)
    conversation_id = browser.chat("How do I get rid of aphids?")[0][1]["id"]
    emulator.rewrite = "How often should the espresso machine be descaled?"

    events = browser.chat("And the machine, how often?", conversation=conversation_id)

    rewrite_request, answer_request = emulator.requests_to("chat.completions")[-2:]
    system, *history, latest = rewrite_request.messages
    assert "standalone question" in system["content"]
    assert [message["role"] for message in history] == ["user", "assistant"]
    assert history[0]["content"] == "How do I get rid of aphids?"
    assert latest == {"role": "user", "content": "And the machine, how often?"}
    assert not rewrite_request.stream
    sources = events[1][1]["citations"]
    assert sources[0]["document_id"] == espresso.id and sources[0]["page"] <= descaling <= sources[0]["page_end"]
    assert all(source["quote"] == "" for source in sources)  # a model's answer quotes nothing verbatim
    assert garden.id not in {source["document_id"] for source in sources[:1]}
    assert answer_request.stream
    assert events[-1] == ("done", {"extractive": False, "found": True})
    assert emulator.request_counts == {"chat.completions": 3}


def test_a_failed_rewrite_falls_back_to_deciding_without_the_model(owner, espresso, emulator):
    first = list(services.chat_turn(owner, "How do I descale the espresso machine?"))
    emulator.fail_next(500, times=3)  # the rewrite's request and the client's two retries

    follow_up = list(services.chat_turn(owner, "How often should I do that?", conversation_id=first[0].data["id"]))

    assert [event.kind for event in follow_up][-1] == "done"
    assert "Hard water leaves limescale" in follow_up[1].data["citations"][0]["text"]
    assert follow_up[-1].data == {"extractive": False, "found": True}


def test_the_model_prompt_asks_for_inline_markers_and_allows_not_knowing(owner, espresso, emulator):
    list(services.chat_turn(owner, "How long is the warranty?"))

    (request,) = emulator.requests_to("chat.completions")
    system = request.messages[0]["content"]
    assert "put that source's number in square brackets, like [1]" in system
    assert "say in one sentence that you don't know" in system
    assert "\n[1] espresso manual, page " in system
    assert request.messages[-1] == {"role": "user", "content": "How long is the warranty?"}


def test_a_question_without_relevant_passages_never_reaches_the_model(owner, espresso, emulator):
    events = list(services.chat_turn(owner, "Who painted the Mona Lisa?"))

    assert "".join(event.data["text"] for event in events if event.kind == "token") == services.NOT_FOUND_ANSWER
    assert events[-1].data == {"extractive": False, "found": False}
    assert emulator.request_counts == {}


def test_identical_passages_are_cited_once(owner, espresso, without_model):
    # A reprint that repeats the manual word for word, plus a page (different bytes, so the upload is accepted): its
    # first passages are the manual's own.
    reprint = ingest(owner, "espresso_reprint.pdf", [*ESPRESSO_PAGES, "Reprinted in 2024 without changes."])
    original = [" ".join(text.split()) for (text,) in tenant_rows(owner, "SELECT content FROM embeddings")]
    assert len(original) > len(set(original))  # the tenant holds copies

    passages = services.chunks_retrieve(owner, "How often should I descale the machine?", k=10)

    texts = [" ".join(citation.text.split()) for citation in passages]
    assert len(texts) == len(set(texts)) == len(set(original))
    assert sum("Hard water leaves limescale" in text for text in texts) == sum(
        "Hard water leaves limescale" in text for text in set(original)
    )
    assert reprint.id in {citation.document_id for citation in passages}


# --- the `ask` command -----------------------------------------------------------------------------------------------


def test_ask_json_prints_the_answer_alone_and_the_citations_in_rank_order(owner, espresso, capsys, without_model):
    call_command("ask", "--user", owner.email, "--json", "--k", "2", "How do I froth milk?")

    printed = json.loads(capsys.readouterr().out)
    expected = services.passages_for_turn(owner, "How do I froth milk?", k=2)
    assert list(printed) == ["question", "answer", "found", "relevance", "citations"]
    assert printed["question"] == "How do I froth milk?"
    assert printed["answer"] == services.extractive_answer(expected.citations)
    assert printed["answer"].startswith("> ") and "[1]" in printed["answer"]
    assert (printed["found"], printed["relevance"]) == (True, expected.relevance)
    assert printed["citations"] == [
        {
            "document_id": espresso.id,
            "title": "espresso manual",
            "page": citation.page,
            "page_end": citation.page_end,
            "location": "",
            "ocr": False,
            "score": citation.score,
            "text": citation.text,
            "quote": citation.quote,
        }
        for citation in expected.citations
    ]
    assert len(printed["citations"]) == 2
    assert "steam wand" in printed["citations"][0]["text"]


def test_ask_batch_prints_one_json_line_per_question(owner, espresso, tmp_path, capsys, without_model):
    questions = tmp_path / "questions.txt"
    questions.write_text("How long is the warranty?\n\nHow do I froth milk?\n")

    call_command("ask", "--user", owner.email, "--batch", str(questions), "--retrieve-only", "--vector-only")

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["question"] for line in lines] == ["How long is the warranty?", "How do I froth milk?"]
    assert [(line["conversation"], line["answer"], line["found"]) for line in lines] == [(None, "", True)] * 2
    assert [len(line["citations"]) for line in lines] == [min(5, espresso.chunk_count)] * 2


def test_ask_batch_asks_labelled_lines_as_conversations(owner, espresso, tmp_path, capsys, without_model):
    garden = ingest(owner, "garden.pdf", GARDEN_PAGES)
    questions = tmp_path / "conversations.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                {"conversation": "coffee", "question": "How do I descale the espresso machine?"},
                {"conversation": "garden", "question": "How do I get rid of aphids?"},
                {"conversation": "coffee", "question": "How often should I do that?"},
                {"conversation": "garden", "question": "Who painted the Mona Lisa?"},
            ]
        )
    )

    call_command("ask", "--user", owner.email, "--batch", str(questions))

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["conversation"], line["found"]) for line in lines] == [
        ("coffee", True),
        ("garden", True),
        ("coffee", True),
        ("garden", False),
    ]
    assert [line["citations"][0]["document_id"] for line in lines[:3]] == [espresso.id, garden.id, espresso.id]
    assert "every three months" in lines[2]["answer"]  # the follow-up was asked in its own conversation
    assert (lines[3]["answer"], lines[3]["citations"]) == (services.NOT_FOUND_ANSWER, [])


def test_ask_applies_the_relevance_floor_with_retrieve_only(owner, espresso, capsys, without_model):
    call_command("ask", "--user", owner.email, "--retrieve-only", "--json", "Who painted the Mona Lisa?")
    printed = json.loads(capsys.readouterr().out)
    call_command("ask", "--user", owner.email, "--retrieve-only", "Who painted the Mona Lisa?")
    shown = capsys.readouterr().out

    assert (printed["found"], printed["answer"], printed["citations"]) == (False, "", [])
    assert printed["relevance"] < services.settings.RETRIEVAL_RELEVANCE_FLOOR
    assert shown == services.NOT_FOUND_ANSWER + "\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--document", "9999", "Warranty?"], "owner@example.com has no document 9999"),
        (["--k", "0", "Warranty?"], "--k 0: give at least 1 passage"),
        ([], "give a QUESTION or --batch FILE"),
        (["--batch", "/nonexistent/questions.txt"], "--batch /nonexistent/questions.txt: no such file"),
        (["   "], "Type a question first."),
    ],
)
def test_ask_refuses_bad_arguments_in_one_line(owner, espresso, arguments, message, without_model):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as refused:
        call_command("ask", "--user", owner.email, *arguments)

    assert str(refused.value) == message


def test_ask_refuses_a_batch_line_that_is_not_a_question(owner, espresso, tmp_path, capsys, without_model):
    from django.core.management.base import CommandError

    batch = tmp_path / "bad.jsonl"
    batch.write_text(
        '{"conversation": "a", "question": "How do I froth milk?"}\n{"conversation": "a", "question": ""}\n'
    )

    with pytest.raises(CommandError) as refused:
        call_command("ask", "--user", owner.email, "--batch", str(batch))

    assert str(refused.value) == f'--batch {batch}, line 2: "question" must be a non-empty string'
    assert capsys.readouterr().out == ""  # checked before anything was asked
