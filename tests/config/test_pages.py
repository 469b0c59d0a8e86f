"""Pages every visitor can reach: the landing page, the branded error pages, the favicon, the sign-in labels."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_signed_out_visitors_get_a_landing_page_that_says_what_silo_is_and_how_to_start(client):
    response = client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Ask your PDFs. Get answers you can check." in html
    assert f'href="{reverse("account_signup")}"' in html
    assert f'href="{reverse("account_login")}"' in html
    assert ">Sign in<" in html and ">Sign up free<" in html


def test_signed_in_people_go_straight_to_their_documents(client, owner):
    client.force_login(owner)

    response = client.get("/")

    assert (response.status_code, response["Location"]) == (302, reverse("dashboard"))


def test_every_page_has_the_favicon_and_the_old_favicon_address_redirects_to_it(client):
    html = client.get("/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html

    response = client.get("/favicon.ico")

    assert (response.status_code, response["Location"]) == (301, "/static/favicon.svg")


def test_an_unknown_address_gets_the_branded_not_found_page(client, owner):
    anonymous = client.get("/no/such/page")
    client.force_login(owner)
    signed_in = client.get(reverse("document_chat", args=[987654]))

    for response in (anonymous, signed_in):
        assert response.status_code == 404
        html = response.content.decode()
        assert "This page isn't here" in html
        assert "Nothing of yours was changed." in html
        assert 'class="topbar"' in html
    assert "Go to your documents" in signed_in.content.decode()
    assert "Go to Silo's home page" in anonymous.content.decode()


def test_a_server_error_gets_the_branded_error_page_without_any_detail():
    html = render_to_string("500.html")

    assert "Something went wrong on our side" in html
    assert "Your documents and conversations are safe" in html
    assert 'href="/static/css/silo.css"' in html


def test_sign_in_and_sign_up_use_the_same_labels_as_the_navigation():
    client = Client()
    sign_in = client.get(reverse("account_login")).content.decode()
    sign_up = client.get(reverse("account_signup")).content.decode()

    assert "<title>Sign in · Silo</title>" in sign_in
    assert "Sign In" not in sign_in and "Sign Up" not in sign_in
    assert "<title>Sign up · Silo</title>" in sign_up
    assert "Sign Up" not in sign_up and "Signup" not in sign_up
