"""Workspaces are a security boundary: a non-member gets 404 for everything of a workspace and a member 403 for what
their role lacks, and either way nothing changes; a removed member loses access at once, open streams included;
invitation tokens cannot be guessed or reused; a member of one workspace never reaches another's database."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
import pytest
from django.core.files.base import ContentFile
from django.test import RequestFactory
from django.urls import reverse

from chat import services as chat_services
from documents import services as document_services
from documents.models import Document
from tenants import services as tenant_services
from tenants.models import Invitation, Membership, VectorDatabase, Workspace
from tenants.permissions import MOVING_MESSAGE, Action, WorkspaceNotFound, membership_require
from tenants.workspaces import invitation_accept, invitation_create, member_remove
from tests.helpers import server_sent_events
from tests.pdf_factory import text_pdf
from tests.workspaces import Team, client_in, erase_databases, make_team, person

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

PAGES = [
    "The harbour pilot boards every ship at the outer buoy. The lamp is cleaned every morning at dawn.",
    "Tide tables are posted at the quay; the fog horn sounds every thirty seconds in fog.",
]


class Workspaces:
    """Team A (owner, admin, editor, viewer) and B (a stranger's personal workspace), each with a ready database, a
    document, a private and a shared conversation."""

    def __init__(self, owner, stranger):
        self.team: Team = make_team(owner)
        self.a = self.team.workspace
        self.b = Workspace.objects.personal_for(stranger)
        self.stranger = stranger
        tenant_services.vector_database_provision(tenant_services.vector_database_request(self.b).id)
        self.document_a = self._document(self.team.editor, self.a, "harbour-a.pdf", "Harbour A")
        self.document_b = self._document(stranger, self.b, "harbour-b.pdf", "Harbour B")
        self.private_a = self._conversation(owner, self.a)
        self.shared_a = self._conversation(self.team.editor, self.a)
        chat_services.conversation_share(self.team.editor, self.shared_a, True, self.a)
        self.private_b = self._conversation(stranger, self.b)

    @staticmethod
    def _document(user, workspace, name, title) -> Document:
        pages = [*PAGES, f"This is {title}."]
        document = document_services.document_upload(
            user, ContentFile(text_pdf(pages), name=name), enqueue=False, workspace=workspace
        )
        document_services.document_ingest(document.id)
        Document.objects.filter(id=document.id).update(title=title)
        document.refresh_from_db()
        assert document.status == Document.Status.READY, document.error_message
        return document

    @staticmethod
    def _conversation(user, workspace) -> str:
        events = list(chat_services.chat_turn(user, "When is the lamp cleaned?", workspace=workspace))
        assert events[-1].kind == "done", events
        return events[0].data["id"]

    def rows(self, workspace: Workspace, query: str) -> list[tuple]:
        row = VectorDatabase.objects.get(workspace=workspace)
        with psycopg.connect(tenant_services.vector_database_credentials(row)["dsn"]) as connection:
            return connection.execute(query).fetchall()

    def snapshot(self) -> dict:
        """Everything a request could change, in both workspaces."""
        return {
            "documents": sorted(Document.objects.values_list("id", "workspace_id", "status", "title", "chunk_count")),
            "files": sorted(
                (d.id, hashlib.sha256(Path(d.file.path).read_bytes()).hexdigest()) for d in Document.objects.all()
            ),
            "memberships": sorted(Membership.objects.values_list("workspace_id", "user_id", "role")),
            "workspaces": sorted(Workspace.objects.values_list("id", "slug", "owner_id")),
            "invitations": sorted(Invitation.objects.values_list("id", "accepted_at", "revoked_at")),
            "databases": sorted(VectorDatabase.objects.values_list("id", "status", "workspace_id")),
            **{
                f"{name} {table}": self.rows(workspace, f"SELECT * FROM {table} ORDER BY 1")
                for name, workspace in (("a", self.a), ("b", self.b))
                for table in ("embeddings", "conversations", "messages")
            },
        }


@pytest.fixture
def workspaces(owner, stranger, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.OPENAI_API_KEY = ""  # extractive answers: no model needed
    yield Workspaces(owner, stranger)
    erase_databases()


def _stream(client, **data) -> list[tuple[str | None, dict]]:
    response = client.post(reverse("chat_stream"), data)
    if response.status_code != 200:
        return [("status", {"code": response.status_code})]
    return server_sent_events(b"".join(iter(response)).decode().splitlines())


def _id_requests(client, document_id: int, conversation_id: str) -> dict[str, int]:
    """Every URL that takes an id, asked for one object: the status of each answer."""
    json = {"HTTP_ACCEPT": "application/json"}
    return {
        "file": client.get(reverse("document_file", args=[document_id])).status_code,
        "document chat": client.get(reverse("document_chat", args=[document_id])).status_code,
        "delete": client.post(reverse("document_delete", args=[document_id]), **json).status_code,
        "reingest": client.post(reverse("document_reingest", args=[document_id]), **json).status_code,
        "conversation": client.get(reverse("chat"), {"c": conversation_id}).status_code,
        "delete conversation": client.post(reverse("conversation_delete", args=[conversation_id]), **json).status_code,
        "share conversation": client.post(reverse("conversation_share", args=[conversation_id]), **json).status_code,
        "stream on document": _stream(client, question="lamp?", document=document_id)[0][1].get("code", 200),
    }


def test_a_non_member_gets_404_for_everything_of_another_workspace_and_changes_nothing(workspaces):
    w = workspaces
    stranger = client_in(w.stranger)
    before = w.snapshot()

    statuses = _id_requests(stranger, w.document_a.id, w.private_a)
    statuses["switch to it"] = stranger.post(reverse("workspace_switch"), {"workspace": w.a.slug}).status_code
    statuses["shared conversation"] = stranger.get(reverse("chat"), {"c": w.shared_a}).status_code
    membership = w.team.membership(w.team.viewer)
    statuses["remove its member"] = stranger.post(reverse("member_remove", args=[membership.id])).status_code
    statuses["change its member's role"] = stranger.post(
        reverse("member_role", args=[membership.id]), {"role": "owner"}
    ).status_code

    assert statuses == {
        "file": 404, "document chat": 404, "delete": 404, "reingest": 404, "conversation": 404,
        "delete conversation": 404, "share conversation": 404, "stream on document": 404, "switch to it": 404,
        "shared conversation": 404, "remove its member": 404, "change its member's role": 404,
    }  # fmt: skip
    # The stranger's own listings show nothing of A.
    dashboard = stranger.get(reverse("dashboard")).content.decode()
    assert "Harbour B" in dashboard and "Harbour A" not in dashboard and w.a.name not in dashboard
    assert [d["title"] for d in stranger.get(reverse("documents_status")).json()["documents"]] == ["Harbour B"]
    assert w.snapshot() == before


def test_a_viewer_gets_403_for_every_change_and_changes_nothing(workspaces):
    w = workspaces
    viewer = client_in(w.team.viewer, w.a)
    before = w.snapshot()
    pdf = ContentFile(text_pdf(["A viewer's upload must not be stored."]), name="sneaky.pdf")

    statuses = {
        "upload": viewer.post(reverse("document_upload"), {"files": [pdf]}).status_code,
        "delete": viewer.post(reverse("document_delete", args=[w.document_a.id])).status_code,
        "reingest": viewer.post(reverse("document_reingest", args=[w.document_a.id])).status_code,
        "invite": viewer.post(reverse("workspace_invite"), {"email": "x@example.org", "role": "viewer"}).status_code,
        "change a role": viewer.post(
            reverse("member_role", args=[w.team.membership(w.team.editor).id]), {"role": "viewer"}
        ).status_code,
        "remove a member": viewer.post(
            reverse("member_remove", args=[w.team.membership(w.team.editor).id])
        ).status_code,
        "transfer": viewer.post(
            reverse("ownership_transfer"), {"membership": w.team.membership(w.team.viewer).id}
        ).status_code,
        "delete workspace": viewer.post(reverse("workspace_delete"), {"confirm_slug": w.a.slug}).status_code,
        "retry database": viewer.post(reverse("database_retry")).status_code,
        # Another member's private conversation does not exist for the viewer; a shared one is read-only.
        "private conversation": viewer.get(reverse("chat"), {"c": w.private_a}).status_code,
        "delete shared conversation": viewer.post(reverse("conversation_delete", args=[w.shared_a])).status_code,
        "share someone's conversation": viewer.post(reverse("conversation_share", args=[w.private_a])).status_code,
    }

    assert statuses == {
        "upload": 403, "delete": 403, "reingest": 403, "invite": 403, "change a role": 403, "remove a member": 403,
        "transfer": 403, "delete workspace": 403, "retry database": 403, "private conversation": 404,
        "delete shared conversation": 404, "share someone's conversation": 404,
    }  # fmt: skip
    assert "You are a viewer here" in viewer.get(reverse("dashboard")).content.decode()
    shared = viewer.get(reverse("chat"), {"c": w.shared_a}).content.decode()
    assert "Another member shared this conversation" in shared
    continued = _stream(viewer, question="And the fog horn?", conversation=w.shared_a)
    assert continued == [("error", {"message": chat_services.NOT_YOURS_MESSAGE})]
    assert w.snapshot() == before
    # Viewers read and chat: the document, its file, a conversation of their own.
    assert viewer.get(reverse("document_file", args=[w.document_a.id])).status_code == 200
    assert _stream(viewer, question="When is the lamp cleaned?")[-1][0] == "done"


def test_editors_change_documents_but_not_people_and_admins_not_owners(workspaces):
    w = workspaces
    editor, admin = client_in(w.team.editor, w.a), client_in(w.team.admin, w.a)
    before = w.snapshot()
    owner_membership = w.team.membership(w.team.owner)

    assert editor.post(reverse("workspace_invite"), {"email": "x@example.org", "role": "viewer"}).status_code == 403
    assert admin.post(reverse("workspace_invite"), {"email": "x@example.org", "role": "owner"}).status_code == 403
    assert admin.post(reverse("member_remove", args=[owner_membership.id])).status_code == 403
    assert admin.post(reverse("member_role", args=[owner_membership.id]), {"role": "viewer"}).status_code == 403
    assert admin.post(reverse("workspace_delete"), {"confirm_slug": w.a.slug}).status_code == 403
    assert w.snapshot() == before

    assert editor.post(reverse("document_reingest", args=[w.document_a.id])).status_code == 302
    assert Document.objects.get(id=w.document_a.id).status == Document.Status.QUEUED


def test_a_removed_member_loses_access_at_once_including_an_answer_being_streamed(workspaces, settings):
    w = workspaces
    settings.CHAT_ACCESS_RECHECK_SECONDS = 0  # check before every piece of the answer
    editor = client_in(w.team.editor, w.a)
    assert editor.get(reverse("document_file", args=[w.document_a.id])).status_code == 200
    turn = chat_services.chat_turn(w.team.editor, "When is the lamp cleaned?", workspace=w.a)
    assert [next(turn).kind, next(turn).kind] == ["conversation", "sources"]
    messages_before = w.rows(w.a, "SELECT count(*) FROM messages")

    member_remove(w.team.owner, w.a, w.team.membership(w.team.editor).id)

    rest = list(turn)
    assert [(event.kind, event.data) for event in rest] == [("error", {"message": chat_services.ACCESS_LOST_MESSAGE})]
    assert w.rows(w.a, "SELECT count(*) FROM messages") == messages_before  # no answer stored for them
    assert editor.get(reverse("document_file", args=[w.document_a.id])).status_code == 404
    assert editor.post(reverse("document_delete", args=[w.document_a.id])).status_code == 404
    # Their session falls back to their personal workspace, which shows nothing of A.
    assert "Harbour A" not in editor.get(reverse("dashboard")).content.decode()


def test_invitation_tokens_cannot_be_guessed_read_from_the_database_or_used_twice(workspaces):
    w = workspaces
    sent = invitation_create(w.team.admin, w.a, "guest@example.org", "viewer", RequestFactory().get("/"))
    assert len(sent.token) >= 43  # 32 random bytes, URL-safe
    stored = Invitation.objects.get(id=sent.invitation.id)
    assert sent.token not in str(list(Invitation.objects.values_list()))  # only its digest is kept
    assert stored.token_digest == hashlib.sha256(sent.token.encode()).hexdigest()
    guest, thief = person("guest@example.org"), person("thief@example.org")

    guessed = client_in(thief).post(reverse("invitation_accept", args=[sent.token[:-1] + "x"]))
    assert guessed.status_code == 404
    with pytest.raises(Exception, match="This invitation is for guest@example.org"):
        invitation_accept(thief, sent.token)  # a forwarded link does not let someone else in
    invitation_accept(guest, sent.token)
    Membership.objects.filter(workspace=w.a, user=guest).delete()  # removed again
    with pytest.raises(Exception, match="already accepted"):
        invitation_accept(guest, sent.token)  # the link does not bring them back
    assert not Membership.objects.filter(workspace=w.a, user__in=[guest, thief]).exists()


def test_a_member_of_one_workspace_never_reaches_anothers_database_files_or_conversations(workspaces):
    w = workspaces
    member_of_a = w.team.owner
    with pytest.raises(WorkspaceNotFound):
        chat_services.chunks_retrieve(member_of_a, "lamp", workspace=w.b)
    with pytest.raises(WorkspaceNotFound):
        chat_services.conversations_for_user(member_of_a, workspace=w.b)
    with pytest.raises(WorkspaceNotFound):
        document_services.document_upload(
            member_of_a, ContentFile(text_pdf(["x"]), name="x.pdf"), enqueue=False, workspace=w.b
        )
    events = list(chat_services.chat_turn(member_of_a, "When is the lamp cleaned?", workspace=w.b))
    assert [(event.kind, event.data) for event in events] == [("error", {"message": chat_services.ACCESS_LOST_MESSAGE})]
    # Each workspace's answers cite its own document only.
    citations_a = chat_services.chunks_retrieve(member_of_a, "When is the lamp cleaned?", workspace=w.a)
    assert {c.document_id for c in citations_a} == {w.document_a.id}
    # Two databases, two roles: A's credentials do not open B's database.
    row_a, row_b = (VectorDatabase.objects.get(workspace=workspace) for workspace in (w.a, w.b))
    assert row_a.external_id != row_b.external_id
    dsn_a = tenant_services.vector_database_credentials(row_a)["dsn"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn_a.rsplit("/", 1)[0] + "/" + row_b.external_id).close()
    # Files live under their workspace's folder.
    assert Path(w.document_a.file.path).parent.name == f"workspace-{w.a.id}"
    assert Path(w.document_b.file.path).parent.name == f"workspace-{w.b.id}"


def test_a_membership_read_by_the_request_stands_only_for_its_own_person_and_workspace(workspaces):
    """A chat turn reuses the membership its request just read instead of reading it again; handed anyone else's,
    or one of another workspace, it reads afresh and refuses as before."""
    w = workspaces
    owners_membership_of_a = w.team.membership(w.team.owner)
    reused = membership_require(w.team.owner, w.a, Action.CHAT, checked=owners_membership_of_a)
    assert reused is owners_membership_of_a
    with pytest.raises(WorkspaceNotFound):
        membership_require(w.team.owner, w.b, Action.CHAT, checked=owners_membership_of_a)
    with pytest.raises(WorkspaceNotFound):
        membership_require(w.stranger, w.a, Action.CHAT, checked=owners_membership_of_a)
    messages_before = w.rows(w.a, "SELECT count(*) FROM messages")

    question = "When is the lamp cleaned?"
    turn = chat_services.chat_turn(
        w.stranger,
        question,
        workspace=w.a,
        membership=owners_membership_of_a,
        question_embedding=chat_services.question_embedding_start(question),
    )

    assert [(event.kind, event.data) for event in turn] == [("error", {"message": chat_services.ACCESS_LOST_MESSAGE})]
    assert w.rows(w.a, "SELECT count(*) FROM messages") == messages_before


def test_a_question_whose_embedding_is_already_being_computed_is_still_refused_while_the_workspace_moves(workspaces):
    w = workspaces
    VectorDatabase.objects.filter(workspace=w.a).update(operation="move", operation_step="restoring the database")
    messages_before = w.rows(w.a, "SELECT count(*) FROM messages")
    question = "When is the lamp cleaned?"
    embedding = chat_services.question_embedding_start(question)

    events = list(chat_services.chat_turn(w.team.editor, question, workspace=w.a, question_embedding=embedding))

    assert [(event.kind, event.data) for event in events] == [("error", {"message": MOVING_MESSAGE})]
    assert w.rows(w.a, "SELECT count(*) FROM messages") == messages_before
    assert len(embedding.result()) == 384  # computed, never used
    VectorDatabase.objects.filter(workspace=w.a).update(operation="", operation_step="")
    events = list(chat_services.chat_turn(w.team.editor, question, workspace=w.a, question_embedding=embedding))
    assert events[-1].kind == "done" and events[1].data["citations"], events
