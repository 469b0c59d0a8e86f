"""A tenant whose database server is down reads why chat is closed, on a desktop and on a phone; the page works."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import expect
from psycopg import sql

from tenants.models import User, VectorDatabase
from tests.e2e.steps import assert_no_script_errors, sign_up, wait_for_database_ready

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("erase_tenant_databases"),
]

# Where the screenshots of this change are kept for review, beside the suite's own folder.
REVIEW_SCREENS = Path("/work/screens23")


def _set_connections_allowed(admin_dsn: str, database: str, allowed: bool) -> None:
    """What a server that is down looks like to the app: no new connection, the open ones gone."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [database])


def test_the_chat_page_says_the_database_cannot_be_reached(page, phone_page, asgi_server, screenshots, admin_dsn):
    sign_up(page, asgi_server.url, "down@example.com", screenshots)
    wait_for_database_ready(page, screenshots)
    database = VectorDatabase.objects.get(
        workspace__owner=User.objects.get(email="down@example.com"), workspace__personal=True
    ).external_id
    _set_connections_allowed(admin_dsn, database, allowed=False)
    try:
        shots = []
        for viewport_page, name in ((page, "desktop"), (phone_page, "phone")):
            if viewport_page is phone_page:
                phone_page.context.add_cookies(page.context.cookies())
            viewport_page.goto(f"{asgi_server.url}/chat/")
            notice = viewport_page.locator("p.notice")
            expect(notice).to_contain_text("Your database cannot be reached right now")
            expect(viewport_page.locator("textarea")).to_be_disabled()
            assert_no_script_errors(viewport_page)
            shots.append((screenshots.take(viewport_page, f"chat-database-unreachable-{name}"), name))
        REVIEW_SCREENS.mkdir(exist_ok=True)
        for path, name in shots:
            shutil.copy(path, REVIEW_SCREENS / f"chat-database-unreachable-{name}.png")
    finally:
        _set_connections_allowed(admin_dsn, database, allowed=True)
