"""Chunk stage: sizes, sentence boundaries, page provenance, sections and determinism."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from documents.chunking import Chunk, chunk_pages
from documents.parsing import PageText, SectionStart, extract_pages

EVAL_PDFS = Path("/work/shared/eval/pdfs")


def _sentences(count: int, start: int = 0) -> str:
    return " ".join(f"Sentence number {number} says something." for number in range(start, start + count))


def test_short_pages_become_one_chunk_that_records_both_pages():
    pages = [PageText(1, "The first page ends here."), PageText(2, "The second page starts here.")]

    assert chunk_pages(pages, chunk_size=1000, chunk_overlap=200) == [
        Chunk(index=0, text="The first page ends here.\nThe second page starts here.", first_page=1, last_page=2)
    ]


def test_chunks_end_at_sentence_ends_and_overlap_by_whole_sentences():
    # Each sentence is 33 characters: 3 fit in 120 with their spaces (101), 1 in an overlap of 40.
    pages = [PageText(1, _sentences(8))]

    chunks = chunk_pages(pages, chunk_size=120, chunk_overlap=40)

    assert [chunk.text for chunk in chunks] == [
        _sentences(3, 0),
        _sentences(3, 2),
        _sentences(3, 4),
        _sentences(2, 6),
    ]
    assert [chunk.index for chunk in chunks] == [0, 1, 2, 3]
    assert all((chunk.first_page, chunk.last_page) == (1, 1) for chunk in chunks)


def test_a_chunk_running_across_a_page_break_records_both_pages_and_the_rest_one():
    pages = [PageText(1, _sentences(2, 0)), PageText(2, _sentences(2, 2)), PageText(3, _sentences(2, 4))]

    chunks = chunk_pages(pages, chunk_size=120, chunk_overlap=0)

    assert [(chunk.text, chunk.first_page, chunk.last_page) for chunk in chunks] == [
        (_sentences(2, 0) + "\n" + _sentences(1, 2), 1, 2),
        (_sentences(1, 3) + "\n" + _sentences(2, 4), 2, 3),
    ]


def test_an_overlap_carried_over_a_page_break_counts_the_earlier_page():
    pages = [PageText(1, _sentences(3, 0)), PageText(2, _sentences(3, 3))]

    chunks = chunk_pages(pages, chunk_size=120, chunk_overlap=40)

    assert [(chunk.first_page, chunk.last_page) for chunk in chunks] == [(1, 1), (1, 2), (2, 2)]
    assert chunks[1].text == _sentences(1, 2) + "\n" + _sentences(2, 3)


def test_empty_pages_and_lone_page_numbers_make_no_chunks():
    pages = [PageText(1, ""), PageText(2, "   \n\n "), PageText(3, "17"), PageText(4, "iv\nPreface text.\n18")]

    assert chunk_pages(pages, chunk_size=1000, chunk_overlap=200) == [
        Chunk(index=0, text="Preface text.", first_page=4, last_page=4)
    ]
    assert chunk_pages([PageText(1, "")], chunk_size=1000, chunk_overlap=200) == []


def test_a_sentence_longer_than_a_chunk_is_split_by_lines_then_words():
    listing = "\n".join(f"int field_{number} = {number};" for number in range(40))  # no sentence end at all
    words = "word " * 100  # one 500-character line

    chunks = chunk_pages([PageText(1, listing), PageText(2, words.strip())], chunk_size=100, chunk_overlap=0)

    assert max(len(chunk.text) for chunk in chunks) <= 100
    assert "\n".join(chunk.text for chunk in chunks if chunk.last_page == 1) == listing
    assert all(
        line.startswith("int field_") and line.endswith(";")
        for chunk in chunks[:-1]
        for line in chunk.text.split("\n")
        if chunk.first_page == 1
    )
    assert [chunk.text for chunk in chunks if chunk.first_page == 2] == ["word " * 19 + "word"] * 5


def test_a_single_word_longer_than_a_chunk_is_cut_hard():
    chunks = chunk_pages([PageText(1, "x" * 250)], chunk_size=100, chunk_overlap=20)

    assert [len(chunk.text) for chunk in chunks] == [100, 100, 50]


def test_abbreviations_do_not_end_a_sentence():
    text = "Use a class, e.g. the book class, for long works. Packages add features."

    chunks = chunk_pages([PageText(1, text)], chunk_size=50, chunk_overlap=0)

    assert [chunk.text for chunk in chunks] == [
        "Use a class, e.g. the book class, for long works.",
        "Packages add features.",
    ]


def test_a_new_section_starts_a_new_chunk_and_the_chunk_knows_its_section():
    text = "Intro text is here.\n2 Usage\nUsage text is here."
    pages = [
        PageText(1, text, sections=(SectionStart(0, "1 Intro"), SectionStart(text.index("2 Usage"), "2 Usage"))),
        PageText(2, "More usage text.", sections=(SectionStart(0, "2 Usage"),)),
    ]

    assert chunk_pages(pages, chunk_size=1000, chunk_overlap=200) == [
        Chunk(index=0, text="Intro text is here.", first_page=1, last_page=1, section="1 Intro"),
        Chunk(
            index=1, text="2 Usage\nUsage text is here.\nMore usage text.", first_page=1, last_page=2, section="2 Usage"
        ),
    ]


@pytest.mark.parametrize("chunk_size, chunk_overlap", [(0, 0), (100, 100), (100, -1)])
def test_impossible_sizes_are_refused(chunk_size, chunk_overlap):
    with pytest.raises(ValueError):
        chunk_pages([PageText(1, "Text.")], chunk_size=chunk_size, chunk_overlap=chunk_overlap)


@pytest.mark.skipif(not EVAL_PDFS.is_dir(), reason="the eval set is not on this machine")
@pytest.mark.parametrize("file_name", ["encguide.pdf", "fntguide.pdf", "clsguide.pdf", "libtasn1.pdf"])
def test_real_documents_chunk_within_size_deterministically_and_keep_every_sentence(file_name):
    pages = extract_pages(EVAL_PDFS / file_name)

    chunks = chunk_pages(pages, chunk_size=1000, chunk_overlap=200)

    assert chunks == chunk_pages(extract_pages(EVAL_PDFS / file_name), chunk_size=1000, chunk_overlap=200)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert max(len(chunk.text) for chunk in chunks) <= 1000
    assert all(chunk.text.strip() == chunk.text and chunk.text for chunk in chunks)
    assert all(1 <= chunk.first_page <= chunk.last_page <= len(pages) for chunk in chunks)
    # Page provenance: each chunk's first and last lines come from its first and last pages.
    assert all(chunk.text.split("\n")[0] in pages[chunk.first_page - 1].text for chunk in chunks)
    assert all(chunk.text.split("\n")[-1] in pages[chunk.last_page - 1].text for chunk in chunks)
    # Nothing is lost: every sentence of every page (but its first and last, which may hold a page number) shows up.
    chunked = " ".join(" ".join(chunk.text.split()) for chunk in chunks)
    boundaries = re.compile(r"(?<=[.!?:;])\s+|\s+(?=[•◦▪∗*–-] |\d+(?:\.\d+)*\.? +[A-Z])")
    sentences = [sentence for page in pages for sentence in boundaries.split(" ".join(page.text.split()))[1:-1]]
    assert len(sentences) > 300
    assert [sentence for sentence in sentences if len(sentence) < 900 and sentence not in chunked] == []
