"""The RAG service: for each turn, find what the person means in the tenant's own database, then answer from it.

Retrieval per turn: a question that stands on its own is searched alone, so a new topic never drags the old one
along. A follow-up ("what does it return if that fails?") needs the conversation: with a chat model, the model
rewrites question and history into a standalone question (the history-aware retriever pattern); without one, a
question that refers back is searched alone and with the previous exchange, and the search whose closest passage is
clearly closer wins (both are fused when neither is).

Honest answers: when even the closest passage is less similar to the question than RETRIEVAL_RELEVANCE_FLOOR, the
answer says nothing was found (`found: false`) and cites nothing. With a chat model the answer is generated from the
numbered passages, cited inline as [n]; without one, it quotes the sentences that answer (chat.answers), each with its
[n] marker, and the citations carry the quoted text.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import psycopg
from django.conf import settings
from django.core.exceptions import PermissionDenied

from chat import answers
from documents.models import Document
from documents.selectors import document_get_for_user, documents_for_user
from tenants import usage
from tenants.models import Membership, Workspace
from tenants.open_streams import OpenStream, workspace_stream_open
from tenants.permissions import (
    Action,
    WorkspaceNotFound,
    membership_require,
    membership_still_allows,
)
from tenants.plans import LimitReached
from tenants.services import TenantDatabaseNotReady, tenant_target, tenant_target_for_writing
from vectordb import conversations
from vectordb.connections import ConnectionCapacityExhausted, TenantTarget, get_registry
from vectordb.embeddings import get_embedder
from vectordb.search import SearchHit, distinct_passages, hybrid_search, reciprocal_rank_fusion, vector_search

logger = logging.getLogger(__name__)

NOT_FOUND_ANSWER = (
    "I couldn't find this in your documents. Try the words your documents would use, or upload a document that "
    "covers it."
)
# The last line of an answer the reader stopped (the stop button, or the page closed while it streamed).
STOPPED_MARK = "*Stopped.*"
NO_DOCUMENTS_ANSWER = "None of your documents is ready yet: upload a PDF, and ask again once it shows “Ready”."
SYSTEM_PROMPT = (
    "You are Silo, an assistant that answers questions about the user's documents using only the numbered sources "
    "below.\n"
    "- Right after each statement taken from a source, put that source's number in square brackets, like [1] or "
    "[2][3]. Use only the numbers of the sources below.\n"
    "- If the sources do not contain the answer, say in one sentence that you don't know because the documents do "
    "not say; never guess and never use outside knowledge.\n"
    "- Answer in Markdown, briefly.\n\nSources:\n{sources}"
)
STANDALONE_QUESTION_PROMPT = (
    "Given the conversation so far and the user's latest question, which may refer to it, write a standalone "
    "question that can be understood without the conversation. Do not answer it. If the latest question already "
    "stands on its own or changes the subject, return it unchanged. Reply with the question only."
)
STANDALONE_QUESTION_MAX_TOKENS = 200
# A follow-up's contextual search wins when its closest passage is this much more similar than the question's own
# (and loses when it is this much less); in between, both rankings are fused. On the dev set, true follow-ups gained
# 0.08-0.33 and topic switches lost 0.02-0.18 (bench/conversation.py).
CONTEXT_MARGIN = 0.05
# Passages fetched beyond k: room for copies that distinct_passages removes and for reranking.
EXTRA_CANDIDATES = 5
# Words that point back into the conversation ("does *it*...", "*that* function", "*there*"), and openings of
# elliptical follow-ups ("and the second?", "what about OT2?").
_REFERS_BACK = re.compile(
    r"\b(it|its|itself|they|them|their|this|that|these|those|there|such|he|him|his|she|her|former|latter|same|"
    r"one|ones|other|else)\b|^\s*(and|or|but|also|so|then|what about|how about)\b",
    re.IGNORECASE,
)
# A question of at most this many content words cannot stand alone ("Why?", "Examples?").
_SHORT_QUESTION_WORDS = 1
# Names a document defines: a TeX command, a word with digits (OT1, asn1Parser), snake_case. Found verbatim in a
# passage, such a name makes it relevant whatever the embedding says (it ranks a bare name low: "T1 and OT1?").
_IDENTIFIER = re.compile(r"\\[A-Za-z@]+|\b(?=\w*[A-Za-z])(?=\w*\d)\w+\b|\b[A-Za-z]\w*_\w+\b")
# Earlier questions a follow-up's contextual search may take along. Earlier answers are left out: a quote from the
# wrong passage would drag the search to it (on the dev set, adding them cost follow-ups 0.22 of recall@5).
CONTEXT_QUESTIONS = 2


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
    quote: str = ""  # the span of `text` the answer quotes, verbatim ("" when the answer quotes none of it)
    # Where the passage is in a document without pages ("Slide 3", "Sheet “Sales”, rows 2-41", a heading path): the
    # viewer shows such a source as text, unit `page` highlighted. "" for PDFs, cited by page.
    location: str = ""
    ocr: bool = False  # read by OCR from a scanned page


@dataclass(frozen=True)
class Exchange:
    """One earlier turn: what was asked and what was answered."""

    question: str
    answer: str = ""
    found: bool = True


@dataclass(frozen=True)
class Retrieval:
    """What a turn found: the passages to cite (empty when not found) and how they were searched."""

    query: str  # what was searched: the question, its contextual form, or the model's standalone question
    strategy: str  # question | contextual | fused | standalone
    found: bool
    relevance: float | None  # cosine similarity of the closest passage; None when nothing was searched
    citations: list[Citation] = field(default_factory=list)
    no_documents: bool = False


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


# --- which question to search for --------------------------------------------------------------------------------------


def refers_back(question: str) -> bool:
    """Whether the question may lean on the conversation: a pronoun or demonstrative that may point back, an
    elliptical opening, or too few words to stand alone. Only a hint: the search scores decide (`search_choice`)."""
    return bool(_REFERS_BACK.search(question)) or len(answers.content_words(question)) <= _SHORT_QUESTION_WORDS


def contextual_query(question: str, history: Sequence[Exchange]) -> str:
    """The question with the earlier questions it may lean on: the previous one, and the one before that when the
    previous question itself referred back ("Who designed it?" after "Which language is OT4 for?")."""
    parts = [question]
    for exchange in reversed(history[-CONTEXT_QUESTIONS:]):
        parts.append(exchange.question)
        if not refers_back(exchange.question):
            break
    return "\n".join(parts)


def search_choice(question_relevance: float | None, contextual_relevance: float | None) -> str:
    """question | contextual | fused: which search answers a question that may refer back, by how similar each
    search's closest passage is."""
    if contextual_relevance is None:
        return "question"
    if question_relevance is None:
        return "contextual"
    if contextual_relevance - question_relevance > CONTEXT_MARGIN:
        return "contextual"
    if question_relevance - contextual_relevance > CONTEXT_MARGIN:
        return "question"
    return "fused"


def standalone_question(question: str, history: Sequence[Exchange], workspace_id: int | None = None) -> str | None:
    """The chat model's rewrite of a follow-up as a standalone question; None when the model fails or answers
    something that is not a question of sensible length (the caller then decides without it). The tokens the model
    reports using count against `workspace_id`'s monthly allowance: the rewrite is on the operator's bill too."""
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

    messages: list[BaseMessage] = [SystemMessage(STANDALONE_QUESTION_PROMPT)]
    for exchange in _recent(history):
        messages += [HumanMessage(exchange.question), AIMessage(exchange.answer)]
    messages.append(HumanMessage(question))
    try:
        reply = chat_model(streaming=False, max_tokens=STANDALONE_QUESTION_MAX_TOKENS).invoke(messages)
    except _model_errors() as error:
        logger.warning("chat model could not rewrite a follow-up: %s", type(error).__name__)
        return None
    if workspace_id is not None and reply.usage_metadata:
        usage.tokens_record(workspace_id, int(reply.usage_metadata.get("total_tokens") or 0))
    rewritten = " ".join(str(reply.content or "").split())
    if not rewritten or len(rewritten) > 2 * len(question) + 500:
        return None
    return rewritten


def _recent(history: Sequence[Exchange]) -> Sequence[Exchange]:
    exchanges = settings.CHAT_HISTORY_MESSAGES // 2
    return history[-exchanges:] if exchanges else []


# --- retrieval -----------------------------------------------------------------------------------------------------------


def _ready_titles(
    user, document_id: int | None, workspace: Workspace, membership: Membership | None = None
) -> dict[int, str]:
    # The titles come with the ids (one query of the main database rather than a second one after the search).
    if document_id is not None:
        document = document_get_for_user(user, document_id, workspace, membership=membership)
        return {document.id: document.title} if document.status == Document.Status.READY else {}
    ready = documents_for_user(user, workspace, membership).filter(status=Document.Status.READY)
    return dict(ready.values_list("id", "title"))


def _search(connection, embedding, query: str, document_ids: list[int], k: int, hybrid: bool) -> list[SearchHit]:
    if hybrid:
        # The fusion's candidate lists as for k alone (more candidates reorder the fused ranking), a few more kept.
        hits = hybrid_search(
            connection, embedding, query, document_ids, k + EXTRA_CANDIDATES, candidates=max(20, 4 * k)
        )
    else:
        hits = vector_search(connection, embedding, document_ids, k + EXTRA_CANDIDATES)
    hits = distinct_passages(hits)
    # Tables of contents and indexes name a topic without saying anything about it: after every passage that does.
    navigation = [answers.is_navigation(hit.content) for hit in hits]
    return [hit for hit, is_navigation in zip(hits, navigation, strict=True) if not is_navigation] + [
        hit for hit, is_navigation in zip(hits, navigation, strict=True) if is_navigation
    ]


def identifiers(text: str) -> set[str]:
    """The names in a question that a document would define (see _IDENTIFIER)."""
    return set(_IDENTIFIER.findall(text))


def _names_found(question: str, hits: Sequence[SearchHit]) -> bool:
    names = identifiers(question)
    return any(re.search(rf"(?<![\w\\]){re.escape(name)}(?!\w)", hit.content) for name in names for hit in hits)


def _relevance(hits: Sequence[SearchHit]) -> float | None:
    similarities = [hit.similarity for hit in hits if hit.similarity is not None]
    return max(similarities) if similarities else None


def _citations(hits: Sequence[SearchHit], titles: dict[int, str], quotes: dict[int, str] | None = None) -> list:
    quotes = quotes or {}
    return [
        Citation(
            number=number,
            document_id=hit.document_id,
            title=titles.get(hit.document_id, "Untitled document"),
            page=hit.first_page,
            page_end=hit.last_page,
            score=round(hit.score, 4),
            text=hit.content,
            quote=quotes.get(number - 1, ""),
            location=str(hit.metadata.get("location") or ""),
            ocr=bool(hit.metadata.get("ocr")),
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
    workspace: Workspace | None = None,
) -> list[Citation]:
    """The k best passages for the query among the workspace's ready documents (or one of them), in rank order,
    without a relevance floor or reranking: the plain search, as `make bench` measures it. `workspace` defaults to
    the user's personal one.

    `target`: the workspace's tenant target when the caller already has it (a chat turn), saving a registry lookup."""
    k = k or settings.RETRIEVAL_K
    hybrid = settings.RETRIEVAL_HYBRID if hybrid is None else hybrid
    workspace = workspace or Workspace.objects.personal_for(user)
    titles = _ready_titles(user, document_id, workspace)
    if not titles:
        return []
    target = target or tenant_target(workspace)
    query_embedding = get_embedder().embed_query(query)
    with get_registry().connection(target) as connection:
        hits = _search(connection, query_embedding, query, list(titles), k, hybrid)
    return _citations(hits[:k], titles)


def passages_for_turn(
    user,
    question: str,
    history: Sequence[Exchange] = (),
    document_id: int | None = None,
    k: int | None = None,
    hybrid: bool | None = None,
    target: TenantTarget | None = None,
    with_model: bool | None = None,
    rerank: bool | None = None,
    workspace: Workspace | None = None,
    membership: Membership | None = None,
    question_embedding: Future[list[float]] | None = None,
) -> Retrieval:
    """What this turn means and the passages that answer it, over the user's ready documents (or one of them).

    `with_model`: whether a chat model answers (default: OPENAI_API_KEY is set); it rewrites follow-ups. `rerank`:
    read the first RETRIEVAL_RERANK_CANDIDATES passages sentence by sentence, reorder them and pick the quotes
    (default: when there is no chat model, whose answer reads every passage anyway). `membership`: the person's,
    just checked by the caller (a chat turn), not read again. `question_embedding`: the question's embedding being
    computed meanwhile (question_embedding_start), used when the question itself is searched."""
    k = k or settings.RETRIEVAL_K
    hybrid = settings.RETRIEVAL_HYBRID if hybrid is None else hybrid
    with_model = bool(settings.OPENAI_API_KEY) if with_model is None else with_model
    rerank = (not with_model) if rerank is None else rerank
    workspace = workspace or Workspace.objects.personal_for(user)
    titles = _ready_titles(user, document_id, workspace, membership)
    if not titles:
        return Retrieval(query=question, strategy="question", found=False, relevance=None, no_documents=True)
    target = target or tenant_target(workspace)
    embedder = get_embedder()
    strategy, queries = "question", [question]
    if history and with_model:
        rewritten = standalone_question(question, history, workspace.id)
        if rewritten is not None:
            strategy, queries = "standalone", [rewritten]
    if strategy == "question" and history and refers_back(question):
        queries.append(contextual_query(question, history))
    embeddings = [
        question_embedding.result()
        if question_embedding is not None and query == question
        else embedder.embed_query(query)
        for query in queries
    ]
    depth = max(k, settings.RETRIEVAL_RERANK_CANDIDATES if rerank else 0)
    with get_registry().connection(target) as connection:
        rankings = [
            _search(connection, embedding, query, list(titles), depth, hybrid)
            for query, embedding in zip(queries, embeddings, strict=True)
        ]
    hits, query, embedding = rankings[0], queries[0], embeddings[0]
    if len(rankings) == 2:
        strategy = search_choice(_relevance(rankings[0]), _relevance(rankings[1]))
        if strategy == "contextual":
            hits, query, embedding = rankings[1], queries[1], embeddings[1]
        elif strategy == "fused":  # the quotes are still chosen for the question itself
            hits = reciprocal_rank_fusion(rankings, depth + EXTRA_CANDIDATES)
    relevance = _relevance(hits)
    relevance = None if relevance is None else round(relevance, 4)
    found = relevance is not None and (relevance >= settings.RETRIEVAL_RELEVANCE_FLOOR or _names_found(question, hits))
    if not found:
        return Retrieval(query=query, strategy=strategy, found=False, relevance=relevance)
    quotes: dict[int, str] = {}
    if rerank and settings.RETRIEVAL_RERANK_CANDIDATES:
        hits, quotes = _rerank_and_quote(query, embedding, hits, embedder)
        if not quotes:  # only tables of contents, indexes or fragments came close: nothing says it
            return Retrieval(query=query, strategy=strategy, found=False, relevance=relevance)
    return Retrieval(
        query=query,
        strategy=strategy,
        found=True,
        relevance=relevance,
        citations=_citations(hits[:k], titles, quotes),
    )


def _rerank_and_quote(query: str, embedding, hits: list[SearchHit], embedder) -> tuple[list[SearchHit], dict]:
    """The first candidates reordered by their best sentence window, and the windows the answer quotes
    ({position in the new order: verbatim text})."""
    candidates = hits[: settings.RETRIEVAL_RERANK_CANDIDATES]
    texts = [hit.content for hit in candidates]
    scored = answers.windows_score(query, embedding, texts, embedder)
    order = answers.passage_order(len(candidates), scored)
    position = {passage: new for new, passage in enumerate(order)}
    quoted = answers.quotes_select(scored, settings.CHAT_EXTRACTIVE_ANSWER_CHARS)
    quotes = {position[window.passage]: texts[window.passage][window.start : window.end] for window in quoted}
    return [candidates[passage] for passage in order] + hits[len(candidates) :], quotes


# --- answers -------------------------------------------------------------------------------------------------------


def extractive_answer(citations: Sequence[Citation]) -> str:
    """The quoted sentences, best first, each with its citation marker: Markdown blockquotes."""
    quoted = [citation for citation in citations if citation.quote]
    quoted.sort(key=lambda citation: citation.number)
    return "\n\n".join(answers.quote_markdown(citation.quote, citation.number) for citation in quoted)


def _pieces(text: str) -> Iterator[str]:
    """Small pieces of a prepared answer, streamed like a model's tokens."""
    yield from re.findall(r"\S+\s*|\s+", text)


def _where(citation: Citation) -> str:
    """Where a passage is, as a person would say it: the page(s) of a PDF, or the location in other formats."""
    if citation.location:
        return citation.location
    if citation.page == citation.page_end:
        return f"page {citation.page}"
    return f"page {citation.page}-{citation.page_end}"


def _prompt_messages(question: str, citations: Sequence[Citation], history: Sequence[Exchange]) -> list[dict]:
    """The chat completion's messages, as the OpenAI API takes them: the sources in the system prompt, the recent
    conversation, then the question."""
    sources = "\n\n".join(f"[{c.number}] {c.title}, {_where(c)}:\n{c.text}" for c in citations)
    messages = [{"role": "system", "content": SYSTEM_PROMPT.format(sources=sources or "(no passages found)")}]
    for exchange in _recent(history):
        messages += [{"role": "user", "content": exchange.question}, {"role": "assistant", "content": exchange.answer}]
    messages.append({"role": "user", "content": question})
    return messages


def chat_model(streaming: bool = True, max_tokens: int | None = None):
    return _chat_model(
        settings.CHAT_MODEL,
        settings.OPENAI_API_KEY,
        settings.OPENAI_BASE_URL or None,
        settings.CHAT_REQUEST_TIMEOUT_SECONDS,
        streaming,
        max_tokens,
    )


@functools.lru_cache(maxsize=16)
def _chat_model(
    model: str, api_key: str, base_url: str | None, timeout: float, streaming: bool, max_tokens: int | None
):
    """One client per configuration, kept: building one costs milliseconds a turn, and a kept one reuses its
    connections to the model's server (thread-safe: each call is its own request)."""
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    return ChatOpenAI(
        model=model,
        temperature=0,
        api_key=SecretStr(api_key),
        base_url=base_url,
        timeout=timeout,
        max_retries=2,
        streaming=streaming,
        stream_usage=True,  # the last streamed chunk reports the tokens used: metered per workspace
        max_tokens=max_tokens,  # type: ignore[call-arg]  # a field of ChatOpenAI the stubs know by its alias
    )


@functools.lru_cache(maxsize=16)
def _openai_client(api_key: str, base_url: str | None, timeout: float):
    """One OpenAI client per configuration, kept (thread-safe; it reuses its connections to the model's server)."""
    import openai

    return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=2)


def model_answer(
    question: str, citations: Sequence[Citation], history: Sequence[Exchange], meter: dict | None = None
) -> Iterator[str]:
    """The model's answer in pieces; `meter["tokens"]` gets the total the model reports using.

    The OpenAI client sends the request (its retries, timeouts and errors), and each streamed chunk is read as the
    JSON it is: LangChain's stream built a message, a generation and callback events for every chunk, and pydantic
    objects per chunk in the client cost half as much again (0.69 ms of CPU a token through LangChain, 0.43 through
    the client's parsed stream, 0.09 this way: most of a busy server's CPU for a 200-token answer)."""
    import httpx2  # the OpenAI client's HTTP library
    import openai

    client = _openai_client(
        settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL or None, settings.CHAT_REQUEST_TIMEOUT_SECONDS
    )
    with client.chat.completions.with_streaming_response.create(
        model=settings.CHAT_MODEL,
        messages=_prompt_messages(question, citations, history),
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},  # the last chunk reports the tokens used: metered per workspace
    ) as response:
        try:
            yield from _answer_pieces(response.iter_lines(), response.http_request, meter)
        except httpx2.RequestError as error:  # the connection dropped or timed out mid-answer: as the client says it
            raise openai.APIConnectionError(request=response.http_request) from error


def _answer_pieces(lines: Iterator[str], request, meter: dict | None) -> Iterator[str]:
    """The content of each chunk of a chat completion's event stream; the usage report goes to `meter`."""
    import openai

    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if chunk.get("error"):  # an error reported inside a stream that had begun
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise openai.APIError(message or "error in the model's stream", request, body=error)
        usage_report = chunk.get("usage")
        if usage_report and meter is not None:
            meter["tokens"] = meter.get("tokens", 0) + int(usage_report.get("total_tokens") or 0)
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield content


def answer_stream(
    question: str, retrieval: Retrieval, history: Sequence[Exchange] = (), meter: dict | None = None
) -> Iterator[str]:
    """The answer in pieces: "not found", the model's answer, or the quoted sentences."""
    if retrieval.no_documents:
        return _pieces(NO_DOCUMENTS_ANSWER)
    if not retrieval.found:
        return _pieces(NOT_FOUND_ANSWER)
    if settings.OPENAI_API_KEY:
        return model_answer(question, retrieval.citations, history, meter)
    return _pieces(extractive_answer(retrieval.citations))


def history_from_messages(messages: Sequence[conversations.MessageRecord]) -> list[Exchange]:
    """Stored messages as exchanges: each user message with the assistant message that answered it."""
    history: list[Exchange] = []
    for message in messages:
        if message.role == "user":
            history.append(Exchange(question=message.content))
        elif history and message.role == "assistant":
            history[-1] = replace(history[-1], answer=message.content, found=bool(message.citations))
    return history


# --- a chat turn -----------------------------------------------------------------------------------------------------


def _model_errors() -> tuple[type[BaseException], ...]:
    import httpx
    import openai

    return (openai.APIError, httpx.HTTPError)


ACCESS_LOST_MESSAGE = "You no longer have access to this workspace, so the answer stopped here."
NOT_YOURS_MESSAGE = "This conversation was shared by another member: start a new one to ask your own questions."


class _AccessLost(Exception):
    """The person was removed from the workspace (or lost the role to chat) while their answer streamed."""


def _still_allowed(user, workspace: Workspace) -> Callable[..., None]:
    """A check a streaming answer calls between pieces: at most every CHAT_ACCESS_RECHECK_SECONDS it asks the main
    database whether the person may still chat there, and raises _AccessLost as soon as they may not."""
    checked_at = time.monotonic()

    def check(force: bool = False) -> None:
        nonlocal checked_at
        if not force and time.monotonic() - checked_at < settings.CHAT_ACCESS_RECHECK_SECONDS:
            return
        checked_at = time.monotonic()
        if not membership_still_allows(user.id, workspace.id, Action.CHAT):
            raise _AccessLost()

    return check


def chat_turn(
    user,
    question: str,
    conversation_id: str | None = None,
    document_id: int | None = None,
    workspace: Workspace | None = None,
    membership: Membership | None = None,
    question_embedding: Future[list[float]] | None = None,
) -> Generator[ChatEvent, None, None]:
    """One question and its streamed answer, stored in the workspace's database (default: the user's personal one).
    Never raises for expected failures: they end the stream with an `error` event the user can read. A person removed
    from the workspace while the answer streams loses it at once: the stream ends with an error, nothing more is
    stored. A reader who stops the answer keeps what was streamed so far in the conversation, marked as stopped.

    `membership`: the person's membership of the workspace, read by the request a moment ago (not read again).
    `question_embedding`: the question's embedding, already being computed (question_embedding_start); by default
    the turn starts it itself once the question is admitted, so that it is computed while the turn is stored."""
    counted = answered = False  # the question is counted against the day's allowance; the answer is stored
    meter: dict = {}
    stream: OpenStream | None = None
    try:
        question = question_validate(question)
        workspace = workspace or Workspace.objects.personal_for(user)
        membership = membership_require(user, workspace, Action.CHAT, checked=membership)
        stream = workspace_stream_open(workspace.id)  # first: a restore or move marked after this waits for it
        # The turn is stored: not while a restore or move runs (WorkspaceMoving), read with the database's address.
        target = tenant_target_for_writing(workspace)
        usage.question_admit(workspace)  # refused (with the limit and when it resets) before any work
        counted = True
        if question_embedding is None and searches_question_itself(conversation_id):
            question_embedding = question_embedding_start(question)
        is_owner = workspace.owner_id == user.id
        if document_id is not None:
            # 404 for another workspace's document
            document_get_for_user(user, document_id, workspace, membership=membership)
        allowed = _still_allowed(user, workspace)
        registry = get_registry()
        with registry.connection(target) as connection:
            conversation = conversations.conversation_get(connection, conversation_id) if conversation_id else None
            if conversation is not None and not conversation.visible_to(user.id, is_owner):
                conversation = None  # another member's private conversation: it does not exist for this person
            if conversation_id and conversation is None:
                yield ChatEvent("error", {"message": "That conversation no longer exists."})
                return
            if conversation is not None and not conversation.started_by_person(user.id, is_owner):
                yield ChatEvent("error", {"message": NOT_YOURS_MESSAGE})
                return
            if conversation is None:
                conversation = conversations.conversation_create(connection, _title(question), document_id, user.id)
            history = conversations.messages_list(connection, conversation.id)
            conversations.message_add(connection, conversation.id, "user", question)
        answer: list[str] = []
        citations: list[dict] = []
        try:
            yield ChatEvent("conversation", {"id": str(conversation.id), "title": conversation.title})
            exchanges = history_from_messages(history)
            retrieval = passages_for_turn(
                user,
                question,
                exchanges,
                conversation.document_id,
                target=target,
                workspace=workspace,
                membership=membership,
                question_embedding=question_embedding,
            )
            allowed()
            citations = [asdict(citation) for citation in retrieval.citations]
            yield ChatEvent("sources", {"citations": citations})
            pieces = answer_stream(question, retrieval, exchanges, meter)
            try:
                for piece in pieces:
                    allowed()
                    answer.append(piece)
                    yield ChatEvent("token", {"text": piece})
                allowed(force=True)
            except _model_errors() as error:
                logger.warning("chat model failed mid-answer: %s", type(error).__name__)
                partial = "".join(answer)
                message = "The language model stopped responding before the answer was complete. Please try again."
                with registry.connection(target) as connection:
                    conversations.message_add(connection, conversation.id, "assistant", partial, citations)
                answered = True
                _tokens_record(workspace, meter, question, partial)
                yield ChatEvent("error", {"message": message})
                return
            finally:
                _close(pieces)  # a model's stream is a connection: closed now, not when collected
            with registry.connection(target) as connection:
                conversations.message_add(connection, conversation.id, "assistant", "".join(answer), citations)
            answered = True
            _tokens_record(workspace, meter, question, "".join(answer))
            stream.close()
            yield ChatEvent("done", {"extractive": not settings.OPENAI_API_KEY, "found": retrieval.found})
        except GeneratorExit:
            # The reader stopped the answer (stop button, closed tab: the view closes this generator). What was
            # streamed so far stays in the conversation, marked as stopped, so that a reload shows what they saw.
            if not answered:
                _answer_store_stopped(target, conversation.id, "".join(answer), citations)
                _tokens_record(workspace, meter, question, "".join(answer))
            raise
    except QuestionRejected as error:
        yield ChatEvent("error", {"message": str(error)})
    except LimitReached as error:
        yield ChatEvent("error", {"message": str(error), "limit": error.limit})
    except (_AccessLost, WorkspaceNotFound):
        yield ChatEvent("error", {"message": ACCESS_LOST_MESSAGE})
    except PermissionDenied as error:
        yield ChatEvent("error", {"message": str(error)})
    except TenantDatabaseNotReady as error:
        _question_refund(workspace, counted, answered)
        message = (
            "Your database is still being set up; try again in a moment."
            if error.status in {"pending", "provisioning"}
            else "Your database is not available. Check its status on the dashboard."
        )
        yield ChatEvent("error", {"message": message})
    except (psycopg.OperationalError, ConnectionCapacityExhausted) as error:
        logger.warning("tenant database unreachable during chat: %s", type(error).__name__)
        _question_refund(workspace, counted, answered)
        yield ChatEvent("error", {"message": "Your database cannot be reached right now. Please try again shortly."})
    finally:
        if stream is not None:
            stream.close()


def searches_question_itself(conversation_id: str | None) -> bool:
    """Whether the turn will search for the question as asked: not when a chat model rewrites a follow-up first."""
    return not (conversation_id and settings.OPENAI_API_KEY)


@functools.lru_cache(maxsize=1)
def _embedding_executor() -> ThreadPoolExecutor:
    # The embedder computes one question at a time (its own lock): a few threads only queue questions for it.
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="question-embedding")


def question_embedding_start(question: str) -> Future[list[float]]:
    """The question's embedding, computed in the background (about 15 ms of CPU with the local model) while the turn
    is checked and stored; passages_for_turn waits for it. Start it only once the question is admitted."""
    return _embedding_executor().submit(_question_embed, question)


def _question_embed(question: str) -> list[float]:
    return get_embedder().embed_query(question)


def _tokens_record(workspace: Workspace, meter: dict, question: str, answer: str) -> None:
    """The model's own count when it reported one; else (extractive mode) an estimate from the text."""
    usage.tokens_record(workspace.id, meter.get("tokens") or usage.tokens_estimate(question, answer))


def _question_refund(workspace: Workspace | None, counted: bool, answered: bool) -> None:
    if counted and not answered and workspace is not None:
        usage.question_refund(workspace.id)


def answer_stopped(partial: str) -> str:
    """A stopped answer as stored: the text streamed before the stop, then STOPPED_MARK on a line of its own."""
    partial = partial.rstrip()
    return f"{partial}\n\n{STOPPED_MARK}" if partial else STOPPED_MARK


def answer_split_stopped(content: str) -> tuple[str, bool]:
    """A stored answer's text without the stop mark, and whether the reader stopped it."""
    if content == STOPPED_MARK:
        return "", True
    if content.endswith(f"\n\n{STOPPED_MARK}"):
        return content[: -len(STOPPED_MARK) - 2], True
    return content, False


def _answer_store_stopped(target: TenantTarget, conversation_id, partial: str, citations: list[dict]) -> None:
    try:
        with get_registry().connection(target) as connection:
            conversations.message_add(connection, conversation_id, "assistant", answer_stopped(partial), citations)
    except (psycopg.Error, ConnectionCapacityExhausted) as error:
        # Nobody is listening any more: the question stays stored, the partial answer is lost; say why in the log.
        logger.warning("a stopped answer could not be stored: %s", type(error).__name__)


def _close(pieces: Iterator[str]) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()


def _title(question: str) -> str:
    title = re.sub(r"\s+", " ", question).strip()
    return title if len(title) <= 80 else title[:80].rsplit(" ", 1)[0] + "…"


# --- conversations -----------------------------------------------------------------------------------------------------


def _member_workspace(user, workspace: Workspace | None) -> Workspace:
    workspace = workspace or Workspace.objects.personal_for(user)
    membership_require(user, workspace, Action.CHAT)
    return workspace


def conversations_for_user(
    user, document_id: int | None = None, workspace: Workspace | None = None
) -> list[conversations.ConversationRecord]:
    """The person's own conversations in the workspace and those other members shared."""
    workspace = _member_workspace(user, workspace)
    with get_registry().connection(tenant_target(workspace)) as connection:
        return conversations.conversations_list(
            connection, document_id, visible_to=user.id, workspace_owner=workspace.owner_id == user.id
        )


def _own_conversation(connection, user, workspace: Workspace, conversation_id: str, own: bool):
    """The conversation if the person may see it (`own`: and started it), else None."""
    conversation = conversations.conversation_get(connection, conversation_id)
    is_owner = workspace.owner_id == user.id
    if conversation is None or not conversation.visible_to(user.id, is_owner):
        return None
    if own and not conversation.started_by_person(user.id, is_owner):
        return None
    return conversation


def conversation_with_messages(
    user, conversation_id: str, workspace: Workspace | None = None
) -> tuple[conversations.ConversationRecord, list[conversations.MessageRecord]] | None:
    workspace = _member_workspace(user, workspace)
    with get_registry().connection(tenant_target(workspace)) as connection:
        conversation = _own_conversation(connection, user, workspace, conversation_id, own=False)
        if conversation is None:
            return None
        return conversation, conversations.messages_list(connection, conversation.id)


def conversation_delete(user, conversation_id: str, workspace: Workspace | None = None) -> bool:
    """Only the person who started a conversation deletes it."""
    workspace = _member_workspace(user, workspace)
    with get_registry().connection(tenant_target(workspace)) as connection:
        conversation = _own_conversation(connection, user, workspace, conversation_id, own=True)
        return conversation is not None and conversations.conversation_delete(connection, conversation.id)


def conversation_share(user, conversation_id: str, shared: bool, workspace: Workspace | None = None) -> bool:
    """Share a conversation with the workspace's members (or make it private again); only its starter may."""
    workspace = _member_workspace(user, workspace)
    with get_registry().connection(tenant_target(workspace)) as connection:
        conversation = _own_conversation(connection, user, workspace, conversation_id, own=True)
        if conversation is None:
            return False
        conversations.conversation_share(connection, conversation.id, shared)
        return True
