"""Accounts cannot be taken: the admin signs in through the same throttled login as everyone, a password costs the
same whether it is right or wrong, an email address counts only once its owner has verified it, and password reset
neither fails nor tells whether an account exists when mail cannot be sent."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import MD5PasswordHasher
from django.test import Client
from django.urls import reverse

from config.settings_paths import BASE_DIR
from tenants.models import User

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

PASSWORD = "correct horse battery"


def fresh_client(**options) -> Client:
    # allauth also counts failed logins per IP address: every test's attacker comes from an address of its own.
    address = ".".join(str(uuid.uuid4().int % 250 + 1) for _ in range(3))
    return Client(REMOTE_ADDR=f"10.{address}", **options)


@pytest.fixture
def staff_member(django_user_model) -> User:
    return django_user_model.objects.create_superuser(
        email=f"admin-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD
    )


def signed_in_user_id(client: Client) -> str | None:
    return client.session.get("_auth_user_id")


# --- 1. the admin's sign-in ---------------------------------------------------------------------------------------


def test_the_admin_login_page_sends_to_the_site_login_keeping_where_to_go_next():
    response = fresh_client().get("/admin/login/?next=/admin/tenants/user/")

    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("account_login") == "/accounts/login/"
    assert parse_qs(location.query) == {"next": ["/admin/tenants/user/"]}


def test_the_admin_login_page_sends_a_foreign_next_address_to_the_admin_index_instead():
    response = fresh_client().get("/admin/login/?next=https://evil.example.net/")

    assert parse_qs(urlsplit(response["Location"]).query) == {"next": ["/admin/"]}


def test_the_admin_pages_send_a_signed_out_visitor_through_the_site_login():
    first = fresh_client().get("/admin/tenants/user/")
    assert first.status_code == 302
    assert urlsplit(first["Location"]).path == "/admin/login/"

    second = fresh_client().get(first["Location"])
    assert second.status_code == 302
    assert urlsplit(second["Location"]).path == "/accounts/login/"
    assert parse_qs(urlsplit(second["Location"]).query) == {"next": ["/admin/tenants/user/"]}


def test_posting_a_password_to_the_admin_login_never_signs_in_even_when_it_is_right(staff_member):
    """The admin's own form called authenticate() directly, past allauth's count of failed attempts: an unthrottled
    password oracle. Now no password posted there is ever checked."""
    client = fresh_client()
    answers = [
        client.post("/admin/login/", {"username": staff_member.email, "password": f"guess {n}"}) for n in range(10)
    ]
    right = client.post("/admin/login/?next=/admin/", {"username": staff_member.email, "password": PASSWORD})

    for response in [*answers, right]:
        assert response.status_code == 302
        assert urlsplit(response["Location"]).path == "/accounts/login/"
    assert signed_in_user_id(client) is None
    assert client.get("/admin/").status_code == 302  # still not in


def test_a_staff_member_reaches_the_admin_through_the_site_login(staff_member):
    client = fresh_client()

    response = client.post(
        reverse("account_login") + "?next=/admin/", {"login": staff_member.email, "password": PASSWORD}
    )

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/login/").status_code == 302  # signed in already: on to the admin


def test_a_signed_in_member_without_staff_rights_is_told_the_admin_is_not_for_them(owner):
    client = fresh_client()
    client.force_login(owner)

    response = client.get("/admin/login/?next=/admin/")

    assert response.status_code == 403
    assert "cannot use Silo's admin site" in response.content.decode()


def test_failed_attempts_lock_the_admin_out_of_the_site_login_too(staff_member):
    attacker = fresh_client()
    login = reverse("account_login") + "?next=/admin/"
    for n in range(5):  # allauth's default: 5 failures per account in 5 minutes
        assert attacker.post(login, {"login": staff_member.email, "password": f"guess {n}"}).status_code == 200

    admin = fresh_client()
    refused = admin.post(login, {"login": staff_member.email, "password": PASSWORD})

    assert refused.status_code == 200
    assert "Too many failed login attempts. Try again later." in refused.content.decode()
    assert signed_in_user_id(admin) is None
    assert admin.get("/admin/").status_code == 302


class CountingPasswordHasher(MD5PasswordHasher):
    """A real hasher that counts the passwords it checks, so a test can see how many times a login checks one."""

    algorithm = "counting_md5"
    checks = 0

    def verify(self, password: str, encoded: str) -> bool:
        type(self).checks += 1
        return super().verify(password, encoded)


def test_a_password_is_checked_exactly_once_whether_it_is_right_or_wrong(settings, django_user_model):
    """Equal cost by structure: one authentication backend, one password check, for a right and a wrong password
    alike (two backends checked a wrong password twice, so the right one answered measurably faster)."""
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingPasswordHasher"]
    user = django_user_model.objects.create_user(email=f"ada-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD)
    assert settings.AUTHENTICATION_BACKENDS == ["allauth.account.auth_backends.AuthenticationBackend"]

    CountingPasswordHasher.checks = 0
    assert authenticate(None, username=user.email, password=PASSWORD) == user
    right_checks = CountingPasswordHasher.checks

    CountingPasswordHasher.checks = 0
    assert authenticate(None, username=user.email, password="a wrong guess") is None
    wrong_checks = CountingPasswordHasher.checks

    assert (right_checks, wrong_checks) == (1, 1)


# --- 2. email addresses count only once verified --------------------------------------------------------------------


def add_address(client: Client, email: str):
    return client.post("/accounts/email/", {"email": email, "action_add": ""})


def test_an_address_someone_else_attached_without_verifying_does_not_block_its_owners_sign_up(stranger, mailoutbox):
    attacker = fresh_client()
    attacker.force_login(stranger)
    assert add_address(attacker, "victim@example.net").status_code == 302
    assert EmailAddress.objects.filter(user=stranger, email="victim@example.net", verified=False).exists()

    victim = fresh_client()
    response = victim.post(
        reverse("account_signup"),
        {"email": "victim@example.net", "password1": "a long victim secret", "password2": "a long victim secret"},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    owner = User.objects.get(email="victim@example.net")
    assert signed_in_user_id(victim) == str(owner.pk)
    # The claim is gone; the attacker's own address is untouched.
    assert list(EmailAddress.objects.filter(email__iexact="victim@example.net").values_list("user_id", flat=True)) == [
        owner.pk
    ]
    stranger.refresh_from_db()
    assert stranger.email == "stranger@example.org"


def test_a_verified_address_or_a_sign_in_address_still_cannot_be_signed_up_twice(owner, stranger):
    EmailAddress.objects.create(user=stranger, email="verified@example.net", verified=True, primary=False)

    for taken in [owner.email, "verified@example.net"]:
        response = fresh_client().post(
            reverse("account_signup"),
            {"email": taken, "password1": "a long new secret", "password2": "a long new secret"},
        )
        assert response.status_code == 200
        assert "A user is already registered with this email address." in response.content.decode()
    assert User.objects.count() == 2


@pytest.mark.parametrize("address", ["someone-new@example.net", "owner@example.com"])
def test_an_unverified_address_cannot_be_made_primary(owner, stranger, address):
    """Whether nobody has the address yet or it is another account's sign-in address: the claim stays a claim, and
    nothing half-changes (the attacker's primary address and sign-in address stay theirs)."""
    attacker = fresh_client(raise_request_exception=False)
    attacker.force_login(stranger)
    add_address(attacker, address)
    before = sorted(EmailAddress.objects.values_list("user_id", "email", "primary", "verified"))

    response = attacker.post("/accounts/email/", {"email": address, "action_primary": ""})

    assert response.status_code == 302
    page = attacker.get("/accounts/email/").content.decode()
    assert f"Confirm {address} first, with the link we sent to it" in page
    assert sorted(EmailAddress.objects.values_list("user_id", "email", "primary", "verified")) == before
    stranger.refresh_from_db()
    owner.refresh_from_db()
    assert (stranger.email, owner.email) == ("stranger@example.org", "owner@example.com")


def test_every_request_is_one_transaction_except_the_chat_stream(settings):
    from chat.views import chat_stream

    assert settings.DATABASES["default"]["ATOMIC_REQUESTS"] is True
    assert "default" in getattr(chat_stream, "_non_atomic_requests", set())


def test_the_migration_drops_unverified_claims_on_other_accounts_addresses_only(owner, stranger):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = ("tenants", "0002_vector_databases")
    after = ("tenants", "0003_drop_colliding_unverified_email_claims")
    MigrationExecutor(connection).migrate([before])
    EmailAddress.objects.create(user=stranger, email="stranger@example.org", verified=False, primary=True)
    EmailAddress.objects.create(user=owner, email="OWNER@example.com", verified=False, primary=True)
    EmailAddress.objects.create(user=stranger, email="owner@example.com", verified=False, primary=False)  # a claim
    EmailAddress.objects.create(user=owner, email="proven@example.net", verified=True, primary=False)
    EmailAddress.objects.create(user=stranger, email="proven@example.net", verified=False, primary=False)  # a claim
    EmailAddress.objects.create(user=stranger, email="free@example.net", verified=False, primary=False)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    try:
        executor.migrate([after])

        assert sorted(EmailAddress.objects.values_list("user__email", "email")) == [
            ("owner@example.com", "OWNER@example.com"),
            ("owner@example.com", "proven@example.net"),
            ("stranger@example.org", "free@example.net"),
            ("stranger@example.org", "stranger@example.org"),
        ]
    finally:
        # Back to the latest schema: the tests after this one share the database.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


# --- 3. mail ---------------------------------------------------------------------------------------------------------


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: connections to it are refused


def test_password_reset_answers_alike_for_known_and_unknown_addresses_when_mail_cannot_be_sent(owner, settings, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 2
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False

    known = fresh_client(raise_request_exception=False).post(reverse("account_reset_password"), {"email": owner.email})
    unknown = fresh_client(raise_request_exception=False).post(
        reverse("account_reset_password"), {"email": "nobody@example.com"}
    )

    assert (known.status_code, unknown.status_code) == (302, 302)
    assert known["Location"] == unknown["Location"] == reverse("account_reset_password_done")
    failures = [record for record in caplog.records if record.name == "tenants.adapters"]
    assert len(failures) == 2
    assert all("could not send account/email/" in record.getMessage() for record in failures)
    assert all(owner.email not in record.getMessage() for record in failures)


def test_password_reset_mail_is_sent_when_the_server_works(owner, mailoutbox):
    response = fresh_client().post(reverse("account_reset_password"), {"email": owner.email})

    assert response.status_code == 302
    assert [message.to for message in mailoutbox] == [[owner.email]]
    assert "/accounts/password/reset/key/" in mailoutbox[0].body


def python_settings(**environment: str) -> subprocess.CompletedProcess:
    code = "import django; django.setup(); from django.conf import settings as s; print(s.EMAIL_BACKEND, s.EMAIL_HOST)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_email_settings_come_from_the_environment():
    console = python_settings(EMAIL_HOST="", EMAIL_BACKEND="")
    smtp = python_settings(EMAIL_HOST="smtp.example.com", EMAIL_BACKEND="")
    refused = python_settings(EMAIL_HOST="", EMAIL_BACKEND="smtp")

    assert console.stdout.split() == ["django.core.mail.backends.console.EmailBackend"], console.stderr
    assert smtp.stdout.split() == ["django.core.mail.backends.smtp.EmailBackend", "smtp.example.com"], smtp.stderr
    assert refused.returncode != 0
    assert "EMAIL_BACKEND=smtp needs EMAIL_HOST" in refused.stderr
