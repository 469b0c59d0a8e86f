"""Starter questions for an empty chat, drawn from the documents themselves (no model, no canned list).

Pure Python, no Django. From the leading chunks of each document it takes, in this order of preference:
- the section headings of the PDF's outline, and numbered headings found in the text ("2.1 Naming conventions"),
  turned into "What does this document say about naming conventions?";
- terms the document defines ("known as the Cork encoding", "called T1") or keeps using (T2A, LaTeX), turned into
  "What is the Cork encoding?".
Headings that say nothing about the subject (Introduction, References...) are skipped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# A numbered heading alone on its line: "2", "2.1" or "A.3", then a short title that does not end like a sentence.
_NUMBERED_HEADING = re.compile(r"^(?:\d+(?:\.\d+){0,3}|[A-Z](?:\.\d+){1,3})\.?\s+([A-Z][^\n]{2,70}?)\s*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.,;:!?]$")
_UNINFORMATIVE_HEADINGS = {
    "abstract",
    "acknowledgement",
    "acknowledgements",
    "acknowledgment",
    "acknowledgments",
    "appendix",
    "bibliography",
    "conclusion",
    "conclusions",
    "contents",
    "further information",
    "further reading",
    "index",
    "introduction",
    "notes",
    "overview",
    "preface",
    "references",
    "summary",
    "table of contents",
}
_DANGLING_WORDS = {
    "a",
    "an",
    "and",
    "as",
    "at",
    "by",
    "for",
    "from",
    "in",
    "of",
    "on",
    "or",
    "that",
    "the",
    "to",
    "with",
}
# "known as the Cork encoding", "called T1", "the so-called barn owl": the document names something it talks about.
# Only "so-called" is trusted before a lower-case word ("is called by the parser" names nothing).
_DEFINED_TERM = re.compile(
    r"\b(?:[Tt]he\s+so-called\s+(?P<so_called>[\w-]+(?:\s+[a-z]+)?)"
    r"|(?:known as|called|referred to as|termed)\s+(?P<named>(?:the\s+)?[A-Z][\w-]*(?:\s+[a-z]+)?))"
    r"(?=[\s,.;:)])"
)
# Terms written with capitals or digits inside them (T2A, LaTeX, OT1, TUG): the document's own vocabulary.
_TERM = re.compile(r"\b[A-Z][A-Za-z]*[A-Z0-9][A-Za-z0-9]*(?:\.\d+)?\b")
_COMMON_TERMS = {"I", "II", "III", "IV", "OK", "PDF", "USA", "UK", "US", "EU", "FAQ", "URL", "HTTP", "HTTPS", "ISBN"}
_NOT_A_TERM = re.compile(r"^[IVXLC]+$")  # roman numerals


@dataclass(frozen=True)
class LeadingChunk:
    document_id: int
    chunk_index: int
    section: str  # the outline path ("2 Text fonts > 2.1 Attributes") or ""
    content: str


def _heading_topic(heading: str) -> str:
    """ "2.1 Naming conventions" -> "naming conventions"; "" when the heading says nothing about the subject."""
    heading = re.sub(r"^(?:\d+(?:\.\d+)*|[A-Z](?:\.\d+)+)\.?\s+", "", heading.strip())
    heading = re.sub(r"\s+", " ", heading).strip()
    if len(heading) < 4 or heading.lower() in _UNINFORMATIVE_HEADINGS or _SENTENCE_END.search(heading):
        return ""
    words = heading.split(" ")
    # A sentence broken across lines, a table-of-contents line ("Introduction 2") or a date is not a heading.
    if len(words) > 8 or ". " in heading or words[-1].isdigit() or words[-1].lower() in _DANGLING_WORDS:
        return ""
    first = words[0]
    # Lower-case an ordinary first word ("Naming" -> "naming"); keep names and acronyms (TEX, LaTeX, Unicode...).
    if first[:1].isupper() and first[1:].islower():
        words[0] = first.lower()
    return " ".join(words)


def _topics_from_headings(chunk: LeadingChunk) -> list[str]:
    headings = [part for part in chunk.section.split(" > ") if part] if chunk.section else []
    headings += [match.group(0) for match in _NUMBERED_HEADING.finditer(chunk.content)]
    return [topic for topic in (_heading_topic(heading) for heading in headings) if topic]


def _terms(chunks: list[LeadingChunk]) -> list[str]:
    defined = []
    counts: Counter[str] = Counter()
    for chunk in chunks:
        for match in _DEFINED_TERM.finditer(chunk.content):
            term = re.sub(r"\s+", " ", f"the {match['so_called']}" if match["so_called"] else match["named"])
            if term not in defined:
                defined.append(term)
        counts.update(
            term
            for term in _TERM.findall(chunk.content)
            if term not in _COMMON_TERMS and not _NOT_A_TERM.match(term) and len(term) >= 2
        )
    frequent = [term for term, count in counts.most_common() if count >= 3]
    return defined + [term for term in frequent if all(term not in d for d in defined)]


def _what_is(term: str) -> str:
    return f"What is {term}?"


def starter_questions(chunks: list[LeadingChunk], titles: dict[int, str], limit: int = 4) -> list[str]:
    """Up to `limit` questions about these documents, most informative first, each document taking turns. `titles`
    maps document ids to titles; with one document the questions say "this document" instead of its title."""
    by_document: dict[int, list[LeadingChunk]] = {}
    for chunk in sorted(chunks, key=lambda c: (c.document_id, c.chunk_index)):
        by_document.setdefault(chunk.document_id, []).append(chunk)
    single = len(by_document) == 1
    proposals: list[list[str]] = []
    for document_id, document_chunks in by_document.items():
        subject = "this document" if single else f"“{titles.get(document_id, 'this document')}”"
        topics: list[str] = []
        seen: set[str] = set()
        for chunk in document_chunks:
            for topic in _topics_from_headings(chunk):
                key = re.sub(r"\W", "", topic.lower())  # "LaTeX2ε fonts" and "LATEX 2ε fonts" are one heading
                if key not in seen:
                    seen.add(key)
                    topics.append(topic)
        questions = [f"What does {subject} say about {topic}?" for topic in topics[:2]]
        questions += [_what_is(term) for term in _terms(document_chunks)[:2]]
        questions += [f"What does {subject} say about {topic}?" for topic in topics[2:]]
        proposals.append(questions)
    # Round-robin over the documents, so that every document gets its turn before any gets a second.
    chosen: list[str] = []
    for rank in range(max((len(p) for p in proposals), default=0)):
        for questions in proposals:
            if rank < len(questions) and questions[rank] not in chosen:
                chosen.append(questions[rank])
    return chosen[:limit]
