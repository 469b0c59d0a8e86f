"""Google sign-in, driven through allauth's real OAuth flow against the Google OAuth emulator over real sockets.

The browser's part (following the redirect to Google and back) is played by httpx; Django's part (starting the flow,
handling the callback, which itself calls the emulator's token endpoint over HTTP) by the Django test client.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
import requests
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount
from allauth.socialaccount.providers.google import views as google_views
from allauth.socialaccount.providers.oauth2.client import OAuth2Error
from cryptography.hazmat.primitives.asymmetric import rsa
from django.urls import reverse

from tests.emulators.google_oauth import GoogleIdentity, GoogleOAuthEmulator, pkce_challenge

pytestmark = pytest.mark.django_db

CALLBACK_URL = "http://testserver/accounts/google/login/callback/"
CLIENT_ID = "silo-test.apps.googleusercontent.com"
CLIENT_SECRET = "silo-test-secret"
BROWSER_TIMEOUT_SECONDS = 10


@pytest.fixture
def google_emulator():
    emulator = GoogleOAuthEmulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[CALLBACK_URL])
    emulator.start()
    yield emulator
    emulator.stop()


def enable_google_sign_in(settings, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
    """What config/settings.py does when GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET are set: an app from settings."""
    settings.GOOGLE_CLIENT_ID = client_id
    settings.GOOGLE_CLIENT_SECRET = client_secret
    settings.GOOGLE_SIGN_IN_ENABLED = True
    google = dict(settings.SOCIALACCOUNT_PROVIDERS["google"])
    google["APPS"] = [{"client_id": client_id, "secret": client_secret, "key": ""}]
    settings.SOCIALACCOUNT_PROVIDERS = {**settings.SOCIALACCOUNT_PROVIDERS, "google": google}


def disable_google_sign_in(settings) -> None:
    settings.GOOGLE_CLIENT_ID = None
    settings.GOOGLE_CLIENT_SECRET = None
    settings.GOOGLE_SIGN_IN_ENABLED = False
    google = {key: value for key, value in settings.SOCIALACCOUNT_PROVIDERS["google"].items() if key != "APPS"}
    settings.SOCIALACCOUNT_PROVIDERS = {**settings.SOCIALACCOUNT_PROVIDERS, "google": google}


@pytest.fixture
def google(google_emulator, settings, monkeypatch) -> GoogleOAuthEmulator:
    """Google sign-in enabled and pointed at the emulator.

    allauth reads the GOOGLE_*_URL overrides into module constants at import time, so the adapter's class
    attributes (and the module's CERTS_URL) are patched instead of the settings.
    """
    enable_google_sign_in(settings)
    monkeypatch.setattr(google_views.GoogleOAuth2Adapter, "authorize_url", google_emulator.authorize_url)
    monkeypatch.setattr(google_views.GoogleOAuth2Adapter, "access_token_url", google_emulator.token_url)
    monkeypatch.setattr(google_views.GoogleOAuth2Adapter, "identity_url", google_emulator.userinfo_url)
    monkeypatch.setattr(google_views, "CERTS_URL", google_emulator.certs_url)
    return google_emulator


def start_google_sign_in(client) -> str:
    """Presses "Google" on the sign-in page; returns where the browser is sent."""
    response = client.post(reverse("google_login"))
    assert response.status_code == 302
    return response["Location"]


def visit_google(authorize_url: str) -> httpx.Response:
    """The browser's visit to Google's consent screen, over a real socket."""
    return httpx.get(authorize_url, follow_redirects=False, timeout=BROWSER_TIMEOUT_SECONDS)


def sign_in_with_google_from(client, authorize_url: str):
    """The browser consents at Google and is sent back; returns Django's response to the callback."""
    consent = visit_google(authorize_url)
    assert consent.status_code == 302, consent.text
    callback_url = consent.headers["Location"]
    assert callback_url.startswith(CALLBACK_URL + "?")
    return client.get(callback_url)


def sign_in_with_google(client):
    """The whole round trip, from the "Google" button to Django's response to the callback."""
    return sign_in_with_google_from(client, start_google_sign_in(client))


def google_button_href(html: str) -> str | None:
    match = re.search(r'<a title="Google" href="([^"]+)">Google</a>', html)
    return match and match.group(1)


def assert_third_party_login_failure(response) -> Exception | None:
    """allauth's error page for a failed sign-in; returns the exception behind it, if any."""
    assert response.status_code == 401
    assert b"Third-Party Login Failure" in response.content
    return response.context["auth_error"]["exception"]


def signed_in_email(client) -> str | None:
    response = client.get(reverse("dashboard"))
    if response.status_code != 200:
        return None
    return response.context["user"].email


# --- the sign-in page --------------------------------------------------------------------------------------------


def test_sign_in_page_has_no_google_button_when_google_is_not_configured(client, settings):
    disable_google_sign_in(settings)

    response = client.get(reverse("account_login"))

    assert response.status_code == 200
    assert reverse("google_login").encode() not in response.content
    assert b"Google" not in response.content


def test_sign_in_page_has_a_google_button_when_google_is_configured(client, settings):
    enable_google_sign_in(settings)

    response = client.get(reverse("account_login"))

    assert response.status_code == 200
    assert google_button_href(response.content.decode()) == reverse("google_login") + "?process=login"


def test_the_google_button_asks_to_continue_and_continuing_goes_to_google(client, google):
    href = google_button_href(client.get(reverse("account_login")).content.decode())

    # SOCIALACCOUNT_LOGIN_ON_GET is off: following the link only shows a form, it does not leave the site.
    confirmation = client.get(href)
    assert confirmation.status_code == 200
    assert b"Sign In Via Google" in confirmation.content
    assert re.search(r'<form method="post"\s*>', confirmation.content.decode())
    assert google.requests == []

    response = client.post(href)

    assert response.status_code == 302
    assert response["Location"].startswith(google.authorize_url + "?")


def test_sign_in_starts_at_google_with_the_client_scopes_state_and_pkce(client, google):
    authorize_url = start_google_sign_in(client)

    assert authorize_url.startswith(google.authorize_url + "?")
    params = {key: values[0] for key, values in parse_qs(urlsplit(authorize_url).query).items()}
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == CALLBACK_URL
    assert params["response_type"] == "code"
    assert set(params["scope"].split()) == {"profile", "email"}
    assert params["state"]
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43


# --- first and later sign-ins -------------------------------------------------------------------------------------


def test_first_google_sign_in_creates_a_user_from_the_google_profile_and_lands_on_the_dashboard(
    client, google, django_user_model
):
    google.identity = GoogleIdentity(
        sub="100000000000000000001",
        email="Grace.Hopper@Example.COM",
        name="Grace Hopper",
        given_name="Grace",
        family_name="Hopper",
        picture="https://lh3.googleusercontent.com/a/grace=s96-c",
    )

    response = sign_in_with_google(client)

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    user = django_user_model.objects.get()
    assert user.email == "grace.hopper@example.com"
    assert user.name == "Grace Hopper"
    assert user.avatar_url == "https://lh3.googleusercontent.com/a/grace=s96-c"
    assert not user.has_usable_password()
    account = SocialAccount.objects.get()
    assert (account.user, account.provider, account.uid) == (user, "google", "100000000000000000001")
    assert EmailAddress.objects.filter(user=user, email="grace.hopper@example.com", verified=True).count() == 1
    dashboard = client.get(reverse("dashboard"))
    assert dashboard.status_code == 200
    assert dashboard.context["user"] == user
    assert b"Welcome, Grace Hopper" in dashboard.content


def test_the_code_is_exchanged_with_the_client_secret_and_the_pkce_verifier(client, google):
    authorize_url = start_google_sign_in(client)
    code_challenge = parse_qs(urlsplit(authorize_url).query)["code_challenge"][0]

    response = sign_in_with_google_from(client, authorize_url)

    assert response.status_code == 302
    [token_request] = google.requests_to("token")
    assert token_request.method == "POST"
    assert token_request.params["grant_type"] == "authorization_code"
    assert token_request.params["client_secret"] == CLIENT_SECRET
    assert token_request.params["redirect_uri"] == CALLBACK_URL
    assert pkce_challenge(token_request.params["code_verifier"]) == code_challenge


def test_a_second_sign_in_with_the_same_google_account_signs_in_the_same_user(client, google, django_user_model):
    sign_in_with_google(client)
    first_user = django_user_model.objects.get()
    client.logout()
    assert signed_in_email(client) is None

    response = sign_in_with_google(client)

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    assert django_user_model.objects.count() == 1
    assert SocialAccount.objects.count() == 1
    assert signed_in_email(client) == first_user.email


def test_a_different_google_account_gets_a_user_of_its_own(client, google, django_user_model):
    sign_in_with_google(client)
    client.logout()
    google.identity = GoogleIdentity(sub="100000000000000000002", email="alan.turing@example.com", name="Alan Turing")

    sign_in_with_google(client)

    assert sorted(django_user_model.objects.values_list("email", flat=True)) == [
        "ada.lovelace@example.com",
        "alan.turing@example.com",
    ]
    assert signed_in_email(client) == "alan.turing@example.com"


def test_when_the_id_token_has_no_picture_the_avatar_comes_from_the_userinfo_endpoint(
    client, google, django_user_model
):
    google.id_token_includes_picture = False

    response = sign_in_with_google(client)

    assert response.status_code == 302
    [userinfo_request] = google.requests_to("userinfo")
    assert userinfo_request.headers["Authorization"].startswith("Bearer ya29.")
    assert django_user_model.objects.get().avatar_url == google.identity.picture


# --- existing email/password users --------------------------------------------------------------------------------


def test_google_sign_in_connects_an_existing_user_with_the_same_verified_email(
    client, google, owner, django_user_model
):
    EmailAddress.objects.create(user=owner, email=owner.email, verified=True, primary=True)
    google.identity = GoogleIdentity(sub="100000000000000000003", email="Owner@Example.com", name="The Owner")

    response = sign_in_with_google(client)

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    assert list(django_user_model.objects.all()) == [owner]
    account = SocialAccount.objects.get()
    assert (account.user, account.uid) == (owner, "100000000000000000003")
    assert signed_in_email(client) == "owner@example.com"
    owner.refresh_from_db()
    assert owner.check_password("correct horse battery")


def test_connecting_to_a_user_whose_email_was_never_verified_wipes_their_password(
    client, google, owner, django_user_model
):
    # allauth's guard against account pre-hijacking: whoever signed up with this unverified address must not keep
    # a way in once the verified owner of the address arrives through Google.
    google.identity = GoogleIdentity(sub="100000000000000000004", email="owner@example.com")

    sign_in_with_google(client)

    assert list(django_user_model.objects.all()) == [owner]
    assert SocialAccount.objects.get().user == owner
    assert signed_in_email(client) == "owner@example.com"
    owner.refresh_from_db()
    assert not owner.has_usable_password()


def test_an_unverified_google_email_does_not_take_over_an_existing_user(client, google, owner, django_user_model):
    google.identity = GoogleIdentity(sub="100000000000000000005", email="owner@example.com", email_verified=False)

    response = sign_in_with_google(client)

    # allauth asks for a different email address instead of signing anyone in.
    assert response.status_code == 302
    assert response["Location"] == reverse("socialaccount_signup")
    assert list(django_user_model.objects.all()) == [owner]
    assert SocialAccount.objects.count() == 0
    assert signed_in_email(client) is None
    owner.refresh_from_db()
    assert owner.check_password("correct horse battery")


# --- when Google says no or fails ---------------------------------------------------------------------------------


def test_refusing_consent_at_google_creates_no_user_and_says_sign_in_was_cancelled(client, google, django_user_model):
    google.deny_consent = True

    response = sign_in_with_google(client)

    assert response.status_code == 302
    assert response["Location"] == reverse("socialaccount_login_cancelled")
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert b"Login Cancelled" in page.content
    assert django_user_model.objects.count() == 0
    assert SocialAccount.objects.count() == 0
    assert google.requests_to("token") == []
    assert signed_in_email(client) is None


@pytest.mark.parametrize("endpoint", ["token", "userinfo"])
def test_a_google_server_error_creates_no_user_and_shows_an_error_page(client, google, django_user_model, endpoint):
    google.id_token_includes_picture = False  # so that the userinfo endpoint is called at all
    google.fail(endpoint, 500)

    response = sign_in_with_google(client)

    error = assert_third_party_login_failure(response)
    assert isinstance(error, OAuth2Error)
    assert len(google.requests_to(endpoint)) == 1
    assert django_user_model.objects.count() == 0
    assert SocialAccount.objects.count() == 0
    assert signed_in_email(client) is None


def test_a_wrong_client_secret_is_refused_by_google_and_creates_no_user(client, google, settings, django_user_model):
    enable_google_sign_in(settings, client_secret="not-the-secret")

    response = sign_in_with_google(client)

    error = assert_third_party_login_failure(response)
    assert isinstance(error, OAuth2Error)
    assert "invalid_client" in str(error)
    assert django_user_model.objects.count() == 0


def test_a_replayed_callback_does_not_sign_in_twice(client, google, django_user_model):
    consent = visit_google(start_google_sign_in(client))
    callback_url = consent.headers["Location"]
    assert client.get(callback_url).status_code == 302
    client.logout()

    replay = client.get(callback_url)

    # The state was used up by the first callback, so the code is never even sent to Google again.
    assert assert_third_party_login_failure(replay) is None
    assert len(google.requests_to("token")) == 1
    assert django_user_model.objects.count() == 1
    assert signed_in_email(client) is None


def test_a_slow_google_still_signs_in(client, google, django_user_model):
    google.latency_seconds = 0.3

    response = sign_in_with_google(client)

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    assert django_user_model.objects.count() == 1


def test_a_google_slower_than_the_request_timeout_shows_an_error_page_instead_of_hanging(
    client, google, settings, django_user_model
):
    settings.SOCIALACCOUNT_REQUESTS_TIMEOUT = 0.5
    authorize_url = start_google_sign_in(client)
    consent = visit_google(authorize_url)
    google.latency_seconds = 2

    response = client.get(consent.headers["Location"])

    assert isinstance(assert_third_party_login_failure(response), requests.Timeout)
    assert django_user_model.objects.count() == 0


# --- Google One Tap: an id_token posted by Google's script, verified against Google's published certificates -------


def google_one_tap_credential(google: GoogleOAuthEmulator) -> str:
    """An id_token obtained from the emulator over HTTP, as Google's sign-in script would hand it to the page."""
    code_verifier = secrets.token_urlsafe(64)
    query = urlencode(
        {
            "client_id": CLIENT_ID,
            "redirect_uri": CALLBACK_URL,
            "response_type": "code",
            "scope": "openid email profile",
            "state": "one-tap",
            "code_challenge": pkce_challenge(code_verifier),
            "code_challenge_method": "S256",
        }
    )
    consent = visit_google(f"{google.authorize_url}?{query}")
    code = parse_qs(urlsplit(consent.headers["Location"]).query)["code"][0]
    token = httpx.post(
        google.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK_URL,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "code_verifier": code_verifier,
        },
        timeout=BROWSER_TIMEOUT_SECONDS,
    )
    assert token.status_code == 200, token.text
    return token.json()["id_token"]


def post_one_tap_credential(client, credential: str):
    client.cookies["g_csrf_token"] = "double-submit"
    return client.post(reverse("google_login_by_token"), {"credential": credential, "g_csrf_token": "double-submit"})


def test_a_one_tap_credential_signed_by_google_signs_in(client, google, django_user_model):
    response = post_one_tap_credential(client, google_one_tap_credential(google))

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    assert len(google.requests_to("certs")) == 1
    user = django_user_model.objects.get()
    assert user.email == "ada.lovelace@example.com"
    assert (user.name, user.avatar_url) == ("Ada Lovelace", google.identity.picture)
    assert signed_in_email(client) == "ada.lovelace@example.com"


def test_a_one_tap_credential_signed_by_anyone_but_google_is_refused(client, google, django_user_model):
    genuine = google_one_tap_credential(google)
    # Same claims, same key id, but signed with a key Google never published.
    claims = jwt.decode(genuine, options={"verify_signature": False})
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = jwt.get_unverified_header(genuine)["kid"]
    forged = jwt.encode(claims, attacker_key, algorithm="RS256", headers={"kid": key_id})

    response = post_one_tap_credential(client, forged)

    assert response.status_code == 401
    assert b"Third-Party Login Failure" in response.content
    assert django_user_model.objects.count() == 0
    assert signed_in_email(client) is None
