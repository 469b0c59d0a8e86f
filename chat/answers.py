"""Answers without a language model: the sentences of the passages that answer the question, quoted.

Each candidate passage is cut into windows of whole sentences (long blocks such as option lists are cut at their line
breaks) of at most a few hundred characters. A window scores how close its meaning is to the question (the local
embedder's token vectors of the passage, read once, averaged over the window, against the question's embedding), plus
how many of the question's rarer words it holds, minus a little for each place the passage ranked lower. Section
headings inside a passage count for neither: they echo the question's topic without saying anything about it. The
best window's score reranks the passages. The quotes are chosen by that score plus how close the window's best
sentence, embedded on its own, comes to the question: averaged over a whole window, a sentence that answers is diluted
by its neighbours (on the dev set, 0.75 of the answers quoted the evidence with it, 0.69 without). A sentence is
embedded without a section heading run into its line, and a line the PDF only wrapped stays with the next (0.81).

Tables of contents, indexes and code tables never make an answer: their lines are headings with page numbers, not
statements.

Pure functions of texts and vectors, except `windows_score`, which runs the embedder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy

from documents.chunking import sentence_spans

# Longest quoted window, in characters: a sentence or two, not a page.
WINDOW_CHARS = 380
# A window shorter than this is a heading or a fragment, not an answer.
MIN_WINDOW_CHARS = 40
# How much the question's rarer words count beside the meaning (cosine similarity is on a 0..1 scale here). Lower
# since each sentence is embedded without its heading and wrapped lines stay whole: the meaning is read better, and
# words shared with a neighbouring passage's echo of the question misled more than they helped (dev set: 0.3 -> 0.2
# quoted the evidence for 26 of 32 questions instead of 25).
WORD_WEIGHT = 0.2
# Each place lower in the retrieval ranking costs this much: the fused ranking knows things windows do not.
RANK_PENALTY = 0.03
# A further window joins the answer only when it scores nearly as well as the best one.
SECOND_QUOTE_MARGIN = 0.1
# Each quote in the answer costs its marker and Markdown around it ("> " ... " [n]" and a blank line).
QUOTE_OVERHEAD_CHARS = 10
# How much the best single sentence's similarity to the question counts when choosing the quotes.
SENTENCE_WEIGHT = 0.5

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does doing for from had has have how i if in into is it its
    me my no not of on or our should so than that the their them then there these they this those to too was we were
    what when where which while who whom why will with would you your""".split()
)
# A heading line: a section number, a short title, no sentence punctuation at its end.
_HEADING_LINE = re.compile(r"^[ \t]*\d+(?:\.\d+)*\.?[ \t]+[A-Z][^\n]{0,80}$", re.MULTILINE)
# A wrapped line: it ends without closing a sentence or a clause, and the next starts in lower case or with a number.
_CONTINUED_LINE = re.compile(r"[^.!?:;]\n[a-z0-9(]")
_DOT_LEADER = re.compile(r"(?:\.\s?){4,}|…{2,}")
_ENDS_WITH_PAGE_REFERENCE = re.compile(r"(?:\d+|[ivxlc]+)(?:\s*[,–-]\s*\d+)*\s*$", re.IGNORECASE)


def words(text: str) -> list[str]:
    """Lower-case words and numbers; a TeX command's backslash and punctuation are not part of a word."""
    return _WORD.findall(text.casefold())


def _stem(word: str) -> str:
    """A light English stem, so that "descaled", "descale" and "descaling" meet: common endings go."""
    for ending in ("ing", "ed", "es", "s", "e"):
        if len(word) > len(ending) + 3 and word.endswith(ending):
            return word[: -len(ending)]
    return word


def content_words(text: str) -> set[str]:
    """The stems of the words that carry meaning (no stopwords)."""
    return {_stem(word) for word in words(text) if word not in _STOPWORDS}


def is_navigation(text: str) -> bool:
    """A table of contents, an index, a reference list or a code table: most of its text is in short lines that end
    with a page number or carry dot leaders, or it is not prose (few words of letters). A page of prose that also
    holds a small table is not."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return True
    navigation = [
        line
        for line in lines
        if _DOT_LEADER.search(line) or (len(line) <= 90 and _ENDS_WITH_PAGE_REFERENCE.search(line))
    ]
    if len(navigation) >= 2 and sum(map(len, navigation)) >= 0.6 * sum(map(len, lines)):
        return True
    tokens = text.split()
    prose = sum(1 for token in tokens if len(token) >= 3 and token.isalpha())
    return len(tokens) >= 20 and prose < 0.3 * len(tokens)


def answer_units(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence; a block longer than a window (a list of options, a code listing) is cut at
    its line breaks, so that one of its lines can be quoted. A line the PDF merely wrapped (it ends mid-sentence and
    the next goes on in lower case or with a number) stays with the next one, unless that makes a piece longer than
    a window."""
    units: list[tuple[int, int]] = []
    for start, end in sentence_spans(text):
        if end - start <= WINDOW_CHARS:
            units.append((start, end))
            continue
        for piece_start, piece_end in _wrapped_lines(text, start, end):
            if piece_end - piece_start <= WINDOW_CHARS:
                units.append((piece_start, piece_end))
            else:
                units.extend(_lines(text, piece_start, piece_end))
    return units


def _lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each non-empty line of text[start:end]."""
    lines, position = [], start
    for line_break in re.finditer(r"\n", text[start:end]):
        if start + line_break.start() > position:
            lines.append((position, start + line_break.start()))
        position = start + line_break.end()
    if end > position:
        lines.append((position, end))
    return lines


def _wrapped_lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The lines of text[start:end], a line that continues on the next (see _CONTINUED_LINE) joined to it."""
    pieces: list[tuple[int, int]] = []
    for line_start, line_end in _lines(text, start, end):
        if pieces and _CONTINUED_LINE.match(text[pieces[-1][1] - 1] + "\n" + text[line_start]):
            pieces[-1] = (pieces[-1][0], line_end)
        else:
            pieces.append((line_start, line_end))
    return pieces


def windows(text: str, limit: int | None = None) -> list[tuple[int, int]]:
    """Around each unit, its neighbours on both sides, taken in turn while the window stays within `limit`
    characters (an answer often sits right before or after the sentence that echoes the question). A single unit
    longer than that is cut."""
    limit = limit or WINDOW_CHARS
    units = answer_units(text)
    found = []
    for centre in range(len(units)):
        first = last = centre
        grew = True
        while grew:
            grew = False
            if last + 1 < len(units) and units[last + 1][1] - units[first][0] <= limit:
                last, grew = last + 1, True
            if first > 0 and units[last][1] - units[first - 1][0] <= limit:
                first, grew = first - 1, True
        start, end = units[first][0], units[last][1]
        found.append((start, min(end, start + limit)))
    return found


def heading_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each section heading line in the text ("3.4 A minimal class file")."""
    return [
        (match.start(), match.end())
        for match in _HEADING_LINE.finditer(text)
        if not re.search(r"[.!?:;,]\s*$", match.group())
    ]


@dataclass(frozen=True)
class ScoredWindow:
    passage: int  # index in the candidates, in retrieval order
    start: int
    end: int
    score: float  # ranks the passages
    quote_score: float = 0.0  # chooses the quotes: `score` plus the best sentence's own similarity


def _rarity(passages: Sequence[str]) -> dict[str, float]:
    """Inverse document frequency of each word among the candidate passages (plus one for the rest of the tenant,
    so a word in every candidate still counts a little)."""
    count = len(passages) + 1
    frequency: dict[str, int] = {}
    for text in passages:
        for word in content_words(text):
            frequency[word] = frequency.get(word, 0) + 1
    return {word: math.log(1 + (count - seen + 0.5) / (seen + 0.5)) for word, seen in frequency.items()}


def _word_overlap(question_words: set[str], text: str, rarity: dict[str, float], unseen: float) -> float:
    """The share of the question's content words (weighted by rarity) that the text holds."""
    if not question_words:
        return 0.0
    held = question_words & content_words(text)
    total = sum(rarity.get(word, unseen) for word in question_words)
    return sum(rarity.get(word, unseen) for word in held) / total if total else 0.0


def windows_score(question: str, query_embedding: Sequence[float], passages: Sequence[str], embedder) -> list:
    """Every window of every passage that could answer, scored. Passages that are navigation have none.

    `embedder` must offer `token_embeddings` (the local model); without it, only the words count."""
    query = numpy.asarray(query_embedding, dtype=numpy.float32)
    answerable = [number for number, text in enumerate(passages) if not is_navigation(text)]
    token_vectors = {}
    sentence_similarity: dict[tuple[int, int, int], float] = {}
    if answerable and hasattr(embedder, "token_embeddings"):
        read = embedder.token_embeddings([passages[number] for number in answerable])
        token_vectors = dict(zip(answerable, read, strict=True))
        sentence_similarity = _sentence_similarities(query, passages, answerable, embedder)
    rarity = _rarity(passages)
    unseen = math.log(1 + (len(passages) + 1.5) / 0.5)
    question_words = content_words(question)
    scored = []
    for number in answerable:
        text = passages[number]
        tokens = token_vectors.get(number)
        headings = heading_spans(text)
        not_heading = None
        if tokens is not None:
            not_heading = numpy.ones(len(tokens.spans), dtype=bool)
            for start, end in headings:
                not_heading &= ~((tokens.spans[:, 0] >= start) & (tokens.spans[:, 1] <= end))
        for start, end in windows(text):
            if len(text[start:end].strip()) < MIN_WINDOW_CHARS:
                continue
            meaning = 0.0
            if tokens is not None:
                inside = (tokens.spans[:, 0] >= start) & (tokens.spans[:, 1] <= end) & not_heading
                if not inside.any():
                    continue  # past the model's sequence length (or only a heading): never read, so not judged
                pooled = tokens.vectors[inside].mean(axis=0)
                meaning = float(pooled @ query / (numpy.linalg.norm(pooled) or 1.0))
            body = _without(text, start, end, headings)
            score = meaning + WORD_WEIGHT * _word_overlap(question_words, body, rarity, unseen) - RANK_PENALTY * number
            best_sentence = max(
                (
                    similarity
                    for (passage, unit_start, unit_end), similarity in sentence_similarity.items()
                    if passage == number and unit_start >= start and unit_end <= end
                ),
                default=0.0,
            )
            scored.append(ScoredWindow(number, start, end, score, score + SENTENCE_WEIGHT * best_sentence))
    scored.sort(key=lambda window: (-window.score, window.passage, window.start))
    return scored


def _sentence_similarities(query, passages: Sequence[str], answerable: list[int], embedder) -> dict:
    """{(passage, start, end): cosine similarity to the question} of every sentence, each embedded on its own (in
    one batch)."""
    headings = {number: heading_spans(passages[number]) for number in answerable}
    units, bodies = [], []
    for number in answerable:
        for start, end in answer_units(passages[number]):
            # A heading run into the sentence's line echoes the question's topic: the sentence is judged without it.
            body = " ".join(_without(passages[number], start, end, headings[number]).split())
            if body:
                units.append((number, start, end))
                bodies.append(body)
    if not units:
        return {}
    vectors = embedder.embed_documents(bodies)
    return {
        unit: float(numpy.asarray(vector, dtype=numpy.float32) @ query)
        for unit, vector in zip(units, vectors, strict=True)
    }


def _without(text: str, start: int, end: int, spans: Sequence[tuple[int, int]]) -> str:
    """text[start:end] with the given spans inside it blanked out."""
    pieces, position = [], start
    for span_start, span_end in spans:
        if span_start >= position and span_end <= end:
            pieces.append(text[position:span_start])
            position = span_end
    pieces.append(text[position:end])
    return " ".join(pieces)


def passage_order(passage_count: int, scored: Sequence[ScoredWindow]) -> list[int]:
    """Passages by their best window; passages without any (navigation, fragments) keep their order after them."""
    best: dict[int, float] = {}
    for window in scored:
        best.setdefault(window.passage, window.score)
    ranked = sorted(best, key=lambda number: (-best[number], number))
    return ranked + [number for number in range(passage_count) if number not in best]


def quotes_select(scored: Sequence[ScoredWindow], limit: int) -> list[ScoredWindow]:
    """The best window, then (from other passages) windows nearly as good, while the answer stays within `limit`
    characters. One quote per passage: a citation's quote is one verbatim span of its text."""
    chosen: list[ScoredWindow] = []
    used = 0
    for window in sorted(scored, key=lambda window: (-window.quote_score, window.passage, window.start)):
        if chosen and window.quote_score < chosen[0].quote_score - SECOND_QUOTE_MARGIN:
            break
        if any(window.passage == quoted.passage for quoted in chosen):
            continue
        length = window.end - window.start + QUOTE_OVERHEAD_CHARS
        if used + length > limit:
            continue
        chosen.append(window)
        used += length
    return chosen


def quote_markdown(text: str, number: int) -> str:
    """One quote as a Markdown blockquote line with its citation marker."""
    return f"> {' '.join(text.split())} [{number}]"
