"""The RAG service: retrieve passages from the tenant's own database, build a prompt, stream an answer.

With an OpenAI key the answer comes from the chat model (gpt-4o-mini by default) and cites sources by number;
without one it is an honest extractive answer: the best passages with their page citations, labelled as such.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import psycopg
from django.conf import settings

from documents.models import Document
from documents.selectors import document_get_for_user, documents_for_user
from tenants.services import TenantDatabaseNotReady, tenant_target
from vectordb import conversations
from vectordb.connections import ConnectionCapacityExhausted, TenantTarget, get_registry
from vectordb.embeddings import get_embedder
from vectordb.search import SearchHit, hybrid_search, vector_search

logger = logging.getLogger(__name__)

EXTRACTIVE_LABEL = "No language model is configured, so here are the passages that best match your question:"
SYSTEM_PROMPT = (
    "You are Silo, an assistant that answers questions about the user's documents. Use only the numbered sources "
    "below. Cite every claim with the source numbers in square brackets, like [1] or [2][3]. If the sources do not "
    "contain the answer, say that the documents do not say. Be concise.\n\nSources:\n{sources}"
)


class QuestionRejected(Exception):
    """A question the user must change (empty, too long); the message says how."""


@dataclass(frozen=True)
class Citation:
    number: int
    document_id: int
    title: str
    page: int
    page_end: int
    score: float
    text: str


@dataclass(frozen=True)
class ChatEvent:
    kind: str  # conversation | sources | token | error | done
    data: dict


def question_validate(question: str) -> str:
    question = (question or "").replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
    if not question:
        raise QuestionRejected("Type a question first.")
    if len(question) > settings.CHAT_MAX_QUESTION_CHARS:
        raise QuestionRejected(
            f"Your question is {len(question):,} characters long; Silo accepts up to "
            f"{settings.CHAT_MAX_QUESTION_CHARS:,}."
        )
    return question


def retrieval_query(question: str, earlier_questions: list[str]) -> str:
    """Follow-ups ("and what about the second one?") lean on earlier turns: retrieve with the recent questions too,
    the newest first so it dominates the embedding."""
    recent = [q for q in earlier_questions[-2:] if q.strip()]
    return "\n".join([question, *reversed(recent)])


def _citations(hits: list[SearchHit], titles: dict[int, str]) -> list[Citation]:
    return [
        Citation(
            number=number,
            document_id=hit.document_id,
            title=titles.get(hit.document_id, "Untitled document"),
            page=hit.first_page,
            page_end=hit.last_page,
            score=round(hit.score, 4),
            text=hit.content,
        )
        for number, hit in enumerate(hits, start=1)
    ]


def chunks_retrieve(
    user,
    query: str,
    document_id: int | None = None,
    k: int | None = None,
    hybrid: bool | None = None,
    target: TenantTarget | None = None,
) -> list[Citation]:
    """The k best passages for the query among the user's ready documents (or one of them), in rank order.

    `target`: the user's tenant target when the caller already has it (a chat turn), saving a registry lookup."""
    k = k or settings.RETRIEVAL_K
    hybrid = settings.RETRIEVAL_HYBRID if hybrid is None else hybrid
    # The titles come with the ids (one query of the main database rather than a second one after the search).
    if document_id is not None:
        document = document_get_for_user(user, document_id)
        titles = {document.id: document.title} if document.status == Document.Status.READY else {}
    else:
        titles = dict(documents_for_user(user).filter(status=Document.Status.READY).values_list("id", "title"))
    document_ids = list(titles)
    if not document_ids:
        return []
    target = target or tenant_target(user)
    query_embedding = get_embedder().embed_query(query)
    with get_registry().connection(target) as connection:
        if hybrid:
            hits = hybrid_search(connection, query_embedding, query, document_ids, k)
        else:
            hits = vector_search(connection, query_embedding, document_ids, k)
    return _citations(hits, titles)


# --- answers -------------------------------------------------------------------------------------------------------


def _excerpt(text: str, limit: int = 600) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def extractive_answer(citations: list[Citation], passages: int = 3) -> Iterator[str]:
    """The honest offline answer: the best passages, each with its citation. Streamed in small pieces."""
    if not citations:
        yield "I found nothing about that in your documents."
        return
    yield EXTRACTIVE_LABEL
    for citation in citations[:passages]:
        pages = (
            f"p. {citation.page}" if citation.page == citation.page_end else f"pp. {citation.page}–{citation.page_end}"
        )
        yield f"\n\n[{citation.number}] {citation.title}, {pages}:\n"
        yield from re.findall(r"\S+\s*", _excerpt(citation.text))


def _prompt_messages(question: str, citations: list[Citation], history: list[conversations.MessageRecord]) -> list:
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

    sources = "\n\n".join(
        f"[{c.number}] {c.title}, page {c.page}{'' if c.page == c.page_end else f'-{c.page_end}'}:\n{c.text}"
        for c in citations
    )
    messages: list[BaseMessage] = [SystemMessage(SYSTEM_PROMPT.format(sources=sources or "(no passages found)"))]
    for message in history[-settings.CHAT_HISTORY_MESSAGES :] if settings.CHAT_HISTORY_MESSAGES else []:
        messages.append(HumanMessage(message.content) if message.role == "user" else AIMessage(message.content))
    messages.append(HumanMessage(question))
    return messages


def chat_model():
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    return ChatOpenAI(
        model=settings.CHAT_MODEL,
        temperature=0,
        api_key=SecretStr(settings.OPENAI_API_KEY),
        base_url=settings.OPENAI_BASE_URL or None,
        timeout=settings.CHAT_REQUEST_TIMEOUT_SECONDS,
        max_retries=2,
        streaming=True,
    )


def model_answer(question: str, citations: list[Citation], history: list[conversations.MessageRecord]) -> Iterator[str]:
    for chunk in chat_model().stream(_prompt_messages(question, citations, history)):
        if chunk.content:
            yield chunk.content


def answer_stream(
    question: str, citations: list[Citation], history: list[conversations.MessageRecord]
) -> Iterator[str]:
    if settings.OPENAI_API_KEY:
        return model_answer(question, citations, history)
    return extractive_answer(citations)


# --- a chat turn -----------------------------------------------------------------------------------------------------


def _model_errors() -> tuple[type[BaseException], ...]:
    import httpx
    import openai

    return (openai.APIError, httpx.HTTPError)


def chat_turn(
    user, question: str, conversation_id: str | None = None, document_id: int | None = None
) -> Iterator[ChatEvent]:
    """One question and its streamed answer, stored in the tenant's database. Never raises for expected failures:
    they end the stream with an `error` event the user can read."""
    try:
        question = question_validate(question)
        if document_id is not None:
            document_get_for_user(user, document_id)  # 404 for someone else's document
        target = tenant_target(user)
        registry = get_registry()
        with registry.connection(target) as connection:
            conversation = conversations.conversation_get(connection, conversation_id) if conversation_id else None
            if conversation_id and conversation is None:
                yield ChatEvent("error", {"message": "That conversation no longer exists."})
                return
            if conversation is None:
                conversation = conversations.conversation_create(connection, _title(question), document_id)
            history = conversations.messages_list(connection, conversation.id)
            conversations.message_add(connection, conversation.id, "user", question)
        yield ChatEvent("conversation", {"id": str(conversation.id), "title": conversation.title})
        earlier = [message.content for message in history if message.role == "user"]
        citations = chunks_retrieve(user, retrieval_query(question, earlier), conversation.document_id, target=target)
        yield ChatEvent("sources", {"citations": [asdict(c) for c in citations]})
        answer = []
        try:
            for piece in answer_stream(question, citations, history):
                answer.append(piece)
                yield ChatEvent("token", {"text": piece})
        except _model_errors() as error:
            logger.warning("chat model failed mid-answer: %s", type(error).__name__)
            partial = "".join(answer)
            message = "The language model stopped responding before the answer was complete. Please try again."
            with registry.connection(target) as connection:
                conversations.message_add(
                    connection, conversation.id, "assistant", partial, [asdict(c) for c in citations]
                )
            yield ChatEvent("error", {"message": message})
            return
        with registry.connection(target) as connection:
            conversations.message_add(
                connection, conversation.id, "assistant", "".join(answer), [asdict(c) for c in citations]
            )
        yield ChatEvent("done", {"extractive": not settings.OPENAI_API_KEY})
    except QuestionRejected as error:
        yield ChatEvent("error", {"message": str(error)})
    except TenantDatabaseNotReady as error:
        message = (
            "Your database is still being set up; try again in a moment."
            if error.status in {"pending", "provisioning"}
            else "Your database is not available. Check its status on the dashboard."
        )
        yield ChatEvent("error", {"message": message})
    except (psycopg.OperationalError, ConnectionCapacityExhausted) as error:
        logger.warning("tenant database unreachable during chat: %s", type(error).__name__)
        yield ChatEvent("error", {"message": "Your database cannot be reached right now. Please try again shortly."})


def _title(question: str) -> str:
    title = re.sub(r"\s+", " ", question).strip()
    return title if len(title) <= 80 else title[:80].rsplit(" ", 1)[0] + "…"


# --- conversations -----------------------------------------------------------------------------------------------------


def conversations_for_user(user, document_id: int | None = None) -> list[conversations.ConversationRecord]:
    with get_registry().connection(tenant_target(user)) as connection:
        return conversations.conversations_list(connection, document_id)


def conversation_with_messages(
    user, conversation_id: str
) -> tuple[conversations.ConversationRecord, list[conversations.MessageRecord]] | None:
    with get_registry().connection(tenant_target(user)) as connection:
        conversation = conversations.conversation_get(connection, conversation_id)
        if conversation is None:
            return None
        return conversation, conversations.messages_list(connection, conversation.id)


def conversation_delete(user, conversation_id: str) -> bool:
    with get_registry().connection(tenant_target(user)) as connection:
        conversation = conversations.conversation_get(connection, conversation_id)
        return conversation is not None and conversations.conversation_delete(connection, conversation.id)
