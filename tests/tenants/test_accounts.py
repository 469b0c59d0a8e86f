"""Email sign-up and sign-in: the account is the tenant."""

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_sign_up_with_email_creates_the_user_and_lands_on_the_dashboard(client, django_user_model):
    response = client.post(
        reverse("account_signup"),
        {"email": "New.Person@Example.com", "password1": "a long passphrase 42", "password2": "a long passphrase 42"},
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard")
    user = django_user_model.objects.get()
    assert user.email == "new.person@example.com"
    dashboard = client.get(reverse("dashboard"))
    assert dashboard.status_code == 200
    # The new database is being set up: the documents page says so until it is ready.
    assert b"Your private database is being set up." in dashboard.content


def test_sign_up_refuses_an_email_that_is_taken_whatever_its_case(client, owner, django_user_model):
    response = client.post(
        reverse("account_signup"),
        {"email": "OWNER@example.com", "password1": "a long passphrase 42", "password2": "a long passphrase 42"},
    )

    assert response.status_code == 200
    assert django_user_model.objects.count() == 1


def test_sign_in_with_email_and_password(client, owner):
    response = client.post(
        reverse("account_login"), {"login": "owner@example.com", "password": "correct horse battery"}
    )

    assert response.status_code == 302
    assert client.get(reverse("dashboard")).status_code == 200


def test_wrong_password_does_not_sign_in(client, owner):
    response = client.post(reverse("account_login"), {"login": "owner@example.com", "password": "wrong"})

    assert response.status_code == 200
    assert client.get(reverse("dashboard")).status_code == 302


def test_dashboard_requires_sign_in(client):
    response = client.get(reverse("dashboard"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
