import asyncio
import functools
import logging
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import close_old_connections, transaction
from django.db import connection as main_database
from django.http import Http404, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from chat import selectors, services
from chat.limits import ChatLimitReached, ChatStreamSlot, chat_stream_admit
from chat.streaming import EventHandOver, server_sent_events
from documents.models import Document
from documents.selectors import document_get_for_user, documents_for_user
from tenants.models import AuthenticatedHttpRequest
from tenants.permissions import Action
from tenants.plans import NEON_SUSPENDED_MESSAGE, workspace_limit, workspace_paused
from tenants.services import TenantDatabaseNotReady
from tenants.workspaces import membership_current
from vectordb.connections import ConnectionCapacityExhausted

logger = logging.getLogger(__name__)
_END = object()


class _Failure:
    def __init__(self, error: Exception):
        self.error = error


UNREACHABLE_MESSAGE = (
    "Your database cannot be reached right now; your documents and conversations are safe. "
    "Chat opens again as soon as it is back: try again in a few minutes."
)


@functools.lru_cache(maxsize=1)
def _stream_executor() -> ThreadPoolExecutor:
    # Most of a streamed answer is waiting on the model: threads, not cores, bound concurrent streams.
    return ThreadPoolExecutor(max_workers=settings.CHAT_STREAM_THREADS, thread_name_prefix="chat-stream")


def _chat_page(request: AuthenticatedHttpRequest, document: Document | None) -> HttpResponse:
    conversation_id = request.GET.get("c") or ""
    workspace = membership_current(request, Action.CHAT).workspace
    user = request.user
    context: dict[str, Any] = {
        "document": document, "conversations": [], "conversation": None, "history": [], "unavailable": "",
    }  # fmt: skip
    titles = selectors.document_titles_for_user(user, workspace)
    is_owner = workspace.owner_id == user.id
    try:
        conversations = services.conversations_for_user(user, document.id if document else None, workspace)
        context["conversations"] = [
            selectors.conversation_listing(item, titles, user.id, is_owner) for item in conversations
        ]
        if conversation_id:
            found = services.conversation_with_messages(user, conversation_id, workspace)
            if found is None or (document and found[0].document_id != document.id):
                raise Http404("No such conversation")
            context["conversation"] = selectors.conversation_listing(found[0], titles, user.id, is_owner)
            context["history"] = [selectors.message_for_display(message, titles) for message in found[1]]
    except TenantDatabaseNotReady:
        context["unavailable"] = "Your database is still being set up. Chat opens as soon as it is ready."
    except (psycopg.OperationalError, ConnectionCapacityExhausted) as error:
        logger.warning(
            "chat page of user %s in workspace %s: tenant database unreachable: %s",
            request.user.pk,
            workspace.id,
            type(error).__name__,
        )
        # Suspended over its Neon quota: say so, rather than "cannot be reached".
        context["unavailable"] = NEON_SUSPENDED_MESSAGE if workspace_paused(workspace.id) else UNREACHABLE_MESSAGE
    ready_documents = documents_for_user(user, workspace).filter(status=Document.Status.READY)
    context["ready_document_count"] = ready_documents.count()
    context["has_ready_documents"] = bool(context["ready_document_count"])
    if document is not None:
        context["has_ready_documents"] = document.status == Document.Status.READY
    if not context["history"] and not context["unavailable"] and context["has_ready_documents"]:
        context["starter_questions"] = selectors.starter_questions_for_user(
            user, document.id if document else None, workspace
        )
    context["max_question_chars"] = settings.CHAT_MAX_QUESTION_CHARS
    return render(request, "chat/chat.html", context)


@login_required
@require_GET
def chat_all(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Chat across every ready document of the workspace."""
    return _chat_page(request, None)


@login_required
@require_GET
def document_chat(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    """One document: its PDF beside a chat limited to it."""
    workspace = membership_current(request, Action.CHAT).workspace
    return _chat_page(request, document_get_for_user(request.user, document_id, workspace))


@transaction.non_atomic_requests  # streams for minutes, on connections it hands back between steps
@login_required
@require_POST
def chat_stream(request: AuthenticatedHttpRequest) -> HttpResponseBase:
    """One chat turn as server-sent events: conversation, sources, token..., then done or error.

    A plain view: under ASGI it runs in one thread hop, where an async view took one per check. The checks that can
    refuse the question (404, 403, 429) run here, while the response can still say so; the turn then starts at once,
    so its work overlaps the response's way out (middleware, headers), and the stream re-checks while it runs."""
    membership = membership_current(request, Action.CHAT)
    workspace = membership.workspace
    question = request.POST.get("question", "")
    conversation_id = request.POST.get("conversation") or None
    raw_document = request.POST.get("document") or None
    try:
        document_id = int(raw_document) if raw_document else None
    except ValueError:
        raise Http404("No such document") from None
    if document_id is not None:
        # Someone else's document is a 404 now: raised inside the stream, after the 200 went out, it would only cut
        # the connection.
        document_get_for_user(request.user, document_id, workspace, membership=membership)
    try:
        slot = chat_stream_admit(request.user.pk, workspace_limit(workspace, "chat_max_concurrent_streams"))
    except ChatLimitReached as error:
        refused = JsonResponse({"error": str(error)}, status=429)
        refused["Retry-After"] = str(error.retry_after_seconds)
        return refused
    # The request's own main-database connection would otherwise stay checked out of the pool for the whole stream.
    close_old_connections()
    question_embedding = _question_embedding_start(question, conversation_id)
    turn = services.chat_turn(
        request.user,
        question,
        conversation_id=conversation_id,
        document_id=document_id,
        workspace=workspace,
        membership=membership,
        question_embedding=question_embedding,
    )
    return _event_stream(turn, slot)


def _question_embedding_start(question: str, conversation_id: str | None) -> Future[list[float]] | None:
    """The question's embedding, started now that the question is admitted: it is computed while the turn is checked
    and stored. None for a question the turn will refuse or not search for as asked."""
    try:
        question = services.question_validate(question)
    except services.QuestionRejected:
        return None
    if not services.searches_question_itself(conversation_id):
        return None
    return services.question_embedding_start(question)


def _event_stream(turn, slot: ChatStreamSlot) -> StreamingHttpResponse:
    """The turn's events as server-sent events. The service is synchronous (database, embedder, model client): it runs
    in one thread of a pool sized for concurrent streams (CHAT_STREAM_THREADS), from its first event to its last,
    handing the events to the event loop, which writes whatever has arrived in one piece, tokens that arrive within
    CHAT_STREAM_COALESCE_SECONDS of the last written ones together (chat.streaming: per-token hand-overs and writes were
    most of the server's CPU after the model client's own, at ~200 tokens a turn: `make bench`, section load)."""
    arrived = EventHandOver()  # the turn starts before anyone reads the response: the loop is learnt when it waits
    stopped = threading.Event()  # the browser went away: stop asking the model

    def produce() -> None:
        try:
            for event in turn:
                slot.renew()
                arrived.put(event)
                if main_database.connection is not None:
                    # Whatever took a main-database connection (the checks before the answer, the membership
                    # recheck every CHAT_ACCESS_RECHECK_SECONDS while it streams) gives it back to the pool now:
                    # held for the rest of a stream, 50 streams emptied the pool and new questions got a 500.
                    close_old_connections()
                if stopped.is_set():
                    turn.close()  # the reader stopped the answer or left: the service stores what was streamed
                    break
        except Exception as error:  # handed to the response, where an error of the turn always went
            arrived.put(_Failure(error))
        finally:
            close_old_connections()  # this thread serves other streams next: its main-database connection goes
            slot.release()  # also when the response was never read (its client left while it was being sent)
            arrived.put(_END)

    _stream_executor().submit(produce)

    async def events():
        loop = asyncio.get_running_loop()
        coalesce_seconds = settings.CHAT_STREAM_COALESCE_SECONDS
        tokens_written_at: float | None = None  # the first token is never held back
        try:
            finished = False
            while not finished:
                await arrived.wait()
                if tokens_written_at is not None and coalesce_seconds:
                    # Let the tokens that follow within the interval join these in one write.
                    await asyncio.sleep(max(0.0, tokens_written_at + coalesce_seconds - loop.time()))
                batch = []
                for event in arrived.take():
                    if event is _END:
                        finished = True
                        break
                    if isinstance(event, _Failure):
                        raise event.error
                    batch.append((event.kind, event.data))
                if batch:
                    if any(kind == "token" for kind, _ in batch):
                        tokens_written_at = loop.time()
                    yield server_sent_events(batch)
        finally:
            # The stream ended, failed or its client went away (the server cancels or closes this generator).
            stopped.set()
            await sync_to_async(slot.release, thread_sensitive=False)()

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    # A response dropped before it was read (its client left while the middleware handled it) stops the turn too.
    weakref.finalize(response, stopped.set)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


@login_required
@require_POST
def conversation_delete(request: AuthenticatedHttpRequest, conversation_id: str) -> HttpResponse:
    workspace = membership_current(request, Action.CHAT).workspace
    try:
        deleted = services.conversation_delete(request.user, conversation_id, workspace)
    except TenantDatabaseNotReady:
        deleted = False
    if not deleted:
        raise Http404("No such conversation")
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"deleted": conversation_id})
    messages.success(request, "Conversation deleted.")
    return redirect("chat")


@login_required
@require_POST
def conversation_share(request: AuthenticatedHttpRequest, conversation_id: str) -> HttpResponse:
    """Share a conversation with the workspace (or make it private again): its starter only."""
    workspace = membership_current(request, Action.CHAT).workspace
    shared = request.POST.get("shared", "1") == "1"
    try:
        changed = services.conversation_share(request.user, conversation_id, shared, workspace)
    except TenantDatabaseNotReady:
        changed = False
    if not changed:
        raise Http404("No such conversation")
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": conversation_id, "shared": shared})
    messages.success(request, "Conversation shared with the workspace." if shared else "Conversation made private.")
    return redirect(f"{reverse('chat')}?c={conversation_id}")
