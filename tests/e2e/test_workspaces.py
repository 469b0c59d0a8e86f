"""A team in a real browser: the owner creates a workspace, uploads a document and invites a colleague by email; the
colleague signs up from the link (on a phone), reads and chats with the shared document, cannot upload as a viewer,
and loses everything of the workspace the moment the owner removes them."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import expect

from documents.models import Document
from tenants.models import Membership, Workspace
from tests.e2e.steps import (
    PASSWORD,
    ask,
    assert_no_script_errors,
    document_item,
    has_no_sideways_scroll,
    sign_up,
    upload,
    wait_for_answer,
    wait_for_database_ready,
    wait_for_document,
)
from tests.pdf_factory import text_pdf

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("erase_tenant_databases"),
]

HARBOUR_PAGES = [
    "Harbour rules. The lamp of the lighthouse is cleaned every morning at dawn by the keeper on duty.",
    "Pilots board incoming ships at the outer buoy; the fog horn sounds every thirty seconds in fog.",
]
# Screenshots a person looks at (both screen sizes), besides the numbered ones of every step.
REVIEW_SCREENS = Path("/work/screens18")


def _invitation_link(log: Path, base: str, timeout: float = 15) -> str:
    """The link of the last invitation mail the server printed (the console mail backend, the default)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = re.findall(r"https?://[^\s]+/invitations/[\w-]+", log.read_text(errors="replace"))
        if links:
            return base + "/invitations/" + links[-1].rsplit("/", 1)[1]
        time.sleep(0.2)
    raise AssertionError(f"no invitation mail in {log}")


def _keep(path: Path, name: str) -> None:
    REVIEW_SCREENS.mkdir(exist_ok=True)
    shutil.copy(path, REVIEW_SCREENS / name)


def test_invite_accept_share_a_document_viewer_cannot_upload_then_removal(
    page, phone_page, asgi_server, screenshots, tmp_path
):
    base = asgi_server.url
    owner, colleague = page, phone_page

    # The owner signs up, creates a team workspace from the top bar and uploads a document into it.
    sign_up(owner, base, "alice@example.com", screenshots)
    wait_for_database_ready(owner, screenshots)
    owner.locator("#workspace-switcher summary").click()
    owner.fill("#new-workspace-name", "Harbour Team")
    owner.locator(".workspace-create button").click()
    owner.wait_for_url(f"{base}/workspace/members")
    expect(owner.locator("#current-workspace")).to_have_text("Harbour Team")
    owner.goto(f"{base}/dashboard/")
    wait_for_database_ready(owner, screenshots)
    harbour_pdf = tmp_path / "harbour_rules.pdf"  # small: the journey is about people, not parsing
    harbour_pdf.write_bytes(text_pdf(HARBOUR_PAGES))
    upload(owner, harbour_pdf)
    wait_for_document(owner, "harbour rules", "Ready", screenshots)
    document = Document.objects.get(workspace__name="Harbour Team")

    # Invitation by email: the link arrives in the mail (printed by the console backend).
    owner.goto(f"{base}/workspace/members")
    owner.fill("#invite-email", "bob@example.com")
    owner.select_option("#invite-role", "viewer")
    owner.locator("#invite-form button[type=submit]").click()
    expect(owner.locator(".messages")).to_contain_text("Invitation sent to bob@example.com as viewer.")
    expect(owner.locator("#pending-invitations")).to_contain_text("bob@example.com as viewer")
    _keep(screenshots.take(owner, "members-invitation-pending"), "desktop-members-page.png")
    link = _invitation_link(settings.DATA_DIR / "logs" / "e2e-web.log", base)

    # The colleague has no account yet: from the link they sign up, come back, and accept.
    colleague.goto(link)
    expect(colleague.locator("h1")).to_have_text("Join Harbour Team")
    _keep(screenshots.take(colleague, "invitation-signed-out"), "phone-invitation.png")
    colleague.get_by_role("link", name="Create an account").click()
    colleague.fill("#id_email", "bob@example.com")
    colleague.fill("#id_password1", PASSWORD)
    colleague.fill("#id_password2", PASSWORD)
    colleague.locator("main form button[type=submit]").click()
    colleague.wait_for_url(link)
    colleague.locator("#accept-invitation").click()
    colleague.wait_for_url(f"{base}/dashboard/")
    expect(colleague.locator("#current-workspace")).to_have_text("Harbour Team")
    expect(colleague.locator(".messages")).to_contain_text("Welcome to Harbour Team: you joined as viewer.")

    # The shared document is there; a viewer has no upload control, and the server refuses an upload anyway.
    expect(document_item(colleague, "harbour rules")).to_have_count(1)
    expect(colleague.locator("#viewer-note")).to_contain_text("You are a viewer here")
    expect(colleague.locator("#upload-form")).to_have_count(0)
    assert has_no_sideways_scroll(colleague)
    _keep(screenshots.take(colleague, "viewer-dashboard"), "phone-viewer-dashboard.png")
    refused = colleague.evaluate(
        """async () => {
            const csrf = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const body = new FormData();
            body.append("files", new Blob(["%PDF-1.4 sneaky"], {type: "application/pdf"}), "sneaky.pdf");
            const response = await fetch("/documents/upload", {method: "POST", body, headers: {"X-CSRFToken": csrf}});
            return response.status;
        }"""
    )
    assert refused == 403
    assert Document.objects.filter(workspace__name="Harbour Team").count() == 1

    # Viewers chat with the workspace's documents.
    document_item(colleague, "harbour rules").get_by_role("link", name="Open and chat").click()
    colleague.wait_for_url(f"{base}/documents/{document.id}/")
    ask(colleague, "When is the lamp cleaned?")
    answer = wait_for_answer(colleague)
    expect(answer.locator(".error-text")).to_have_count(0)
    _keep(screenshots.take(colleague, "viewer-chat"), "phone-viewer-chat.png")

    # The owner sees the new member and removes them: access ends at once.
    owner.goto(f"{base}/workspace/members")
    row = owner.locator("#members tr[data-email='bob@example.com']")
    expect(row).to_have_attribute("data-role", "viewer")
    row.get_by_role("button", name="Remove bob@example.com").click()
    expect(owner.locator(".messages")).to_contain_text("bob@example.com was removed from Harbour Team.")
    expect(owner.locator("#members tr[data-email='bob@example.com']")).to_have_count(0)
    _keep(screenshots.take(owner, "members-after-removal"), "desktop-members-after-removal.png")
    assert not Membership.objects.filter(workspace__name="Harbour Team", user__email="bob@example.com").exists()

    file_response = colleague.request.get(f"{base}/documents/{document.id}/file")
    assert file_response.status == 404
    colleague.goto(f"{base}/dashboard/")
    personal = Workspace.objects.get(owner__email="bob@example.com", personal=True)
    expect(colleague.locator("#current-workspace")).to_have_text(personal.name)
    expect(document_item(colleague, "harbour rules")).to_have_count(0)
    colleague.locator("#workspace-switcher summary").click()
    expect(colleague.locator(".workspace-list")).not_to_contain_text("Harbour Team")
    _keep(screenshots.take(colleague, "removed-back-in-personal"), "phone-after-removal.png")
    owner.goto(f"{base}/dashboard/")
    _keep(screenshots.take(owner, "owner-dashboard"), "desktop-dashboard.png")
    assert_no_script_errors(owner)
    assert_no_script_errors(colleague)
