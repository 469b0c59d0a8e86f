"""End-to-end fixtures: headless Chromium (Playwright) against the real stack.

The web server is uvicorn in a child process serving `config.asgi` on a free port, bound to the pytest test database
(as the Celery worker of tests/conftest.py is), with the same data folder, Redis and Celery queue as the test process.
A second server, started only when a test asks for it, talks to the OpenAI emulator.

Chromium is Debian's (/usr/bin/chromium): `make test` installs it; Playwright never downloads a browser here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pypdf
import pytest
from django.conf import settings

from tests.asgi_server import AsgiServerProcess
from tests.conftest import _worker_environment
from tests.emulators.openai import OpenAIEmulator

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: without these, Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_READY_TIMEOUT_SECONDS = 60
SCREENSHOTS = Path(__file__).parent / "screenshots"
SOURCE_PDF = Path("/work/shared/eval/pdfs/encguide.pdf")


@pytest.fixture(scope="module", autouse=True)
def allow_orm_calls_beside_playwright():
    """Playwright's sync API keeps an event loop in the test thread, so Django sees an "async context" there and
    refuses ORM calls; the test process only reads and cleans up between browser steps (the app itself runs in other
    processes). Only for these modules: the variable must not leak into other tests' subprocesses."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _start_server(name: str, extra_environment: dict[str, str] | None = None) -> AsgiServerProcess:
    """The app on the test database, in a child process as `make run` serves it, logging to logs/e2e-<name>.log."""
    from django.db import connection

    environment = _worker_environment(connection.settings_dict["NAME"])
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    environment.update(extra_environment or {})
    server = AsgiServerProcess(
        environment,
        settings.DATA_DIR / "logs" / f"e2e-{name}.log",
        log_level="info",
        ready_timeout_seconds=SERVER_READY_TIMEOUT_SECONDS,
    )
    server.start()
    return server


@pytest.fixture(scope="session")
def asgi_server(django_db_setup, django_db_blocker, celery_worker):
    """The app over HTTP, as `make run` serves it, on the test database: extractive answers, local embeddings."""
    server = _start_server("web")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def openai_emulator():
    with OpenAIEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def openai_asgi_server(django_db_setup, django_db_blocker, celery_worker, openai_emulator):
    """The app with a chat model (the emulator). Embeddings stay local, so the worker (which has no key) and this
    server embed with the same model."""
    server = _start_server(
        "web-openai",
        {
            "OPENAI_API_KEY": openai_emulator.api_key,
            "OPENAI_BASE_URL": openai_emulator.base_url,
            "EMBEDDING_MODEL": "all-MiniLM-L6-v2",
            "EMBEDDING_DIMENSIONS": "384",
        },
    )
    yield server
    server.stop()


# Module scope: Playwright's sync API keeps an event loop running in the main thread while it is open, which would
# break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


# The browser runs under the app's own Content Security Policy (settings.CONTENT_SECURITY_POLICY): every page the
# app serves must carry it, and a violation the browser reports fails the test.
def _check_content_security_policy(page, response) -> None:
    """Every page the app serves carries its own Content Security Policy (the browser enforces it; violations are
    collected from the console)."""
    if response.request.resource_type == "document" and response.url.startswith(page.app_url_prefix):
        if response.headers.get("content-security-policy") != settings.CONTENT_SECURITY_POLICY:
            page.csp_violations.append(f"no Content-Security-Policy header on {response.url}")


def _open_page(browser, viewport: dict, **options):
    context = browser.new_context(viewport=viewport, locale="en-US", **options)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.errors = []
    page.csp_violations = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and page.csp_violations.append(message.text),
    )
    page.app_url_prefix = "http://127.0.0.1:"
    page.on("response", lambda response: _check_content_security_policy(page, response))
    return context, page


@pytest.fixture
def page(browser):
    context, page = _open_page(browser, DESKTOP)
    yield page
    violations = list(page.csp_violations)
    context.close()
    assert violations == [], violations


@pytest.fixture
def phone_page(browser):
    """A phone's screen (390x844, touch) with the same policy checks."""
    context, page = _open_page(browser, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    yield page
    violations = list(page.csp_violations)
    context.close()
    assert violations == [], violations


class Screenshots:
    """Numbered full-page screenshots of each step, named after the test: tests/e2e/screenshots/<test>-NN-<step>.png."""

    def __init__(self, test_name: str):
        self.prefix = re.sub(r"[^\w-]+", "_", test_name).removeprefix("test_")
        self.count = 0
        SCREENSHOTS.mkdir(exist_ok=True)
        for old in SCREENSHOTS.glob(f"{self.prefix}-*.png"):
            old.unlink()

    def take(self, page, step: str) -> Path:
        self.count += 1
        path = SCREENSHOTS / f"{self.prefix}-{self.count:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def screenshots(request) -> Screenshots:
    return Screenshots(request.node.name)


@pytest.fixture
def erase_tenant_databases(transactional_db):
    """Tenant databases live outside the test database: drop the ones a test created before its rows are flushed."""
    yield
    from tenants import services
    from tenants.models import VectorDatabase

    for vector_database in VectorDatabase.objects.exclude(status=VectorDatabase.Status.DELETED):
        services.vector_database_deprovision(vector_database.id)


@pytest.fixture
def encodings_pdf(tmp_path) -> Path:
    """Three real pages (2-4) of the LaTeX font encodings guide; page 2 of the result tells of the Cork meeting."""
    reader = pypdf.PdfReader(SOURCE_PDF)
    writer = pypdf.PdfWriter()
    for index in (1, 2, 3):
        writer.add_page(reader.pages[index])
    path = tmp_path / "font_encodings.pdf"
    with path.open("wb") as output:
        writer.write(output)
    return path


@pytest.fixture
def broken_pdf(tmp_path) -> Path:
    """Starts like a PDF, then nothing a reader can use."""
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\n" + b"this is not a real PDF body, only garbage \x00\x01\x02\xff\n" * 40)
    return path
