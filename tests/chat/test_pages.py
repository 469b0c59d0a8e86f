"""The chat pages as the server renders them: conversations with their dates and documents, stored answers with
their citations (marked when the document has been deleted since), starter questions and the question limit."""

from __future__ import annotations

import html
import json
import re

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from documents import services as document_services
from documents.models import Document
from tenants import services
from tenants.models import VectorDatabase
from tests.helpers import personal_workspace
from vectordb import conversations
from vectordb.chunks import ChunkRecord, chunks_replace
from vectordb.connections import get_registry

pytestmark = pytest.mark.django_db(transaction=True)

OWLS = "1.2 Night hunting\nOwls hunt at night. The so-called barn owl hunts by sound alone."


def _ready_document(owner, title: str, text: str) -> Document:
    document = Document.objects.create(
        workspace=personal_workspace(owner),
        uploaded_by=owner,
        title=title,
        original_filename=f"{title}.pdf",
        file=ContentFile(b"%PDF-1.4 test", name=f"{title}.pdf"),
        size_bytes=13,
        sha256="0" * 64,
        status=Document.Status.READY,
        page_count=2,
        chunk_count=1,
    )
    with get_registry().connection(services.tenant_target(owner)) as connection:
        chunks_replace(connection, document.id, [ChunkRecord(document.id, 0, text, 2, 2, [0.0] * 383 + [1.0], {})])
    return document


@pytest.fixture
def library(owner, media_root):
    """The owner's database with two documents and a conversation about each, one of them in the all-documents chat."""
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    services.vector_database_provision(row.id)
    owls = _ready_document(owner, "Owls", OWLS)
    ferns = _ready_document(owner, "Ferns", "2 Spores\nFerns spread by spores.")
    citation = {
        "number": 1,
        "document_id": owls.id,
        "title": "Owls",
        "page": 2,
        "page_end": 2,
        "score": 0.9,
        "text": OWLS,
        "quote": "Owls hunt at night.",
    }
    with get_registry().connection(services.tenant_target(owner)) as connection:
        about_owls = conversations.conversation_create(connection, "When do owls hunt?", owls.id)
        conversations.message_add(connection, about_owls.id, "user", "When do owls hunt?")
        conversations.message_add(connection, about_owls.id, "assistant", "> Owls hunt at night. [1]", [citation])
        everything = conversations.conversation_create(connection, "Anything on spores?", None)
    yield {"owls": owls, "ferns": ferns, "about_owls": str(about_owls.id), "everything": str(everything.id)}
    services.vector_database_deprovision(row.id)


def _page(client, url, **params) -> str:
    response = client.get(url, params)
    assert response.status_code == 200
    return response.content.decode()


def test_the_conversation_list_shows_each_conversations_date_and_document(client, owner, library):
    client.force_login(owner)

    page = _page(client, reverse("chat"))

    items = re.findall(r'<a class="conversation-link" href="([^"]*)">(.*?)</a>', page, re.S)
    shown = {href: re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip() for href, body in items}
    everything = shown.pop(f"?c={library['everything']}")
    about_owls = shown.pop(f"{reverse('document_chat', args=[library['owls'].id])}?c={library['about_owls']}")
    assert shown == {}
    assert re.fullmatch(r"Anything on spores\? \d{1,2} \w{3} \d{4}, \d\d:\d\d · All documents", everything), everything
    assert re.fullmatch(r"When do owls hunt\? \d{1,2} \w{3} \d{4}, \d\d:\d\d · Owls", about_owls), about_owls


def test_a_stored_answer_carries_its_markdown_and_citations_for_the_browser_to_render(client, owner, library):
    client.force_login(owner)

    page = _page(client, reverse("document_chat", args=[library["owls"].id]), c=library["about_owls"])

    body = re.search(r'<div class="turn-text markdown" data-markdown data-citations="([^"]*)">(.*?)</div>', page, re.S)
    assert html.unescape(body.group(2)) == "> Owls hunt at night. [1]"
    citations = json.loads(html.unescape(body.group(1)))
    assert [(c["number"], c["title"], c["page"], c["quote"], c["deleted"]) for c in citations] == [
        (1, "Owls", 2, "Owls hunt at night.", False)
    ]
    assert 'id="deleted-conversation-notice"' not in page
    assert re.search(r'<textarea id="question"[^>]*>', page).group(0).count("disabled") == 0


def test_after_its_document_is_deleted_a_conversation_says_so_and_its_citations_are_marked(client, owner, library):
    document_services.document_delete(owner, library["owls"].id)
    client.force_login(owner)

    listing = _page(client, reverse("chat"))
    page = _page(client, reverse("chat"), c=library["about_owls"])

    # The conversation stays reachable, from the all-documents chat, and says what happened.
    assert f'href="?c={library["about_owls"]}"' in listing
    assert "deleted document" in listing
    assert "The document this conversation was about has been" in page
    assert re.search(r'<textarea id="question"[^>]*\bdisabled\b', page)
    body = re.search(r'data-citations="([^"]*)"', page)
    assert [(c["title"], c["deleted"]) for c in json.loads(html.unescape(body.group(1)))] == [("Owls", True)]
    # The document's own chat page is gone: the branded page says so.
    assert client.get(reverse("document_chat", args=[library["owls"].id])).status_code == 404


def test_an_empty_chat_offers_questions_drawn_from_the_documents(client, owner, library):
    client.force_login(owner)

    everything = _page(client, reverse("chat"))
    owls_only = _page(client, reverse("document_chat", args=[library["owls"].id]))

    starters = lambda page: [html.unescape(q) for q in re.findall(r'data-question="([^"]*)"', page)]  # noqa: E731
    assert starters(everything) == [
        "What does “Owls” say about night hunting?",
        "What does “Ferns” say about spores?",
        "What is the barn owl?",
    ]
    assert starters(owls_only) == ["What does this document say about night hunting?", "What is the barn owl?"]
    # A conversation with messages has none.
    assert starters(_page(client, reverse("chat"), c=library["about_owls"])) == []


def test_the_question_box_shows_the_limit_instead_of_cutting_the_text(client, owner, library, settings):
    settings.CHAT_MAX_QUESTION_CHARS = 1234
    client.force_login(owner)

    page = _page(client, reverse("chat"))

    textarea = re.search(r'<textarea id="question"[^>]*>', page).group(0)
    assert "maxlength" not in textarea
    assert 'data-max-chars="1234"' in page
    assert '<span id="question-count" class="question-count" aria-live="polite">0 / 1,234</span>' in page
