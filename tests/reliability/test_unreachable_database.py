"""A tenant database that cannot be reached (server down, network cut) never becomes a 500: every page says so in
words and offers to try again, and nothing is lost or half-exported."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from tenants.crypto import encrypt_credentials
from tenants.models import User, VectorDatabase
from tests.helpers import personal_workspace

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

# Port 1 on this machine: nothing listens, the connection is refused at once.
NOWHERE = "postgresql://nobody:secret@127.0.0.1:1/nowhere?connect_timeout=2"


@pytest.fixture
def unreachable_owner(owner: User) -> User:
    """The owner's personal workspace's database is registered as ready, but its server does not answer."""
    VectorDatabase.objects.create(
        workspace=personal_workspace(owner),
        provider="postgres",
        external_id="tenant_gone",
        status=VectorDatabase.Status.READY,
        encrypted_credentials=encrypt_credentials({"dsn": NOWHERE, "migration_dsn": NOWHERE}),
    )
    return owner


def signed_in(user: User) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.mark.parametrize("path", ["/chat/", "/chat/?c=00000000-0000-0000-0000-000000000000"])
def test_the_chat_page_says_the_database_cannot_be_reached_instead_of_failing(unreachable_owner, path):
    response = signed_in(unreachable_owner).get(path)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Your database cannot be reached right now; your documents and conversations are safe." in page
    assert 'id="question"' in page and "disabled></textarea>" in page  # nothing can be asked meanwhile


def test_the_export_says_the_database_cannot_be_reached_instead_of_an_incomplete_file(unreachable_owner):
    client = signed_in(unreachable_owner)

    page = client.get(reverse("account_export"))
    as_json = client.get(reverse("account_export"), HTTP_ACCEPT="application/json")

    assert page.status_code == 302 and page["Location"] == reverse("account")
    assert "Content-Disposition" not in page
    assert [str(message) for message in get_messages(page.wsgi_request)] == [
        "Your database cannot be reached right now, so your export would be incomplete. Please try again in a moment."
    ]
    assert as_json.status_code == 503
    assert as_json.json() == {
        "error": "Your database cannot be reached right now, so your export would be incomplete. "
        "Please try again in a moment."
    }


def test_the_account_page_still_opens(unreachable_owner):
    response = signed_in(unreachable_owner).get(reverse("account"))

    assert response.status_code == 200
