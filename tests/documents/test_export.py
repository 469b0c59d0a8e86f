"""Export my data: one JSON file with everything Silo holds for the tenant, and nothing of anyone else's."""

import json

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse

from documents.models import Document
from tenants import services
from tenants.models import VectorDatabase
from tests.helpers import personal_workspace
from vectordb import conversations
from vectordb.chunks import ChunkRecord, chunks_replace
from vectordb.connections import get_registry


@pytest.fixture
def tenant_with_content(owner):
    row = VectorDatabase.objects.create(workspace=personal_workspace(owner), provider="postgres")
    services.vector_database_provision(row.id)
    document = Document.objects.create(
        workspace=personal_workspace(owner),
        uploaded_by=owner,
        title="Field notes",
        original_filename="field-notes.pdf",
        file=ContentFile(b"%PDF-1.4 test", name="field-notes.pdf"),
        size_bytes=13,
        sha256="0" * 64,
        status=Document.Status.READY,
        page_count=2,
        chunk_count=1,
    )
    with get_registry().connection(services.tenant_target(owner)) as connection:
        chunks_replace(
            connection,
            document.id,
            [ChunkRecord(document.id, 0, "Owls hunt at night.", 2, 2, [0.0] * 383 + [1.0], {"section": "Birds"})],
        )
        conversation = conversations.conversation_create(connection, "About owls", document.id)
        conversations.message_add(connection, conversation.id, "user", "When do owls hunt?")
        conversations.message_add(connection, conversation.id, "assistant", "At night [1].", [{"page": 2}])
    yield document
    document.file.delete(save=False)
    services.vector_database_deprovision(row.id)


@pytest.mark.django_db(transaction=True)
def test_export_holds_documents_chunks_and_conversations(client, owner, tenant_with_content):
    client.force_login(owner)

    response = client.get(reverse("account_export"))

    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="silo-export.json"'
    export = json.loads(response.content)
    assert export["account"]["email"] == "owner@example.com"
    assert [d["title"] for d in export["documents"]] == ["Field notes"]
    assert export["chunks"] == [
        {
            "document_id": tenant_with_content.id,
            "chunk_index": 0,
            "first_page": 2,
            "last_page": 2,
            "content": "Owls hunt at night.",
            "metadata": {"section": "Birds"},
        }
    ]
    [conversation] = export["conversations"]
    assert conversation["title"] == "About owls"
    assert [(m["role"], m["content"]) for m in conversation["messages"]] == [
        ("user", "When do owls hunt?"),
        ("assistant", "At night [1]."),
    ]
    assert "postgresql://" not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_another_tenants_export_contains_none_of_it(client, stranger, tenant_with_content):
    client.force_login(stranger)

    export = json.loads(client.get(reverse("account_export")).content)

    assert export["documents"] == [] and export["chunks"] == [] and export["conversations"] == []
    assert "Owls" not in json.dumps(export)
