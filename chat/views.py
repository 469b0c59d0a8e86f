import json
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import close_old_connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from chat import selectors, services
from documents.models import Document
from documents.selectors import document_get_for_user, documents_for_user
from tenants.services import TenantDatabaseNotReady

_END = object()


@lru_cache(maxsize=1)
def _stream_executor() -> ThreadPoolExecutor:
    # Most of a streamed answer is waiting on the model: threads, not cores, bound concurrent streams.
    return ThreadPoolExecutor(max_workers=settings.CHAT_STREAM_THREADS, thread_name_prefix="chat-stream")


def _chat_page(request: HttpRequest, document: Document | None) -> HttpResponse:
    conversation_id = request.GET.get("c") or ""
    context: dict[str, Any] = {
        "document": document, "conversations": [], "conversation": None, "history": [], "unavailable": "",
    }  # fmt: skip
    titles = selectors.document_titles_for_user(request.user)
    try:
        conversations = services.conversations_for_user(request.user, document.id if document else None)
        context["conversations"] = [selectors.conversation_listing(item, titles) for item in conversations]
        if conversation_id:
            found = services.conversation_with_messages(request.user, conversation_id)
            if found is None or (document and found[0].document_id != document.id):
                raise Http404("No such conversation")
            context["conversation"] = selectors.conversation_listing(found[0], titles)
            context["history"] = [selectors.message_for_display(message, titles) for message in found[1]]
    except TenantDatabaseNotReady:
        context["unavailable"] = "Your database is still being set up. Chat opens as soon as it is ready."
    ready_documents = documents_for_user(request.user).filter(status=Document.Status.READY)
    context["ready_document_count"] = ready_documents.count()
    context["has_ready_documents"] = bool(context["ready_document_count"])
    if document is not None:
        context["has_ready_documents"] = document.status == Document.Status.READY
    if not context["history"] and not context["unavailable"] and context["has_ready_documents"]:
        context["starter_questions"] = selectors.starter_questions_for_user(
            request.user, document.id if document else None
        )
    context["max_question_chars"] = settings.CHAT_MAX_QUESTION_CHARS
    return render(request, "chat/chat.html", context)


@login_required
@require_GET
def chat_all(request: HttpRequest) -> HttpResponse:
    """Chat across every ready document of the tenant."""
    return _chat_page(request, None)


@login_required
@require_GET
def document_chat(request: HttpRequest, document_id: int) -> HttpResponse:
    """One document: its PDF beside a chat limited to it."""
    return _chat_page(request, document_get_for_user(request.user, document_id))


def _server_sent_event(event: services.ChatEvent) -> str:
    return f"event: {event.kind}\ndata: {json.dumps(event.data)}\n\n"


@login_required
@require_POST
async def chat_stream(request: HttpRequest) -> StreamingHttpResponse:
    """One chat turn as server-sent events: conversation, sources, token..., then done or error."""
    user = await request.auser()
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
        await sync_to_async(document_get_for_user)(user, document_id)
    # The request's own main-database connection would otherwise stay checked out of the pool for the whole stream.
    await sync_to_async(close_old_connections)()
    turn = services.chat_turn(user, question, conversation_id=conversation_id, document_id=document_id)
    # A step may still be running in its thread when the reader goes away: closing waits for it.
    turn_lock = threading.Lock()

    def step():
        try:
            with turn_lock:
                return next(turn, _END)
        finally:
            # This thread serves other streams next: hand its main-database connection back now.
            close_old_connections()

    def stop():
        """The reader stopped the answer or left: the service stores what was streamed, marked as stopped."""
        try:
            with turn_lock:
                turn.close()
        finally:
            close_old_connections()

    # The service is synchronous (database, embedder, model client); each step runs in a thread of a pool sized for
    # concurrent streams, so the event loop keeps serving other streams meanwhile.
    next_event = sync_to_async(step, thread_sensitive=False, executor=_stream_executor())

    async def events():
        try:
            while (event := await next_event()) is not _END:
                yield _server_sent_event(event)
        finally:
            # On a disconnect Django cancels this stream; the turn is closed in a thread, without waiting here.
            _stream_executor().submit(stop)

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


@login_required
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: str) -> HttpResponse:
    try:
        deleted = services.conversation_delete(request.user, conversation_id)
    except TenantDatabaseNotReady:
        deleted = False
    if not deleted:
        raise Http404("No such conversation")
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"deleted": conversation_id})
    messages.success(request, "Conversation deleted.")
    return redirect("chat")
