"""Retrieval quality: page-level recall@k on the dev set (/work/shared/eval), vector-only and hybrid.

One tenant, the four eval PDFs ingested through the real pipeline (`documents.services`), then every question asked
through `chat.services.chunks_retrieve` across all the tenant's documents, as a user chatting across documents would.
A question is a hit at k when one of its top-k chunks comes from the question's file and its [first_page, last_page]
covers one of the question's answer pages (the dev set's scoring rules, eval/README.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.framework import Target

EVAL_DIR = Path(os.environ.get("SILO_EVAL_DIR", "/work/shared/eval"))
TENANT_PREFIX = "quality"
KS = (1, 3, 5, 10)

TARGETS = [
    Target("recall_at_3_hybrid", at_least=0.90),
    Target("recall_at_5_hybrid", at_least=0.95),
]


def run(quick: bool) -> dict:
    """`quick` scores the same questions: the index must hold all four PDFs either way, and asking is cheap."""
    from bench.common import create_tenants, progress, remove_tenants, stopwatch
    from tenants import services as tenant_services

    questions = json.loads((EVAL_DIR / "qa.json").read_text())
    remove_tenants(TENANT_PREFIX)  # leftovers of a crashed run
    (row,) = create_tenants(TENANT_PREFIX, 1)
    user = row.workspace.owner
    try:
        tenant_services.vector_database_provision(row.id)
        with stopwatch() as ingest_watch:
            filenames = _ingest_eval_pdfs(user)
        progress(f"ingested {len(filenames)} PDFs in {ingest_watch.seconds:.1f}s")
        with stopwatch() as ask_watch:
            result = _score(user, questions, filenames)
        result["ingest_seconds"] = round(ingest_watch.seconds, 1)
        searches = len(set(_searches(False).values())) + len(set(_searches(True).values()))
        # Each search embeds the question with the local model, then searches the tenant database.
        result["retrieval_ms_per_search"] = round(1000 * ask_watch.seconds / (len(questions) * searches), 1)
        return result
    finally:
        _remove_documents(user)
        remove_tenants(TENANT_PREFIX)


def _ingest_eval_pdfs(user) -> dict[int, str]:
    """Upload and ingest every eval PDF in-process; {document id: file name}."""
    from django.core.files import File

    from documents import services as document_services
    from documents.models import Document

    filenames = {}
    for path in sorted((EVAL_DIR / "pdfs").glob("*.pdf")):
        with path.open("rb") as handle:
            document = document_services.document_upload(user, File(handle, name=path.name), enqueue=False)
        document_services.document_ingest(document.id)
        document.refresh_from_db()
        if document.status != Document.Status.READY:
            raise RuntimeError(f"{path.name} ended {document.status}: {document.error_message}")
        filenames[document.id] = path.name
    return filenames


def _remove_documents(user) -> None:
    from documents.services import documents_erase_for_workspace
    from tenants.services import tenant_workspace

    documents_erase_for_workspace(tenant_workspace(user))


def _first_hit_rank(citations, question: dict, filenames: dict[int, str]) -> int | None:
    pages = set(question["pages"])
    for rank, citation in enumerate(citations, start=1):
        if filenames.get(citation.document_id) != question["file"]:
            continue
        if any(citation.page <= page <= citation.page_end for page in pages):
            return rank
    return None


def _searches(hybrid: bool) -> dict[int, int]:
    """Which search answers each k: {k: k searched}. A k=3 search is the top 3 of a k=5 one when both fuse the same
    candidates (hybrid takes max(20, 4k) from each list; vector search is ordered by distance either way), so one
    search serves every k that shares its candidates."""
    if not hybrid:
        return {k: max(KS) for k in KS}
    return {k: 5 if k <= 5 else k for k in KS}


def _score(user, questions: list[dict], filenames: dict[int, str]) -> dict:
    from chat.services import chunks_retrieve
    from vectordb.embeddings import get_embedder

    embedder = get_embedder()
    # The arithmetic the vectors were made with (bfloat16 where the CPU has it): recall is measured under it.
    result: dict = {"questions": len(questions), "embedder_precision": getattr(embedder, "precision", "n/a")}
    misses: dict[str, list[dict]] = {}
    per_file: dict[str, list[int]] = {}
    for mode, hybrid in (("vector", False), ("hybrid", True)):
        searches = _searches(hybrid)
        hits = {k: 0 for k in KS}
        reciprocal_ranks = []
        mode_misses = []
        for question in questions:
            retrieved = {
                searched: chunks_retrieve(user, question["question"], k=searched, hybrid=hybrid)
                for searched in sorted(set(searches.values()))
            }
            ranks = {k: _first_hit_rank(retrieved[searches[k]][:k], question, filenames) for k in KS}
            for k in KS:
                hits[k] += ranks[k] is not None
            reciprocal_ranks.append(1 / ranks[max(KS)] if ranks[max(KS)] else 0.0)
            if hybrid:
                total = per_file.setdefault(question["file"], [0, 0])
                total[0] += ranks[5] is not None
                total[1] += 1
            if ranks[3] is None or ranks[5] is None:
                top = retrieved[searches[5]][:5]
                mode_misses.append(
                    {
                        "id": question["id"],
                        "file": question["file"],
                        "pages": question["pages"],
                        "question": question["question"],
                        "first_hit_rank_at_10": ranks[max(KS)],
                        "top_5": [
                            f"{filenames.get(c.document_id, '?')} p.{c.page}-{c.page_end} ({c.score:.3f})" for c in top
                        ],
                    }
                )
        for k in KS:
            result[f"recall_at_{k}_{mode}"] = round(hits[k] / len(questions), 3)
        result[f"mrr_at_10_{mode}"] = round(sum(reciprocal_ranks) / len(questions), 3)
        misses[mode] = mode_misses
    result["per_file_recall_at_5_hybrid"] = {
        file: round(hit / count, 3) for file, (hit, count) in sorted(per_file.items())
    }
    result["misses"] = misses
    return result


if __name__ == "__main__":
    from bench.framework import setup_django

    setup_django()
    started = time.perf_counter()
    outcome = run(quick=os.environ.get("BENCH_QUICK", "").strip().lower() in {"1", "true", "yes", "on"})
    outcome["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(outcome, indent=2))
