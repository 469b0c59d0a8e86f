"""Chat turn overhead: server-side time before the first token, with the OpenAI emulator answering instantly.

The real ASGI app (uvicorn serving config.asgi in a child process as `make run` serves it, tests/asgi_server.py)
with OPENAI_API_KEY and OPENAI_BASE_URL pointing at tests/emulators/openai.py (latency 0, no token delay) and the local
all-MiniLM-L6-v2 embedder (EMBEDDING_MODEL, 384 dims). A signed-in user (logged in through /accounts/login/ with httpx, session cookie
and CSRF token carried as the browser does) with a ready tenant and one small ingested document (the first pages of
encguide.pdf). After a few untimed warm-up turns, each timed turn is a POST to /chat/stream (a new conversation, the
whole tenant searched) read until the first `event: token` line.

The emulator runs in this process and records, per chat completion, when it received the request (after reading it)
and when it began streaming (headers sent, role chunk next, first content chunk right after); all clocks are this
process's perf_counter. overhead = time to first token - the emulator's own handling time. The breakdown:
before_model = request sent -> emulator has the request (session, tenant lookup, connection, embedding, search,
prompt, client), after_model = emulator started streaming -> token seen by the client (parsing, the thread hop, ASGI).
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.core.files.base import ContentFile
from pypdf import PdfReader, PdfWriter

from bench.common import create_tenants, milliseconds, percentile, progress, remove_tenants
from bench.framework import Target, load_average
from documents import services as document_services
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import VectorDatabase
from tests.asgi_server import AsgiServerProcess
from tests.emulators import openai as openai_emulator

TARGETS = [Target("p50_ms", at_most=50, unit=" ms", label="p50_ms (overhead before first token, warm tenant)")]

PREFIX = "bench-chat"
PASSWORD = "bench-chat-password-7f3a"
PDF = Path("/work/shared/eval/pdfs/encguide.pdf")
PAGES = 4
TURNS, QUICK_TURNS = 100, 30
WARM_UP_TURNS = 5
SERVER_READY_TIMEOUT_SECONDS = 90
QUESTIONS = [
    "How do I change the input encoding of a document?",
    "What does the fontenc package do?",
    "Which encodings does LaTeX support for text fonts?",
    "How are font encodings named?",
    "What is the OT1 encoding?",
    "How do I write accented characters?",
    "What is the difference between T1 and OT1?",
    "Which commands select an encoding?",
]
# As bench/provisioning.py explains: the emulator's http.server writes small segments, and with Nagle's algorithm a
# segment can wait for the client's delayed ACK (~40 ms) after the emulator thinks it has sent it. Real OpenAI does
# not do that, and the stall would be counted as our overhead.
EMULATOR_TCP_NODELAY = True


def run(quick: bool) -> dict:
    turns = QUICK_TURNS if quick else TURNS
    load_at_start = load_average()
    remove_tenants(PREFIX)
    nagle_was_disabled = openai_emulator._Handler.disable_nagle_algorithm
    openai_emulator._Handler.disable_nagle_algorithm = EMULATOR_TCP_NODELAY
    emulator = _TimedEmulator().start()
    server = None
    try:
        email = _tenant_with_document()
        environment = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
        environment.update(
            {
                "OPENAI_API_KEY": openai_emulator.DEFAULT_API_KEY,
                "OPENAI_BASE_URL": emulator.base_url,
                "EMBEDDING_MODEL": "all-MiniLM-L6-v2",
                "EMBEDDING_DIMENSIONS": "384",
                "LOG_LEVEL": "WARNING",
                # One person asks 105 questions in a row: the per-person rate limit is not what this measures.
                "CHAT_MAX_QUESTIONS_PER_MINUTE": "1000000",
            }
        )
        log_path = settings.DATA_DIR / "logs" / "bench-chat-overhead-uvicorn.log"
        server = AsgiServerProcess(environment, log_path, ready_timeout_seconds=SERVER_READY_TIMEOUT_SECONDS)
        server.start()
        progress(f"uvicorn (pid {server.process.pid}) on {server.url}")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            _log_in(http, email)
            progress(f"{WARM_UP_TURNS} warm-up turns")
            for number in range(WARM_UP_TURNS):
                _turn(http, emulator, QUESTIONS[number % len(QUESTIONS)])
            progress(f"{turns} timed turns")
            timings = [_turn(http, emulator, QUESTIONS[number % len(QUESTIONS)]) for number in range(turns)]
            direct = _direct_emulator_ttft(emulator, turns)
        result = _summarise(timings, direct)
        result["turns"] = turns
        result["load_average_start"] = load_at_start
        result["emulator_tcp_nodelay"] = EMULATOR_TCP_NODELAY
        result["load_average_end"] = load_average()
        return result
    finally:
        if server is not None:
            server.stop()
        emulator.stop()
        openai_emulator._Handler.disable_nagle_algorithm = nagle_was_disabled
        progress(f"dropped {remove_tenants(PREFIX)} bench tenant database")


# --- the emulator, timed -----------------------------------------------------------------------------------------------


class _TimedEmulator(openai_emulator.OpenAIEmulator):
    """Records (received, streaming started) per chat completion, on this process's perf_counter."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[tuple[float, float]] = []
        self._local = threading.local()

    def authenticate(self, authorization):  # the first thing _handle does after reading the request
        self._local.received = time.perf_counter()
        return super().authenticate(authorization)

    def _stream_started(self) -> None:
        started = time.perf_counter()
        with self._lock:
            self.marks.append((self._local.received, started))
        super()._stream_started()


# --- the app -----------------------------------------------------------------------------------------------------------


def _tenant_with_document() -> str:
    [row] = create_tenants(PREFIX, 1)
    user = row.workspace.owner
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    ready = tenant_services.vector_database_provision(row.id)
    if ready.status != VectorDatabase.Status.READY:
        raise RuntimeError(f"bench tenant ended {ready.status}: {ready.last_error}")
    reader, writer = PdfReader(PDF), PdfWriter()
    for page in reader.pages[:PAGES]:
        writer.add_page(page)
    buffer = io.BytesIO()
    writer.write(buffer)
    document = document_services.document_upload(
        user, ContentFile(buffer.getvalue(), name="encguide-first-pages.pdf"), enqueue=False
    )
    document_services.document_ingest(document.id)
    document.refresh_from_db()
    if document.status != Document.Status.READY:
        raise RuntimeError(f"bench document ended {document.status}: {document.error_message}")
    progress(f"tenant ready with one document: {document.page_count} pages, {document.chunk_count} chunks")
    return user.email


def _log_in(http: httpx.Client, email: str) -> None:
    http.get("/accounts/login/").raise_for_status()
    response = http.post(
        "/accounts/login/",
        data={"login": email, "password": PASSWORD, "csrfmiddlewaretoken": http.cookies["csrftoken"]},
        headers={"Referer": f"{http.base_url}/accounts/login/"},
    )
    if response.status_code != 302 or "sessionid" not in http.cookies:
        raise RuntimeError(f"login failed: {response.status_code} {response.text[:300]}")


def _turn(http: httpx.Client, emulator: _TimedEmulator, question: str) -> dict:
    """One chat turn: seconds to the sources event and to the first token, and the emulator's marks for it."""
    marks_before = len(emulator.marks)
    form = {"question": question, "conversation": "", "document": ""}
    headers = {"X-CSRFToken": http.cookies["csrftoken"]}
    sources = first_token = None
    events = []
    started = time.perf_counter()
    with http.stream("POST", "/chat/stream", data=form, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"/chat/stream answered {response.status_code}: {response.read()[:300]}")
        for line in response.iter_lines():
            if not line.startswith("event: "):
                continue
            kind = line.removeprefix("event: ")
            events.append(kind)
            if kind == "sources" and sources is None:
                sources = time.perf_counter() - started
            elif kind == "token" and first_token is None:
                first_token = time.perf_counter() - started
    if first_token is None or "error" in events:
        raise RuntimeError(f"chat turn without a token: events {events}")
    new_marks = emulator.marks[marks_before:]
    if len(new_marks) != 1:
        raise RuntimeError(f"expected one chat completion per turn, the emulator saw {len(new_marks)}")
    received, streaming = new_marks[0]
    return {
        "ttft": first_token,
        "sources": sources,
        "emulator": streaming - received,
        "before_model": received - started,
        "after_model": started + first_token - streaming,
    }


def _direct_emulator_ttft(emulator: _TimedEmulator, count: int) -> list[float]:
    """The emulator's time to first content chunk for a direct streamed request (keep-alive httpx, no app)."""
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [
            {"role": "system", "content": "Sources:\n\n[1] encguide, page 1:\n" + "LaTeX font encodings. " * 60},
            {"role": "user", "content": QUESTIONS[0]},
        ],
    }
    headers = {"Authorization": f"Bearer {openai_emulator.DEFAULT_API_KEY}"}
    seconds = []
    with httpx.Client(base_url=emulator.base_url, timeout=30, headers=headers) as http:
        for number in range(count + 3):
            started = time.perf_counter()
            first = None
            with http.stream("POST", "/chat/completions", json=body) as response:
                for line in response.iter_lines():  # read to the end, so the connection is reused
                    if first is None and '"content": "' in line and '"content": ""' not in line:
                        first = time.perf_counter() - started
            if number >= 3 and first is not None:
                seconds.append(first)
    return seconds


def _summarise(timings: list[dict], direct: list[float]) -> dict:
    def p(key: str, fraction: float) -> float:
        return milliseconds(percentile([timing[key] for timing in timings], fraction))

    overheads = [timing["ttft"] - timing["emulator"] for timing in timings]
    return {
        "p50_ms": milliseconds(percentile(overheads, 0.5)),
        "p99_ms": milliseconds(percentile(overheads, 0.99)),
        "ttft_p50_ms": p("ttft", 0.5),
        "ttft_p99_ms": p("ttft", 0.99),
        "sources_event_p50_ms": p("sources", 0.5),
        "before_model_p50_ms": p("before_model", 0.5),
        "emulator_handling_p50_ms": p("emulator", 0.5),
        "after_model_p50_ms": p("after_model", 0.5),
        "emulator_direct_ttft_p50_ms": milliseconds(percentile(direct, 0.5)),
    }
