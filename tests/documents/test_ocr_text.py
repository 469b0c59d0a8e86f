"""What OCR hands the chunker: Tesseract's words (its TSV: block, paragraph, line, box, confidence) laid out as the
page's paragraphs, with margin notes set apart from the sentences they sit beside and noise dropped."""

from __future__ import annotations

from documents.chunking import sentence_spans
from documents.ocr import text_from_tesseract_data

HEADER = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
WORD_WIDTH = 60  # every word of these pages is drawn 60 pixels wide with a 10-pixel space


def _tsv(lines: list[tuple[int, int, int, int, str]], confidence: float = 95.0) -> str:
    """Tesseract's TSV for lines given as (block, paragraph, line, left edge, words); the rows of levels 1-4 (page,
    block, paragraph, line) are left out, as the reader skips them."""
    rows = [HEADER, "1\t1\t0\t0\t0\t0\t0\t0\t2480\t3508\t-1\t"]
    for top, (block, paragraph, line, left, words) in enumerate(lines):
        for number, word in enumerate(words.split(), start=1):
            x = left + (number - 1) * (WORD_WIDTH + 10)
            rows.append(f"5\t1\t{block}\t{paragraph}\t{line}\t{number}\t{x}\t{100 + 50 * top}\t{WORD_WIDTH}\t40")
            rows[-1] += f"\t{confidence}\t{word}"
    return "\n".join(rows) + "\n"


def test_paragraphs_keep_their_lines_and_are_separated_by_a_blank_line():
    data = _tsv(
        [
            (1, 1, 1, 300, "The lamp is cleaned"),
            (1, 1, 2, 300, "at dawn by the keeper."),
            (1, 2, 1, 300, "Tides are posted weekly."),
        ]
    )

    assert text_from_tesseract_data(data) == "The lamp is cleaned\nat dawn by the keeper.\n\nTides are posted weekly."


def test_a_margin_note_read_inside_a_sentence_goes_after_the_body_as_a_paragraph_of_its_own():
    # Tesseract's reading order put the note (a narrow block in the left margin) between two halves of a sentence.
    data = _tsv(
        [
            (1, 1, 1, 600, "The option now also affects the part"),
            (1, 1, 2, 600, "commands and the front matter, so"),
            (2, 1, 1, 50, "Changed"),
            (2, 1, 2, 50, "2020"),
            (3, 1, 1, 600, "chapters may start on either page."),
        ]
    )

    assert text_from_tesseract_data(data) == (
        "The option now also affects the part\ncommands and the front matter, so\n"
        "chapters may start on either page.\n\nChanged\n2020"
    )


def test_the_two_columns_of_a_page_stay_in_their_order_and_neither_is_taken_for_a_margin_note():
    data = _tsv(
        [
            (1, 1, 1, 200, "Left column text is read first."),
            (2, 1, 1, 1300, "Right column text comes after."),
        ]
    )

    assert text_from_tesseract_data(data) == "Left column text is read first.\n\nRight column text comes after."


def test_a_short_block_inside_the_body_column_is_kept_where_tesseract_read_it():
    # A heading or a one-word line is narrow too, but it sits within the body's column: not a margin note.
    data = _tsv(
        [
            (1, 1, 1, 300, "Introduction"),
            (2, 1, 1, 300, "The lamp is cleaned at dawn by the keeper on duty."),
        ]
    )

    assert text_from_tesseract_data(data) == "Introduction\n\nThe lamp is cleaned at dawn by the keeper on duty."


def test_a_paragraph_cut_mid_sentence_is_joined_to_its_lower_case_continuation():
    data = _tsv(
        [
            (1, 1, 1, 300, "The ferry leaves the north pier"),
            (2, 1, 1, 300, "at seven and returns by noon."),
            (3, 1, 1, 300, "Tickets are sold on board."),
        ]
    )

    assert text_from_tesseract_data(data) == (
        "The ferry leaves the north pier\nat seven and returns by noon.\n\nTickets are sold on board."
    )


def test_lines_without_a_letter_or_digit_that_tesseract_is_unsure_of_are_dropped():
    noisy = _tsv([(1, 1, 1, 300, "The lamp is cleaned at dawn."), (1, 1, 2, 300, "~ — ,")], confidence=30.0)
    confident_rule = _tsv([(1, 1, 1, 300, "Total"), (1, 1, 2, 300, "— —")], confidence=90.0)

    assert text_from_tesseract_data(noisy) == "The lamp is cleaned at dawn."
    assert text_from_tesseract_data(confident_rule) == "Total\n— —"


def test_a_page_tesseract_found_no_words_on_is_empty():
    assert text_from_tesseract_data(HEADER + "\n1\t1\t0\t0\t0\t0\t0\t0\t2480\t3508\t-1\t\n") == ""
    assert text_from_tesseract_data("") == ""


def test_the_chunker_sees_a_sentence_whole_when_a_margin_note_was_read_inside_it():
    data = _tsv(
        [
            (1, 1, 1, 600, "It now also affects the part"),
            (2, 1, 1, 50, "New"),
            (3, 1, 1, 600, "and front matter commands."),
        ]
    )
    text = text_from_tesseract_data(data)

    assert [text[start:end] for start, end in sentence_spans(text)] == [
        "It now also affects the part\nand front matter commands.",
        "New",
    ]
