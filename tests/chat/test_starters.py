"""Starter questions: drawn from the documents' own headings and terms, never from a canned list."""

from __future__ import annotations

import pytest

from chat.starters import LeadingChunk, starter_questions

ENCODINGS = [
    LeadingChunk(
        1,
        0,
        "",
        "1 Introduction\nThis document explains the ideas that underpin LaTeX font encodings.\n"
        "1.1 Encodings in TeX\nTeX (the program) implicitly recognises three sorts of encoding.",
    ),
    LeadingChunk(
        1,
        1,
        "",
        "2. The token stream that TeX processes internally.\nAgain, this document does not address the topic.\n"
        "1.2 The history of TeX font encodings\nIndependently, a first proposal (the so-called Aston proposal) was "
        "worked out. LaTeX calls it T1; LaTeX users know T1: T1 fonts, T1 files and T1 hyphenation are everywhere.",
    ),
    LeadingChunk(1, 2, "", "Contents\nIntroduction 2\nText fonts 4\n1 February 2016\n3 References"),
]


def test_numbered_headings_become_questions_about_the_document_and_defined_terms_what_is_questions():
    questions = starter_questions(ENCODINGS, {1: "font encodings"})

    assert questions == [
        "What does this document say about encodings in TeX?",
        "What does this document say about the history of TeX font encodings?",
        "What is the Aston proposal?",
        "What is T1?",
    ]


def test_introductions_tables_of_contents_dates_and_numbered_sentences_are_not_headings():
    questions = starter_questions(ENCODINGS, {1: "font encodings"}, limit=10)

    text = " ".join(questions)
    for not_a_topic in ("introduction", "Introduction 2", "February", "References", "token stream", "Text fonts 4"):
        assert not_a_topic not in text


def test_outline_sections_count_as_headings_and_each_document_takes_its_turn():
    chunks = [
        LeadingChunk(7, 0, "Warranty > Claims", "Keep the receipt."),
        LeadingChunk(7, 1, "Descaling", "Descale every three months."),
        LeadingChunk(9, 0, "Pruning roses", "Prune in late winter."),
    ]

    questions = starter_questions(chunks, {7: "espresso manual", 9: "garden"}, limit=3)

    assert questions == [
        "What does “espresso manual” say about warranty?",
        "What does “garden” say about pruning roses?",
        "What does “espresso manual” say about claims?",
    ]


@pytest.mark.parametrize("chunks", [[], [LeadingChunk(1, 0, "", "plain text without any heading or term at all")]])
def test_documents_with_nothing_to_ask_about_give_no_questions(chunks):
    assert starter_questions(chunks, {1: "notes"}) == []
