"""Load: many tenants, concurrent chat streams through the real ASGI server, within the tenant connection cap.

200 tenants (quick: 40), each with a ready database (postgres provider) holding one ready document of a few synthetic
chunks (embedded once by the local model and reused, so retrieval returns sources), and a signed-in session. The app
runs as uvicorn in a child process (one worker) against the OpenAI emulator, which answers after a realistic 300 ms to
the first token and streams a gpt-4o-mini-sized answer: 200 tokens 12 ms apart (~85 tokens/s). The server's CPU
time is reported per turn and per streamed token. Then 50 (quick: 20) concurrent clients (asyncio + httpx) each run
a few chat turns on randomly chosen tenants through POST /chat/stream, timing the first `event: token`; an error is a
non-200, an `event: error`, a stream that ends without `done`, or a timeout. Meanwhile pg_stat_activity is sampled
every 100 ms for client backends on tenant databases: all of them are the server's (this process closes its own
tenant connections first), so their peak must stay at or under TENANT_POOL_MAX_TOTAL_CONNECTIONS.
The server's log is kept in <data>/logs/bench-load-uvicorn.log.

The load runs twice in the same section: with one web process, then with two web processes sharing the listening
socket (each with half the connection cap) and two Celery workers beside them, the stack as deployed on one machine;
the second run's figures end in `_2_web_processes`. Tokens are the model's (the emulator streams one a chunk, and the
client re-splits the answer it received the same way): the server may join tokens that arrive together into one
`token` event (`token_events_per_answer_mean`).

Diagnosis: BENCH_LOAD_SERVER_THREADS=N runs the server with N threads in its default thread pools (asyncio's default
is min(32, CPUs + 4), where the chat view's sync_to_async(thread_sensitive=False) steps run); BENCH_LOAD_PROFILE=<file>
records the server with py-spy during the load. DATABASE_CONN_MAX_AGE is passed on to the server like the rest of the
environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from importlib import import_module
from pathlib import Path

import httpx
import psycopg
from django.conf import settings
from django.db import connection as main_database_connection
from django.utils import timezone
from django.utils.crypto import get_random_string

from bench.common import admin_dsn, create_tenants, milliseconds, percentile, progress, remove_tenants, stopwatch
from bench.framework import Target, load_average
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import VectorDatabase
from tenants.provisioners.postgres import DATABASE_PREFIX, database_name
from tests.asgi_server import AsgiServerProcess, processes_stop
from tests.emulators.openai import NO_SOURCE_ANSWER, OpenAIEmulator, grounded_answer, split_into_tokens
from vectordb.chunks import ChunkRecord, chunks_replace
from vectordb.connections import get_registry
from vectordb.embeddings import LOCAL_MODEL, get_embedder

TARGETS = [
    Target("errors", at_most=0),
    Target("p99_first_token_ms", at_most=1500, unit=" ms", label="first token p99"),
    # The cap minus the most tenant-database connections seen open at once: negative means the cap was exceeded.
    Target("tenant_connection_headroom", at_least=0),
]

PREFIX = "bench-load"
TENANTS, QUICK_TENANTS = 200, 40
CLIENTS, QUICK_CLIENTS = 50, 20
TURNS_PER_CLIENT = 4
# Fewer tenants in the quick run: a lower cap still makes the registry evict idle tenants to stay under it.
CONNECTION_CAP, QUICK_CONNECTION_CAP = 40, 20
PROVISIONING_THREADS = 4  # provisioning is ~100-200 ms of mostly server work per tenant
CHUNKS_PER_TENANT = 8
FIRST_TOKEN_SECONDS = 0.3
# A real gpt-4o-mini answer: about 200 tokens at ~85 tokens a second (a stream of ~2.4 s), not a one-line quote.
ANSWER_TOKENS = 200
TOKEN_DELAY_SECONDS = 0.012
SAMPLE_INTERVAL_SECONDS = 0.1
TURN_TIMEOUT_SECONDS = 60.0
# The warm-up loads the embedding model in the server: over a minute when the machine is shared and busy.
WARM_UP_TIMEOUT_SECONDS = 300.0
# The load runs once per entry: one web process, then two web processes and two Celery workers on the same stack
# (Redis, Postgres, the model), each web process with its share of the tenant connection cap.
WEB_PROCESS_COUNTS = (1, 2)
WORKERS_BESIDE_SEVERAL_WEB_PROCESSES = 2
SERVER_READY_TIMEOUT_SECONDS = 90.0
SERVER_STOP_TIMEOUT_SECONDS = 20.0
ERROR_EXAMPLES = 5
# Diagnosis only: BENCH_LOAD_SERVER_THREADS=N gives the server's default thread pools N threads instead of asyncio's
# min(32, CPUs + 4), to see what the chat view's sync_to_async(thread_sensitive=False) steps cost when they queue.
SERVER_THREADS_VARIABLE = "BENCH_LOAD_SERVER_THREADS"
# Diagnosis only: BENCH_LOAD_PROFILE=<file> records the server with py-spy during the load (collapsed stacks).
PROFILE_VARIABLE = "BENCH_LOAD_PROFILE"

# Short passages; the emulator's answer quotes the first sentence of source [1] (~20 words -> ~30 tokens).
PASSAGES = [
    "The espresso machine warranty lasts two years from the date of purchase and covers the pump, boiler and heating "
    "element. Wear parts such as gaskets are excluded.",
    "Descale the machine every two months with the supplied citric acid solution, running three full tanks of clean "
    "water afterwards. Hard water needs monthly descaling.",
    "Employees accrue twenty-five days of paid annual leave per calendar year, and up to five unused days may be "
    "carried into the first quarter of the next year.",
    "Expense claims must be submitted within thirty days with itemised receipts attached, and claims above five "
    "hundred euros need a manager's written approval.",
    "The server room is kept between eighteen and twenty-two degrees Celsius, and the humidity alarm triggers above "
    "sixty percent relative humidity.",
    "Backups run nightly at two in the morning, are encrypted with AES-256 before leaving the building, and are kept "
    "for ninety days in a second region.",
    "The tenant must give the landlord three months of written notice before moving out, and the deposit is returned "
    "within thirty days after the final inspection.",
    "Late rent payments incur a penalty of two percent of the monthly rent for every week of delay, capped at ten "
    "percent in total.",
    "Patients take the tablet once a day with food, and the dose is doubled only after a doctor has reviewed the "
    "blood test results of the first week.",
    "The clinical trial enrolled four hundred adults across twelve hospitals, and half of them received the placebo "
    "without knowing it.",
    "Solar panels on the south roof produce about four thousand kilowatt hours a year, which covers roughly sixty "
    "percent of the building's electricity.",
    "The battery storage unit holds thirteen kilowatt hours and switches the house to backup power within twenty "
    "milliseconds of a grid failure.",
    "Shipments to customers outside the European Union leave the warehouse within five working days and carry a "
    "customs declaration for every parcel.",
    "Returned goods are accepted within fourteen days if they are unused and in their original packaging, and the "
    "refund follows within ten days.",
    "The violin is strung with synthetic core strings and should be kept at forty to sixty percent humidity to "
    "protect the spruce top from cracks.",
    "Copper pipes in the old wing are replaced with plastic ones during the summer renovation, which closes the east "
    "staircase for six weeks.",
    "The harbour ferry departs every forty minutes between six in the morning and midnight, and bicycles travel free "
    "of charge outside the rush hours.",
    "Glacier tours start at the visitor centre at nine o'clock, last about four hours, and require sturdy boots and "
    "a waterproof jacket.",
    "The turbine's gearbox oil is changed every eighteen months, and the blades are inspected by drone after every "
    "storm with winds above ninety kilometres per hour.",
    "Penguin colonies on the island are counted each November by two teams walking fixed routes, and the counts are "
    "published the following spring.",
]
QUESTIONS = [
    "How long does the warranty last?",
    "How often should I descale the machine?",
    "How many days of annual leave do employees get?",
    "When must expense claims be submitted?",
    "What temperature is the server room kept at?",
    "How long are backups kept?",
    "How much notice does a tenant have to give?",
    "What is the penalty for late rent?",
    "How often is the tablet taken?",
    "How many people were in the clinical trial?",
    "How much electricity do the solar panels produce?",
    "How quickly does the battery switch to backup power?",
    "When do shipments outside the EU leave the warehouse?",
    "What is the return policy?",
    "What humidity does the violin need?",
    "When does the harbour ferry run?",
]


@dataclass(frozen=True)
class BenchSession:
    """One signed-in tenant: the headers a browser would send to POST /chat/stream."""

    email: str
    database: str  # the tenant database's name
    session_key: str
    csrf_token: str

    def headers(self) -> dict[str, str]:
        return {
            "Cookie": (
                f"{settings.SESSION_COOKIE_NAME}={self.session_key}; {settings.CSRF_COOKIE_NAME}={self.csrf_token}"
            ),
            "X-CSRFToken": self.csrf_token,
        }


@dataclass
class TurnOutcome:
    error: str = ""  # empty when the turn ended with `done`
    first_token_seconds: float | None = None
    sources_seconds: float | None = None
    total_seconds: float = 0.0
    tokens: int = 0  # the model's tokens in the answer received (a `token` event may carry several)
    token_events: int = 0
    citations: int = 0


def run(quick: bool) -> dict:
    tenant_count = QUICK_TENANTS if quick else TENANTS
    clients = QUICK_CLIENTS if quick else CLIENTS
    cap = QUICK_CONNECTION_CAP if quick else CONNECTION_CAP
    if settings.EMBEDDING_MODEL != LOCAL_MODEL:
        raise RuntimeError(f"the load bench embeds with {LOCAL_MODEL}, not EMBEDDING_MODEL={settings.EMBEDDING_MODEL}")
    remove_tenants(PREFIX)  # leftovers of a crashed run
    sessions: list[BenchSession] = []
    result: dict = {"tenants": tenant_count, "concurrent_chats": clients}
    try:
        with stopwatch() as setup_watch:
            sessions = _prepare_tenants(tenant_count)
        progress(f"{tenant_count} tenants ready (database, document, chunks, session) in {setup_watch.seconds:.1f}s")
        result["setup_seconds"] = round(setup_watch.seconds, 1)
        # This process wrote the chunks through its own registry: close those so every tenant-database connection
        # sampled from now on is the server's.
        get_registry().close_all()
        for web_processes in WEB_PROCESS_COUNTS:
            measured = _load(sessions, clients, cap, web_processes)
            suffix = "" if web_processes == 1 else f"_{web_processes}_web_processes"
            result.update({f"{name}{suffix}": value for name, value in measured.items()})
    finally:
        _delete_sessions(sessions)
        progress(f"dropped {_remove_tenants_in_parallel()} tenant databases")
    return result


# --- setup -------------------------------------------------------------------------------------------------------------


def _prepare_tenants(count: int) -> list[BenchSession]:
    rows = create_tenants(PREFIX, count)
    vectors = get_embedder().embed_documents(PASSAGES)  # once; every tenant reuses them
    # The first alone: it may build the template database the others are cloned from.
    _prepare_tenant(rows[0], 0, vectors)
    with ThreadPoolExecutor(PROVISIONING_THREADS) as pool:
        list(pool.map(_prepare_tenant, rows[1:], range(1, count), [vectors] * (count - 1)))
    return [_session_for(row.workspace.owner, database_name(row.tenant_key)) for row in rows]


def _prepare_tenant(row: VectorDatabase, number: int, vectors: list[list[float]]) -> None:
    try:
        provisioned = tenant_services.vector_database_provision(row.id)
        if provisioned.status != VectorDatabase.Status.READY:
            raise RuntimeError(f"tenant {row.tenant_key} ended {provisioned.status}: {provisioned.last_error}")
        user = row.workspace.owner
        document = Document.objects.create(
            workspace=row.workspace,
            uploaded_by=user,
            title=f"Handbook {number}",
            file=f"bench/{PREFIX}-{number}.pdf",  # never opened: chat reads chunks, not the file
            original_filename=f"handbook-{number}.pdf",
            size_bytes=10_000,
            sha256=f"{number:064d}",
            status=Document.Status.READY,
            progress=1.0,
            page_count=CHUNKS_PER_TENANT,
            chunk_count=CHUNKS_PER_TENANT,
            embedding_model=settings.EMBEDDING_MODEL,
            ingested_at=timezone.now(),
        )
        # A different window of the passages per tenant, so tenants' answers differ.
        picks = [(number * 3 + offset) % len(PASSAGES) for offset in range(CHUNKS_PER_TENANT)]
        records = [
            ChunkRecord(
                document_id=document.id,
                chunk_index=index,
                content=PASSAGES[pick],
                first_page=index + 1,
                last_page=index + 1,
                embedding=vectors[pick],
                metadata={"source": document.original_filename},
            )
            for index, pick in enumerate(picks)
        ]
        with get_registry().connection(tenant_services.tenant_target(user)) as connection:
            chunks_replace(connection, document.id, records)
    finally:
        main_database_connection.close()  # each pool thread has its own; don't leave them to the garbage collector


def _session_for(user, database: str) -> BenchSession:
    """A signed-in session as django.contrib.auth.login() would store it, without a password hash or a login page."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    session = import_module(settings.SESSION_ENGINE).SessionStore()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    # A CSRF secret of 32 letters and digits serves as both cookie and header value.
    return BenchSession(
        email=user.email, database=database, session_key=session.session_key, csrf_token=get_random_string(32)
    )


def _delete_sessions(sessions: list[BenchSession]) -> None:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    for session in sessions:
        store(session_key=session.session_key).delete()


def _remove_tenants_in_parallel() -> int:
    """Drop the databases with a few threads (one by one takes minutes for 200), then remove_tenants() the rows."""
    ids = list(
        VectorDatabase.objects.filter(
            workspace__owner__email__startswith=f"{PREFIX}-", workspace__owner__email__endswith="@bench.invalid"
        )
        .exclude(status=VectorDatabase.Status.DELETED)
        .values_list("id", flat=True)
    )

    def deprovision(row_id: int) -> None:
        try:
            tenant_services.vector_database_deprovision(row_id)
        finally:
            main_database_connection.close()

    with ThreadPoolExecutor(PROVISIONING_THREADS) as pool:
        list(pool.map(deprovision, ids))
    remove_tenants(PREFIX)  # the rows, users (and their documents), and anything the threads left
    return len(ids)


# --- the server and the emulator ------------------------------------------------------------------------------------


def _server_environment(emulator: OpenAIEmulator, cap: int, application_name: str) -> dict[str, str]:
    environment = dict(os.environ)  # the bench's data folder, main database and Redis (Makefile / setup_django)
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    environment.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "OPENAI_API_KEY": emulator.api_key,
            "OPENAI_BASE_URL": emulator.base_url,
            # Chunks were embedded locally: the server must embed questions with the same model.
            "EMBEDDING_MODEL": LOCAL_MODEL,
            "EMBEDDING_DIMENSIONS": str(settings.EMBEDDING_DIMENSIONS),
            "TENANT_POOL_MAX_TOTAL_CONNECTIONS": str(cap),
            # Every turn reaches the model, as this load is meant: most questions are about another tenant's passages,
            # which the relevance floor would answer "not found" without a model stream.
            "RETRIEVAL_RELEVANCE_FLOOR": "-1",
            # Clients pick tenants at random, so a few may ask as the same person at once: the per-person limits
            # (3 streams, 20 questions a minute) would refuse them with 429, which is not what this load measures.
            "CHAT_MAX_CONCURRENT_STREAMS": str(CLIENTS),
            "CHAT_MAX_QUESTIONS_PER_MINUTE": str(CLIENTS * TURNS_PER_CLIENT),
            # libpq's application_name for every connection the server opens: how the sampler tells them apart.
            "PGAPPNAME": application_name,
        }
    )
    return environment


class ConnectionSampler(threading.Thread):
    """Counts the server's client backends every SAMPLE_INTERVAL_SECONDS: on tenant databases and on the main one.

    The server's connections are told apart by their application_name (PGAPPNAME in its environment: libpq sends it
    for Django's connections and the registry's alike), so other processes using the same Postgres server (another
    benchmark, a test run) are not counted. Every client of this run's tenant databases is counted too, as a check.
    """

    def __init__(self, application_name: str, tenant_databases: list[str], cap: int) -> None:
        super().__init__(name="pg-stat-activity-sampler", daemon=True)
        self.application_name = application_name
        self.tenant_databases = tenant_databases
        self.cap = cap
        self.tenant_samples: list[int] = []
        self.main_samples: list[int] = []
        self.any_client_samples: list[int] = []
        self.over_cap_snapshots: list[list[tuple]] = []  # the server's tenant backends whenever above the cap
        self.failure = ""
        self._stop_event = threading.Event()
        self._main_database = settings.DATABASES["default"]["NAME"]
        self._tenant_database_set = set(tenant_databases)

    def run(self) -> None:
        try:
            with psycopg.connect(admin_dsn(), autocommit=True) as connection:
                while True:
                    self._sample(connection)
                    if self._stop_event.wait(SAMPLE_INTERVAL_SECONDS):
                        return
        except psycopg.Error as error:
            self.failure = f"{type(error).__name__}: {error}"

    def _sample(self, connection: psycopg.Connection) -> None:
        rows = connection.execute(
            "SELECT pid, datname, application_name, state, backend_start, state_change, left(query, 60) "
            "FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND (application_name = %s OR datname = ANY(%s))",
            [self.application_name, self.tenant_databases],
        ).fetchall()
        server = [row for row in rows if row[2] == self.application_name]
        # datname is NULL while a backend is still starting up.
        server_tenant = [row for row in server if (row[1] or "").startswith(DATABASE_PREFIX)]
        self.tenant_samples.append(len(server_tenant))
        self.main_samples.append(sum(1 for row in server if row[1] == self._main_database))
        self.any_client_samples.append(sum(1 for row in rows if row[1] in self._tenant_database_set))
        if len(server_tenant) > self.cap and len(self.over_cap_snapshots) < 3:
            self.over_cap_snapshots.append(server_tenant)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


# --- the load ----------------------------------------------------------------------------------------------------------


def _load(sessions: list[BenchSession], clients: int, cap: int, web_processes: int = 1) -> dict:
    emulator = OpenAIEmulator(answer=realistic_answer).start()
    application_name = f"silo-bench-load-{os.getpid()}"
    # Each run its own log and profile: the second run would otherwise overwrite the first's.
    run_name = "" if web_processes == 1 else f"-{web_processes}-web-processes"
    log_path = settings.DATA_DIR / "logs" / f"bench-load-uvicorn{run_name}.log"
    threads = int(os.environ.get(SERVER_THREADS_VARIABLE) or 0) or None
    environment = _server_environment(emulator, cap // web_processes, application_name)
    server = AsgiServerProcess(
        environment,
        log_path,
        default_threads=threads,
        ready_timeout_seconds=SERVER_READY_TIMEOUT_SECONDS,
        processes=web_processes,
    )
    workers: list[subprocess.Popen] = []
    sampler = ConnectionSampler(application_name, [session.database for session in sessions], cap)
    try:
        server.start()
        if web_processes > 1:
            workers = _start_workers(environment, WORKERS_BESIDE_SEVERAL_WEB_PROCESSES, log_path.parent)
        progress(
            f"uvicorn up at {server.url}, {web_processes} process(es) (log {server.log_path}); "
            "warming up (embedding model, first turns)"
        )
        # Untimed and without added latency: loads the embedding model and opens the first connections. Several turns
        # at once, so that each web process takes some.
        warm_ups = asyncio.run(_warm_up(server.url, sessions, 4 * web_processes))
        failed = [turn for turn in warm_ups if turn.error or not turn.citations or not turn.tokens]
        if failed:
            raise RuntimeError(f"a warm-up turn failed: {failed[0]}; server log:\n{server.log_tail()}")
        emulator.reset()
        emulator.latency_seconds = FIRST_TOKEN_SECONDS
        emulator.token_delay_seconds = TOKEN_DELAY_SECONDS
        sampler.start()
        pids = [process.pid for process in server.processes]
        profiler = _start_profiler(pids[0], run_name)
        progress(f"{clients} concurrent clients x {TURNS_PER_CLIENT} turns over {len(sessions)} tenants")
        cpu_before = sum(_process_cpu_seconds(pid) for pid in pids)
        workers_cpu_before = sum(_process_cpu_seconds(worker.pid) for worker in workers)
        with stopwatch() as load_watch:
            outcomes = asyncio.run(_clients(server.url, sessions, clients))
        server_cpu_seconds = sum(_process_cpu_seconds(pid) for pid in pids) - cpu_before
        workers_cpu_seconds = sum(_process_cpu_seconds(worker.pid) for worker in workers) - workers_cpu_before
        load_during = load_average()
        _stop_profiler(profiler)
        time.sleep(SAMPLE_INTERVAL_SECONDS * 2)  # a last sample or two after the streams ended
        if not sampler.is_alive():
            raise RuntimeError(f"the pg_stat_activity sampler stopped early: {sampler.failure or 'see its traceback'}")
        sampler.stop()
        peak_streams = emulator.peak_streams_in_flight
    finally:
        if sampler.is_alive():
            sampler.stop()
        processes_stop(workers, SERVER_STOP_TIMEOUT_SECONDS)
        server.stop(SERVER_STOP_TIMEOUT_SECONDS)
        emulator.stop()
    if sampler.failure:
        raise RuntimeError(f"pg_stat_activity sampling failed: {sampler.failure}")
    result = _summary(outcomes, load_watch.seconds, sampler, cap, peak_streams, load_during, server)
    result["web_processes"] = web_processes
    if workers:
        result["celery_workers"] = len(workers)
        result["celery_workers_cpu_seconds"] = round(workers_cpu_seconds, 1)
    if threads:
        result["server_default_executor_threads"] = threads
    # On a shared machine the server gets what the others leave: its CPU share explains the latencies.
    result["server_cpu_seconds"] = round(server_cpu_seconds, 1)
    result["server_cpu_share_of_one_core"] = round(server_cpu_seconds / load_watch.seconds, 2)
    result["server_cpu_ms_per_turn"] = round(1000 * server_cpu_seconds / max(1, len(outcomes)), 1)
    streamed = sum(outcome.tokens for outcome in outcomes)
    result["tokens_streamed"] = streamed
    result["token_events_streamed"] = sum(outcome.token_events for outcome in outcomes)
    result["server_cpu_ms_per_token"] = round(1000 * server_cpu_seconds / max(1, streamed), 3)
    return result


def _start_workers(environment: dict[str, str], count: int, log_folder: Path) -> list[subprocess.Popen]:
    """`count` Celery workers on the bench's queue, one process each (`--pool solo`): the stack as deployed."""
    workers = []
    for number in range(1, count + 1):
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
                   "--pool", "solo", "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "-n", f"bench-load-{number}@%h"]  # fmt: skip
        with (log_folder / f"bench-load-worker-{number}.log").open("wb") as log:
            workers.append(subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT))
    return workers


def realistic_answer(messages: list[dict]) -> str:
    """The emulator's grounded answer (quoting source [1]), continued with cited explanation to ANSWER_TOKENS tokens,
    the length of a real model's answer."""
    answer = grounded_answer(messages)
    if answer == NO_SOURCE_ANSWER:
        return answer
    filler = (
        " The source states this directly [1], and nothing in the other passages contradicts it; where the document "
        "adds conditions or exceptions, they apply as written there [1]."
    )
    while len(split_into_tokens(answer)) < ANSWER_TOKENS:
        answer += filler
    return "".join(split_into_tokens(answer)[:ANSWER_TOKENS])


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process, all its threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_profiler(pid: int, run_name: str = "") -> subprocess.Popen | None:
    """py-spy on the (first) web process, into BENCH_LOAD_PROFILE, its name suffixed with `run_name`."""
    output = os.environ.get(PROFILE_VARIABLE)
    if not output:
        return None
    if run_name:
        path = Path(output)
        output = str(path.with_name(f"{path.stem}{run_name}{path.suffix}"))
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--output", output, "--threads",
               "--rate", "50"]  # fmt: skip
    profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attach before the load starts
    return profiler


def _stop_profiler(profiler: subprocess.Popen | None) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


def _summary(
    outcomes: list[TurnOutcome],
    seconds: float,
    sampler: ConnectionSampler,
    cap: int,
    peak_streams: int,
    load_during: list[float],
    server: AsgiServerProcess,
) -> dict:
    completed = [outcome for outcome in outcomes if not outcome.error]
    first_tokens = [outcome.first_token_seconds for outcome in outcomes if outcome.first_token_seconds is not None]
    sources = [outcome.sources_seconds for outcome in outcomes if outcome.sources_seconds is not None]
    totals = [outcome.total_seconds for outcome in completed]
    errors = Counter(outcome.error for outcome in outcomes if outcome.error)
    max_tenant_connections = max(sampler.tenant_samples, default=0)
    log = server.log_lines()
    warnings = [line for line in log if " WARNING " in line or " ERROR " in line or line.startswith("Traceback")]
    return {
        "turns": len(outcomes),
        "errors": sum(errors.values()),
        "p50_first_token_ms": milliseconds(percentile(first_tokens, 0.50)),
        "p99_first_token_ms": milliseconds(percentile(first_tokens, 0.99)),
        "max_first_token_ms": milliseconds(max(first_tokens, default=float("nan"))),
        "p50_sources_ms": milliseconds(percentile(sources, 0.50)),
        "p50_turn_ms": milliseconds(percentile(totals, 0.50)),
        "p99_turn_ms": milliseconds(percentile(totals, 0.99)),
        "throughput_turns_per_second": round(len(completed) / seconds, 2) if seconds else 0.0,
        "load_seconds": round(seconds, 1),
        "tokens_per_answer_mean": round(sum(o.tokens for o in completed) / len(completed), 1) if completed else 0.0,
        "token_events_per_answer_mean": (
            round(sum(o.token_events for o in completed) / len(completed), 1) if completed else 0.0
        ),
        "citations_per_answer_min": min((o.citations for o in completed), default=0),
        "max_open_tenant_connections": max_tenant_connections,
        "tenant_connection_cap": cap,
        "tenant_connection_headroom": cap - max_tenant_connections,
        # Every client of this run's tenant databases, whoever it is: equal to the above unless something else
        # (this process, another benchmark) connects to them.
        "max_open_tenant_connections_any_client": max(sampler.any_client_samples, default=0),
        # The server's own main-database connections; Django keeps them CONN_MAX_AGE seconds (the server inherits
        # this process's DATABASE_CONN_MAX_AGE), which under ASGI means one per request until garbage-collected.
        "max_open_main_database_connections": max(sampler.main_samples, default=0),
        "main_database_conn_max_age": settings.DATABASES["default"]["CONN_MAX_AGE"],
        "connection_samples": len(sampler.tenant_samples),
        # The emulator's own count of chat completions streaming at once: with `clients` streams wanted, a lower peak
        # means the server ran fewer model calls at a time than it had requests (e.g. a thread pool limit).
        "model_streams_in_flight_peak": peak_streams,
        "emulator_first_token_ms": milliseconds(FIRST_TOKEN_SECONDS),
        "emulator_token_delay_ms": milliseconds(TOKEN_DELAY_SECONDS),
        # asyncio's default executor (sync_to_async(thread_sensitive=False) runs there): min(32, CPUs + 4) threads.
        "server_default_executor_threads": min(32, (os.cpu_count() or 1) + 4),
        "load_average_during": load_during,
        "server_log_warnings": len(warnings),
        "error_kinds": dict(errors),
        "server_log_warning_examples": warnings[:ERROR_EXAMPLES],
        "over_cap_snapshots": [[[str(value) for value in row] for row in rows] for rows in sampler.over_cap_snapshots],
    }


def _http_client(connections: int, timeout_seconds: float = TURN_TIMEOUT_SECONDS) -> httpx.AsyncClient:
    # Each request carries its tenant's cookies in its headers; a jar that accepts nothing keeps tenants apart.
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        cookies=no_cookies,
    )


async def _warm_up(url: str, sessions: list[BenchSession], turns: int) -> list[TurnOutcome]:
    async with _http_client(turns, WARM_UP_TIMEOUT_SECONDS) as client:
        return list(
            await asyncio.gather(
                *(
                    _turn(client, url, sessions[number % len(sessions)], QUESTIONS[0], WARM_UP_TIMEOUT_SECONDS)
                    for number in range(turns)
                )
            )
        )


async def _clients(url: str, sessions: list[BenchSession], clients: int) -> list[TurnOutcome]:
    outcomes: list[TurnOutcome] = []
    chooser = random.Random(42)

    async def one_client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(TURNS_PER_CLIENT):
            outcomes.append(await _turn(client, url, rng.choice(sessions), rng.choice(QUESTIONS)))

    async with _http_client(clients) as client:
        await asyncio.gather(*(one_client(chooser.randrange(1 << 30)) for _ in range(clients)))
    return outcomes


async def _turn(
    client: httpx.AsyncClient,
    url: str,
    session: BenchSession,
    question: str,
    timeout_seconds: float = TURN_TIMEOUT_SECONDS,
) -> TurnOutcome:
    outcome = TurnOutcome()
    answer: list[str] = []
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_seconds):
            async with client.stream(
                "POST", f"{url}/chat/stream", data={"question": question}, headers=session.headers()
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    outcome.error = f"HTTP {response.status_code}"
                    return outcome
                event, finished = "", False
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                        elapsed = time.perf_counter() - started
                        if event == "token":
                            outcome.token_events += 1
                            if outcome.first_token_seconds is None:
                                outcome.first_token_seconds = elapsed
                        elif event == "sources":
                            outcome.sources_seconds = elapsed
                        elif event == "done":
                            finished = True
                    elif line.startswith("data: "):
                        if event == "token":
                            answer.append(json.loads(line.removeprefix("data: "))["text"])
                        elif event == "sources":
                            outcome.citations = len(json.loads(line.removeprefix("data: "))["citations"])
                        elif event == "error":
                            message = json.loads(line.removeprefix("data: ")).get("message", "")
                            outcome.error = f"event: error ({message})"
                if not outcome.error and not finished:
                    outcome.error = "stream ended without done"
    except TimeoutError:
        outcome.error = f"timeout after {timeout_seconds:g}s"
    except httpx.HTTPError as error:
        outcome.error = f"{type(error).__name__}"
    finally:
        outcome.total_seconds = time.perf_counter() - started
        # The emulator streams one token a chunk; the server may join several into one event.
        outcome.tokens = len(split_into_tokens("".join(answer)))
    return outcome
