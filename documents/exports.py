"""A data export: the account, and of one workspace the documents' metadata, their chunks and the conversations the
person can see (GDPR access)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from documents.selectors import documents_for_user
from tenants.models import Workspace
from tenants.selectors import vector_database_for_tenant, workspace_summary
from tenants.services import TenantDatabaseNotReady, tenant_target
from vectordb import conversations
from vectordb.chunks import chunks_export
from vectordb.connections import get_registry


def tenant_export(user, workspace: Workspace | None = None) -> dict:
    """What Silo holds for this person in the workspace (default: their personal one); members only."""
    workspace = workspace or Workspace.objects.personal_for(user)
    documents = list(documents_for_user(user, workspace).order_by("id"))  # checks membership
    vector_database = vector_database_for_tenant(workspace)
    export: dict[str, Any] = {
        "exported_at": timezone.now().isoformat(),
        "workspace": workspace_summary(workspace),
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
        target = tenant_target(workspace)
    except TenantDatabaseNotReady:
        return export
    with get_registry().connection(target) as connection:
        export["chunks"] = chunks_export(connection, [document.id for document in documents])
        visible = conversations.conversations_list(
            connection, limit=10_000, visible_to=user.id, workspace_owner=workspace.owner_id == user.id
        )
        for conversation in visible:
            export["conversations"].append(
                {
                    "id": str(conversation.id),
                    "title": conversation.title,
                    "document_id": conversation.document_id,
                    "started_by_you": conversation.started_by_person(user.id, workspace.owner_id == user.id),
                    "shared": conversation.shared,
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
