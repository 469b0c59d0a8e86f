"""Conversations that answer: retrieval per turn, "not found", reranking and quoted answers on the dev set.

One tenant, the four eval PDFs ingested through the real pipeline, then, without a chat model (the keyless default):

- Single questions (qa.json): recall@1/3/5 of the turn's passages (`chat.services.passages_for_turn`: relevance
  floor, reranking, quotes) against today's plain hybrid search (`vectordb.search.hybrid_search`, the ranking chat
  used before reranking) in the same run; how often the keyless answer quotes the question's `evidence` (at least
  2/3 of its words, in order, in an answer of at most CHAT_EXTRACTIVE_ANSWER_CHARS); what reranking costs per
  question.
- Conversations (conversations.json): each conversation asked in order with its history, as chat does. recall@5 over
  answerable turns (a turn reported as not found is a miss), separately for first turns, follow-ups and topic
  switches; off-topic turns rejected; answerable turns wrongly reported as not found. For comparison, the same turns
  searched for the question alone and for today's pasted history (the question and the two before it).
- The relevance floor's trade-off: rejection and wrongly-not-found for a range of floors around the configured one,
  from the same turns' relevance figures.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from bench.framework import Target

EVAL_DIR = Path(os.environ.get("SILO_EVAL_DIR", "/work/shared/eval"))
TENANT_PREFIX = "conversation"
FLOOR_SWEEP = tuple(round(0.20 + 0.02 * step, 2) for step in range(11))  # 0.20 .. 0.40
EVIDENCE_SHARE = 2 / 3

TARGETS = [
    Target("recall_at_5_answerable", at_least=0.95, label="recall@5, answerable turns"),
    Target("recall_at_5_follow_up", at_least=0.90, label="recall@5, follow-ups"),
    Target("off_topic_rejected", at_least=0.90, label="off-topic turns rejected"),
    Target("answerable_not_found", at_most=0.05, label="answerable turns wrongly not found"),
    Target("single_recall_at_1", at_least=0.90, label="single questions recall@1 (reranked)"),
    Target("evidence_quoted", at_least=0.80, label="keyless answer quotes the evidence"),
]


def run(quick: bool) -> dict:
    """`quick` asks the same questions: the index must hold all four PDFs either way."""
    from bench.common import create_tenants, progress, remove_tenants, stopwatch
    from bench.quality import _ingest_eval_pdfs, _remove_documents
    from tenants import services as tenant_services

    remove_tenants(TENANT_PREFIX)
    (row,) = create_tenants(TENANT_PREFIX, 1)
    user = row.workspace.owner
    try:
        tenant_services.vector_database_provision(row.id)
        with stopwatch() as ingest_watch:
            filenames = _ingest_eval_pdfs(user)
        progress(f"ingested {len(filenames)} PDFs in {ingest_watch.seconds:.1f}s")
        result = evaluate(user, filenames)
        result["ingest_seconds"] = round(ingest_watch.seconds, 1)
        return result
    finally:
        _remove_documents(user)
        remove_tenants(TENANT_PREFIX)


def evaluate(user, filenames: dict[int, str]) -> dict:
    """Every figure, for a user whose ready documents are the eval PDFs ({document id: file name})."""
    from django.conf import settings

    from vectordb.embeddings import get_embedder

    get_embedder()  # loaded before anything is timed
    with settings_for_keyless(settings):
        result: dict = {"relevance_floor": settings.RETRIEVAL_RELEVANCE_FLOOR}
        single = _single_questions(user, filenames)
        turns = _conversations(user, filenames)
    relevances = single.pop("_relevances") + turns.pop("_relevances")
    result.update(single)
    result.update(turns)
    result["floor_trade_off"] = _floor_sweep(relevances)
    return result


class settings_for_keyless:
    """No chat model while measuring: the keyless default is what these figures describe."""

    def __init__(self, settings):
        self.settings = settings

    def __enter__(self):
        self.saved = (self.settings.OPENAI_API_KEY, self.settings.OPENAI_BASE_URL)
        self.settings.OPENAI_API_KEY = ""
        self.settings.OPENAI_BASE_URL = ""

    def __exit__(self, *exc):
        self.settings.OPENAI_API_KEY, self.settings.OPENAI_BASE_URL = self.saved


# --- scoring helpers -----------------------------------------------------------------------------------------------


def _hit(citation, turn: dict, filenames: dict[int, str]) -> bool:
    return filenames.get(citation.document_id) == turn["file"] and any(
        citation.page <= page <= citation.page_end for page in turn["pages"]
    )


def _first_hit(citations, turn: dict, filenames: dict[int, str]) -> int | None:
    return next((rank for rank, c in enumerate(citations, start=1) if _hit(c, turn, filenames)), None)


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.casefold())


def _in_order(evidence: list[str], answer: list[str]) -> int:
    """Longest common subsequence: how many of the evidence's words the answer holds in their order."""
    previous = [0] * (len(answer) + 1)
    for word in evidence:
        current = [0]
        for position, other in enumerate(answer):
            current.append(previous[position] + 1 if word == other else max(previous[position + 1], current[position]))
        previous = current
    return previous[-1]


def evidence_quoted(answer: str, evidence: str) -> bool:
    wanted = _words(evidence)
    return bool(wanted) and _in_order(wanted, _words(answer)) >= EVIDENCE_SHARE * len(wanted)


def _rate(hits: int, total: int) -> float:
    return round(hits / total, 3) if total else float("nan")


# --- single questions ----------------------------------------------------------------------------------------------


def _today_hybrid(user, question: str, k: int):
    """Chat's ranking before this section's work: hybrid search, fused by reciprocal rank, nothing else."""
    from chat.services import _citations, _ready_titles
    from tenants.models import Workspace
    from tenants.services import tenant_target
    from vectordb.connections import get_registry
    from vectordb.embeddings import get_embedder
    from vectordb.search import hybrid_search

    workspace = Workspace.objects.personal_for(user)
    titles = _ready_titles(user, None, workspace)
    embedding = get_embedder().embed_query(question)
    with get_registry().connection(tenant_target(workspace)) as connection:
        hits = hybrid_search(connection, embedding, question, list(titles), k)
    return _citations(hits, titles)


def _single_questions(user, filenames: dict[int, str]) -> dict:
    from django.conf import settings

    from chat import services

    questions = json.loads((EVAL_DIR / "qa.json").read_text())
    today = {1: 0, 3: 0, 5: 0}
    ours = {1: 0, 3: 0, 5: 0}
    quoted = not_found = 0
    lengths, today_seconds, plain_seconds, turn_seconds = [], [], [], []
    misses, relevances = [], []
    for question in questions:
        started = time.perf_counter()
        baseline = _today_hybrid(user, question["question"], 5)
        today_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        services.passages_for_turn(user, question["question"], rerank=False)
        plain_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        retrieval = services.passages_for_turn(user, question["question"])
        answer = "".join(services.answer_stream(question["question"], retrieval))
        turn_seconds.append(time.perf_counter() - started)
        relevances.append(("answerable", retrieval.relevance))
        rank_today = _first_hit(baseline, question, filenames)
        rank = _first_hit(retrieval.citations, question, filenames)
        for k in today:
            today[k] += rank_today is not None and rank_today <= k
            ours[k] += rank is not None and rank <= k
        not_found += not retrieval.found
        is_quoted = retrieval.found and evidence_quoted(answer, question["evidence"])
        quoted += is_quoted
        lengths.append(len(answer))
        if rank != 1 or not is_quoted:
            misses.append(
                {"id": question["id"], "rank": rank, "rank_today": rank_today, "quoted": is_quoted, "answer": answer}
            )
    count = len(questions)
    milliseconds = lambda values: round(1000 * sorted(values)[len(values) // 2], 1)  # noqa: E731 (a p50)
    return {
        "single_questions": count,
        "single_recall_at_1": _rate(ours[1], count),
        "single_recall_at_3": _rate(ours[3], count),
        "single_recall_at_5": _rate(ours[5], count),
        "single_recall_at_1_today": _rate(today[1], count),
        "single_recall_at_3_today": _rate(today[3], count),
        "single_recall_at_5_today": _rate(today[5], count),
        "single_not_found": not_found,
        "evidence_quoted": _rate(quoted, count),
        "answer_chars_mean": round(sum(lengths) / count, 1),
        "answer_chars_max": max(lengths),
        "answer_chars_limit": settings.CHAT_EXTRACTIVE_ANSWER_CHARS,
        "today_search_p50_ms": milliseconds(today_seconds),
        "turn_without_rerank_p50_ms": milliseconds(plain_seconds),
        "turn_with_rerank_and_answer_p50_ms": milliseconds(turn_seconds),
        "single_misses": misses,
        "_relevances": relevances,
    }


# --- conversations -------------------------------------------------------------------------------------------------


def _conversations(user, filenames: dict[int, str]) -> dict:
    from chat import services

    conversations = json.loads((EVAL_DIR / "conversations.json").read_text())
    kinds = ("first", "follow-up", "switch")
    hits = dict.fromkeys(kinds, 0)
    counts = dict.fromkeys(kinds, 0)
    alone_hits = dict.fromkeys(kinds, 0)
    pasted_hits = dict.fromkeys(kinds, 0)
    rejected = off_topic = not_found = 0
    strategies: dict[str, int] = {}
    turns_log = []
    relevances = []
    for conversation in conversations:
        history: list[services.Exchange] = []
        asked: list[str] = []
        for turn in conversation["turns"]:
            question = turn["question"]
            retrieval = services.passages_for_turn(user, question, history)
            answer = "".join(services.answer_stream(question, retrieval, history))
            history.append(services.Exchange(question, answer, retrieval.found))
            strategies[retrieval.strategy] = strategies.get(retrieval.strategy, 0) + 1
            entry = {
                "conversation": conversation["id"],
                "kind": turn["kind"],
                "question": question,
                "strategy": retrieval.strategy,
                "found": retrieval.found,
                "relevance": retrieval.relevance,
            }
            if turn["kind"] == "off-topic":
                off_topic += 1
                rejected += not retrieval.found
                relevances.append(("off-topic", retrieval.relevance))
            else:
                kind = turn["kind"]
                counts[kind] += 1
                relevances.append(("answerable", retrieval.relevance))
                not_found += not retrieval.found
                rank = _first_hit(retrieval.citations[:5], turn, filenames)
                hits[kind] += rank is not None
                entry["rank"] = rank
                alone = services.chunks_retrieve(user, question, k=5)
                alone_hits[kind] += _first_hit(alone, turn, filenames) is not None
                pasted = services.chunks_retrieve(user, "\n".join([question, *reversed(asked[-2:])]), k=5)
                pasted_hits[kind] += _first_hit(pasted, turn, filenames) is not None
            asked.append(question)
            turns_log.append(entry)
    answerable = sum(counts.values())
    return {
        "answerable_turns": answerable,
        "recall_at_5_answerable": _rate(sum(hits.values()), answerable),
        "recall_at_5_first": _rate(hits["first"], counts["first"]),
        "recall_at_5_follow_up": _rate(hits["follow-up"], counts["follow-up"]),
        "recall_at_5_switch": _rate(hits["switch"], counts["switch"]),
        "off_topic_turns": off_topic,
        "off_topic_rejected": _rate(rejected, off_topic),
        "answerable_not_found": _rate(not_found, answerable),
        "question_alone_recall_at_5_follow_up": _rate(alone_hits["follow-up"], counts["follow-up"]),
        "question_alone_recall_at_5_switch": _rate(alone_hits["switch"], counts["switch"]),
        "pasted_history_recall_at_5_follow_up": _rate(pasted_hits["follow-up"], counts["follow-up"]),
        "pasted_history_recall_at_5_switch": _rate(pasted_hits["switch"], counts["switch"]),
        "strategies": strategies,
        "turns": turns_log,
        "_relevances": relevances,
    }


def _floor_sweep(relevances: list[tuple[str, float | None]]) -> list[dict]:
    """For each floor: the share of off-topic turns rejected and of answerable questions and turns wrongly
    rejected, had that floor been set (reranking may also reject a turn; that is not modelled here)."""
    answerable = [value for kind, value in relevances if kind == "answerable"]
    off_topic = [value for kind, value in relevances if kind == "off-topic"]
    below = lambda value, floor: value is None or value < floor  # noqa: E731
    return [
        {
            "floor": floor,
            "off_topic_rejected": _rate(sum(below(value, floor) for value in off_topic), len(off_topic)),
            "answerable_not_found": _rate(sum(below(value, floor) for value in answerable), len(answerable)),
        }
        for floor in FLOOR_SWEEP
    ]


if __name__ == "__main__":
    from bench.framework import setup_django

    setup_django()
    started = time.perf_counter()
    outcome = run(quick=os.environ.get("BENCH_QUICK", "").strip().lower() in {"1", "true", "yes", "on"})
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(outcome, indent=2))
