"""A tenant's data export: account, documents' metadata, their chunks and the conversations (GDPR access)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from documents.models import Document
from tenants.selectors import vector_database_for_tenant
from tenants.services import TenantDatabaseNotReady, tenant_target
from vectordb import conversations
from vectordb.chunks import chunks_export
from vectordb.connections import get_registry


def tenant_export(user) -> dict:
    documents = list(Document.objects.filter(owner=user).order_by("id"))
    vector_database = vector_database_for_tenant(user)
    export: dict[str, Any] = {
        "exported_at": timezone.now().isoformat(),
        "account": {"email": user.email, "name": user.name, "date_joined": user.date_joined.isoformat()},
        "database": {
            "provider": vector_database.provider if vector_database else None,
            "region": vector_database.region if vector_database else None,
            "status": vector_database.status if vector_database else None,
        },
        "documents": [
            {
                "id": document.id,
                "title": document.title,
                "original_filename": document.original_filename,
                "size_bytes": document.size_bytes,
                "sha256": document.sha256,
                "status": document.status,
                "pages": document.page_count,
                "chunks": document.chunk_count,
                "uploaded_at": document.created_at.isoformat(),
            }
            for document in documents
        ],
        "chunks": [],
        "conversations": [],
    }
    try:
        target = tenant_target(user)
    except TenantDatabaseNotReady:
        return export
    with get_registry().connection(target) as connection:
        export["chunks"] = chunks_export(connection, [document.id for document in documents])
        for conversation in conversations.conversations_list(connection, limit=10_000):
            export["conversations"].append(
                {
                    "id": str(conversation.id),
                    "title": conversation.title,
                    "document_id": conversation.document_id,
                    "created_at": conversation.created_at.isoformat(),
                    "messages": [
                        {
                            "role": message.role,
                            "content": message.content,
                            "citations": message.citations,
                            "created_at": message.created_at.isoformat() if message.created_at else None,
                        }
                        for message in conversations.messages_list(connection, conversation.id, limit=100_000)
                    ],
                }
            )
    return export
