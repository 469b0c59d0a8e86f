"""Keyless answers: which passages can answer, how they are cut into windows, how windows are scored and quoted.

Pure functions of texts, except where the real local embedder reads a passage (its token vectors)."""

from __future__ import annotations

import pytest

from chat import answers
from vectordb.embeddings import get_embedder

TABLE_OF_CONTENTS = """Contents
1 Introduction 2
1.1 Writing classes and packages for LATEX 2ε . . . . . . . . . . . . . 2
1.2 Overview . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . 3
1.3 Further information . . . . . . . . . . . . . . . . . . . . . . . . . 3
2 Writing classes and packages 4"""
INDEX = """\\DeclareFontFamily, 9, 12
\\DeclareFontShape, 10
\\DeclareSymbolFont, 15–16
\\fontencoding, 6
\\fontfamily, 6, 7"""
CODE_TABLE = """´00x ⁄ ˙ ˝ ˛ ˝0x ´01x fl fi ´02x ı ` ´ ˇ ˘ ¯ ˚ ˝1x ´03x ¸ ß æ œ ø Æ Œ Ø ´04x ! " # $ % & ’ ˝2x
´05x ( ) * + , - . / ´06x 0 1 2 3 4 5 6 7 ˝3x ´07x 8 9 : ; < = > ?"""
PROSE = (
    "Descaling. Hard water leaves limescale in the boiler and the pipes, which slows the flow and spoils the taste. "
    "Descale the machine every three months, or every month where the water is very hard. Dissolve one descaling "
    "tablet in a litre of warm water, pour the solution into the tank and start the cleaning programme by holding "
    "the two cup buttons for five seconds. The programme pumps the solution through the boiler in short bursts and "
    "takes about twenty minutes. Never use vinegar: its acid attacks the seals of the boiler."
)
OPTIONS = (
    "Usage: asn1Decoding [OPTION] DEFINITIONS ENCODED ASN1TYPE\n"
    "Decodes DER data in ENCODED file, for the ASN1TYPE element described in ASN.1 DEFINITIONS file, and print\n"
    "decoded structures.\n"
    "-b, --benchmark perform a benchmark on decoding\n"
    "-s, --strict use strict DER decoding\n"
    "-t, --no-time-strict use strict DER decoding but not in time fields\n"
    "-h, --help print this help and exit\n"
    "-v, --version print version information and exit\n"
    "Mandatory arguments to long options are mandatory for short options too, and the list goes on for a while so\n"
    "that this one block of options is longer than any window of text an answer may quote in one piece."
)


@pytest.mark.parametrize("text", [TABLE_OF_CONTENTS, INDEX, CODE_TABLE, "", "   \n "])
def test_tables_of_contents_indexes_and_code_tables_are_navigation(text):
    assert answers.is_navigation(text)


@pytest.mark.parametrize("text", [PROSE, OPTIONS, "Since: 1.6", "Returns: Return NULL on failure."])
def test_prose_and_reference_entries_are_not_navigation(text):
    assert not answers.is_navigation(text)


def test_a_window_is_a_sentence_with_its_neighbours_on_both_sides_within_the_limit():
    units = answers.answer_units(PROSE)
    found = answers.windows(PROSE, limit=200)

    assert len(found) == len(units)
    for (start, end), (unit_start, unit_end) in zip(found, units, strict=True):
        assert start <= unit_start and unit_end <= end  # around its own sentence
        assert end - start <= 200
        assert start in {unit[0] for unit in units} and end in {unit[1] for unit in units}  # whole sentences
    # "Descale the machine every three months..." takes the sentences before it while they fit (the next is long).
    assert PROSE[found[2][0] : found[2][1]] == " ".join(PROSE[units[i][0] : units[i][1]] for i in (0, 1, 2))


def test_a_block_longer_than_a_window_is_cut_at_its_line_breaks():
    units = [OPTIONS[start:end] for start, end in answers.answer_units(OPTIONS)]

    assert "-b, --benchmark perform a benchmark on decoding" in units
    assert all(len(unit) <= answers.WINDOW_CHARS for unit in units)


def test_a_window_scores_its_meaning_and_the_questions_rarer_words():
    embedder = get_embedder()
    question = "How often should I descale the machine?"

    scored = answers.windows_score(question, embedder.embed_query(question), [PROSE, TABLE_OF_CONTENTS], embedder)

    assert {window.passage for window in scored} == {0}  # the table of contents has no window at all
    best = scored[0]
    assert "every three months" in PROSE[best.start : best.end]
    assert [window.score for window in scored] == sorted((window.score for window in scored), reverse=True)
    assert all(best.end - best.start >= answers.MIN_WINDOW_CHARS for best in scored)


def test_without_token_vectors_only_the_words_count():
    question = "Which switch performs a benchmark on decoding?"

    scored = answers.windows_score(question, [0.0] * 384, [OPTIONS], embedder=object())

    assert "-b, --benchmark perform a benchmark on decoding" in OPTIONS[scored[0].start : scored[0].end]


def test_passages_are_reordered_by_their_best_window_and_navigation_goes_last():
    scored = [
        answers.ScoredWindow(passage=2, start=0, end=50, score=0.9),
        answers.ScoredWindow(passage=0, start=0, end=50, score=0.7),
        answers.ScoredWindow(passage=2, start=60, end=120, score=0.5),
    ]

    assert answers.passage_order(4, scored) == [2, 0, 1, 3]


def test_quotes_are_the_best_window_and_close_ones_from_other_passages_within_the_limit():
    # The quotes follow quote_score (the window with its best sentence), not the passages' ranking score.
    scored = [
        answers.ScoredWindow(passage=2, start=0, end=20, score=0.95, quote_score=0.60),  # too far below the best
        answers.ScoredWindow(passage=1, start=0, end=200, score=0.80, quote_score=0.80),
        answers.ScoredWindow(passage=1, start=100, end=300, score=0.79, quote_score=0.79),  # one quote per citation
        answers.ScoredWindow(passage=0, start=0, end=250, score=0.75, quote_score=0.75),  # would not fit
        answers.ScoredWindow(passage=3, start=0, end=150, score=0.60, quote_score=0.72),
    ]

    chosen = answers.quotes_select(scored, limit=400)

    assert [(window.passage, window.start) for window in chosen] == [(1, 0), (3, 0)]
    assert sum(window.end - window.start + answers.QUOTE_OVERHEAD_CHARS for window in chosen) <= 400


def test_section_headings_are_found_and_do_not_make_a_window_win():
    text = (
        "3.4 A minimal class file\n"
        "Most of the work of a class or package is in defining new commands, or changing the appearance of documents.\n"
        "There are four things that every class file must contain: a definition of the normal size, values for the "
        "text width and text height, and a specification for page numbering."
    )
    assert answers.heading_spans(text) == [(0, len("3.4 A minimal class file"))]
    assert answers.heading_spans("1. Use it when the value is 2.\nAnd more.") == []  # a sentence, not a heading
    embedder = get_embedder()
    question = "What must a minimal class file contain?"

    scored = answers.windows_score(question, embedder.embed_query(question), [text], embedder)

    best_quote = max(scored, key=lambda window: window.quote_score)
    assert "every class file must contain" in text[best_quote.start : best_quote.end]
    assert all(window.quote_score > window.score for window in scored)  # each window's best sentence counts


def test_a_quote_is_one_markdown_blockquote_line_with_its_marker():
    assert answers.quote_markdown("Descale the machine\nevery three  months.", 2) == (
        "> Descale the machine every three months. [2]"
    )


def test_words_drop_backslashes_and_punctuation_and_content_words_are_stems_without_stopwords():
    assert answers.words("Use \\bfdefault, not \\bf!") == ["use", "bfdefault", "not", "bf"]
    assert answers.content_words("How do I change the default of the bold series?") == {
        "chang",
        "default",
        "bold",
        "seri",
    }
    assert answers.content_words("descale descaled descaling descales") == {"descal"}


# A long block as PDFs give it: a record's fields on lines of their own, then a paragraph wrapped at the page's width.
WRAPPED_BLOCK = (
    "LATEX name: OT1\n"
    "Public name: TEX text\n"
    "Further reference: [16, p.427]\n"
    "Donald Knuth designed his font encoding (and hence his fonts) in a\n"
    "very different environment from that which now pervades the TEX\n"
    "world: his computer had very little memory, there was\n"
    "little experience in multilingual technical typesetting, and as a result it was appropriate to sacrifice "
    "uniformity for\n"
    "efficiency.\n"
    "-b, --benchmark perform a benchmark on decoding\n"
    "-s, --strict use strict DER decoding and the list of options goes on"
)


def test_lines_the_pdf_only_wrapped_stay_one_unit_when_a_long_block_is_cut():
    assert len(WRAPPED_BLOCK) > answers.WINDOW_CHARS
    units = [" ".join(WRAPPED_BLOCK[start:end].split()) for start, end in answers.answer_units(WRAPPED_BLOCK)]

    assert units == [
        "LATEX name: OT1",
        "Public name: TEX text",
        "Further reference: [16, p.427]",
        "Donald Knuth designed his font encoding (and hence his fonts) in a very different environment from that "
        "which now pervades the TEX world: his computer had very little memory, there was little experience in "
        "multilingual technical typesetting, and as a result it was appropriate to sacrifice uniformity for "
        "efficiency.",
        # A block no longer than a window after the sentence's end stays whole.
        "-b, --benchmark perform a benchmark on decoding -s, --strict use strict DER decoding and the list of options "
        "goes on",
    ]


def test_wrapped_lines_longer_than_a_window_together_are_still_cut_at_their_line_breaks():
    line = "a line of a listing that goes on without ever closing its sentence, " * 2
    block = "\n".join([line.strip()] * 4)  # every line starts in lower case and ends without punctuation

    units = answers.answer_units(block)

    assert len(block) > answers.WINDOW_CHARS
    assert [block[start:end] for start, end in units] == [line.strip()] * 4


def test_a_sentence_is_judged_without_the_heading_run_into_its_line():
    text = "3.4 A minimal class file\nMost of the work of a class or package is in defining new commands."
    embedder = get_embedder()
    question = "What is the bare minimum a class file needs?"
    query = embedder.embed_query(question)

    similarities = answers._sentence_similarities(query, [text], [0], embedder)

    (unit,) = answers.answer_units(text)  # the heading and the sentence form one unit
    (body_vector,) = embedder.embed_documents(["Most of the work of a class or package is in defining new commands."])
    expected = sum(a * b for a, b in zip(body_vector, query, strict=True))
    assert similarities == {(0, *unit): pytest.approx(expected, abs=1e-5)}
