"""What a browser may do with Silo's responses: every page carries the Content Security Policy the app's own pages
pass (the e2e tests run the browser under it), and nothing a signed-in person sees is kept in a cache."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse

from documents import services as document_services
from tests.pdf_factory import text_pdf

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; frame-src 'self' blob:; frame-ancestors 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'"
)


def test_pages_signed_in_or_not_carry_the_content_security_policy(owner, settings):
    assert settings.CONTENT_SECURITY_POLICY == POLICY  # no inline script or style, no eval, nothing from elsewhere
    visitor = Client()
    member = Client()
    member.force_login(owner)

    for client, path in [(visitor, "/"), (visitor, "/accounts/login/"), (member, "/dashboard/"), (member, "/chat/")]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Security-Policy"] == POLICY, path


def test_google_sign_in_adds_its_own_origin_to_the_form_targets_only():
    import os
    import subprocess
    import sys

    from config.settings_paths import BASE_DIR

    code = "import django; django.setup(); from django.conf import settings; print(settings.CONTENT_SECURITY_POLICY)"
    environment = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings", GOOGLE_CLIENT_ID="id")
    environment.update(GOOGLE_CLIENT_SECRET="secret", GOOGLE_AUTHORIZE_URL="https://accounts.example.com/o/auth")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=environment, capture_output=True, text=True, timeout=120
    )

    assert result.stdout.strip() == POLICY.replace(
        "form-action 'self'", "form-action 'self' https://accounts.example.com"
    )


def test_tenant_data_is_never_cached(owner, media_root):
    document = document_services.document_upload(
        owner, ContentFile(text_pdf(["The lamp."]), name="n.pdf"), enqueue=False
    )
    client = Client()
    client.force_login(owner)

    responses = {
        "pdf": client.get(reverse("document_file", args=[document.id])),
        "status json": client.get(reverse("documents_status")),
        "database status json": client.get(reverse("database_status")),
        "export": client.get(reverse("account_export")),
        "dashboard": client.get(reverse("dashboard")),
    }

    for name, response in responses.items():
        assert response.status_code == 200, name
        directives = {part.strip() for part in response["Cache-Control"].split(",")}
        assert {"no-store", "private"} <= directives, (name, response["Cache-Control"])
