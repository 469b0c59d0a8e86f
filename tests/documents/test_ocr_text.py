"""What OCR hands the chunker: Tesseract's words (its TSV: block, paragraph, line, box, confidence) laid out as the
page's paragraphs, with margin notes set apart from the sentences they sit beside and noise dropped."""

from __future__ import annotations

from documents.chunking import sentence_spans
from documents.ocr import text_from_tesseract_data

HEADER = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext"
WORD_WIDTH = 60  # every word of these pages is drawn 60 pixels wide and 40 high, with a 10-pixel space
BODY, RIGHT_MARGIN = 300, 1200  # where the body's lines and the margin notes start: a gutter of 400 pixels between

Line = tuple[int, int, int, list[tuple[int, str]]]  # block, paragraph, line, [(left edge, words), ...]


def _tsv(lines: list[Line], confidence: float = 95.0) -> str:
    """Tesseract's TSV for the lines; the rows of levels 1-4 (page, block, paragraph, line) are left out, as the
    reader skips them."""
    rows = [HEADER]
    for top, (block, paragraph, line, runs) in enumerate(lines):
        number = 0
        for left, words in runs:
            for position, word in enumerate(words.split()):
                number += 1
                x = left + position * (WORD_WIDTH + 10)
                rows.append(f"5\t1\t{block}\t{paragraph}\t{line}\t{number}\t{x}\t{100 + 50 * top}\t{WORD_WIDTH}\t40")
                rows[-1] += f"\t{confidence}\t{word}"
    return "\n".join(rows) + "\n"


def _body(block: int, paragraph: int, line: int, words: str) -> Line:
    return (block, paragraph, line, [(BODY, words)])


def test_paragraphs_keep_their_lines_and_are_separated_by_a_blank_line():
    data = _tsv(
        [
            _body(1, 1, 1, "The lamp is cleaned"),
            _body(1, 1, 2, "at dawn by the keeper."),
            _body(1, 2, 1, "Tides are posted weekly."),
        ]
    )

    assert text_from_tesseract_data(data) == "The lamp is cleaned\nat dawn by the keeper.\n\nTides are posted weekly."


NOTED_PAGE = [
    _body(1, 1, 1, "The keeper cleans the lamp"),
    _body(1, 1, 2, "at dawn and trims the wick"),
    (1, 1, 3, [(BODY, "before the evening ferry;"), (RIGHT_MARGIN, "New")]),
    (1, 1, 4, [(BODY, "the option now also affects"), (RIGHT_MARGIN, "feature")]),
    _body(1, 1, 5, "the part and front matter."),
    _body(1, 2, 1, "Tides are posted weekly at"),
    _body(1, 2, 2, "the harbour office door."),
]


def test_a_margin_note_read_inside_the_body_lines_follows_the_paragraph_it_sits_beside_as_one_of_its_own():
    # Tesseract read each line across the gutter: the note's words end the body's lines.
    assert text_from_tesseract_data(_tsv(NOTED_PAGE)) == (
        "The keeper cleans the lamp\nat dawn and trims the wick\nbefore the evening ferry;\n"
        "the option now also affects\nthe part and front matter.\n\n"
        "New\nfeature\n\n"
        "Tides are posted weekly at\nthe harbour office door."
    )


def test_the_chunker_sees_the_sentence_whole_once_the_margin_note_is_set_apart():
    text = text_from_tesseract_data(_tsv(NOTED_PAGE))

    assert "the option now also affects\nthe part and front matter." in [
        text[start:end] for start, end in sentence_spans(text)
    ]


def test_the_two_columns_of_a_page_are_neither_taken_for_margins_nor_reordered():
    data = _tsv(
        [(1, 1, line, [(BODY, "Left column text is read first.")]) for line in (1, 2, 3)]
        + [(2, 1, line, [(RIGHT_MARGIN, "Right column text comes after.")]) for line in (1, 2, 3)]
    )

    left, right = "Left column text is read first.", "Right column text comes after."
    assert text_from_tesseract_data(data) == "\n".join([left] * 3) + "\n\n" + "\n".join([right] * 3)


def test_the_last_column_of_a_table_is_not_taken_for_a_margin_note():
    # A word in the narrow column on every row: a table, not notes.
    rows = [(1, 1, line, [(BODY, f"Lamp room {line}"), (RIGHT_MARGIN, str(line * 12))]) for line in range(1, 7)]

    assert text_from_tesseract_data(_tsv(rows)) == "\n".join(f"Lamp room {n} {n * 12}" for n in range(1, 7))


def test_a_paragraph_cut_mid_sentence_is_joined_to_its_lower_case_continuation():
    data = _tsv(
        [
            _body(1, 1, 1, "The ferry leaves the north pier"),
            _body(2, 1, 1, "at seven and returns by noon."),
            _body(3, 1, 1, "Tickets are sold on board."),
        ]
    )

    assert text_from_tesseract_data(data) == (
        "The ferry leaves the north pier\nat seven and returns by noon.\n\nTickets are sold on board."
    )


def test_a_bullet_tesseract_read_as_the_letter_e_at_a_line_start_is_a_bullet_again():
    data = _tsv(
        [
            _body(1, 1, 1, "e No limits for the lamp."),
            _body(1, 2, 1, "e It is free: anyone may use it."),
            _body(1, 3, 1, "The constant e is kept."),
        ]
    )

    assert text_from_tesseract_data(data) == (
        "• No limits for the lamp.\n\n• It is free: anyone may use it.\n\nThe constant e is kept."
    )


def test_lines_without_a_letter_or_digit_that_tesseract_is_unsure_of_are_dropped():
    noisy = _tsv([_body(1, 1, 1, "The lamp is cleaned at dawn."), _body(1, 1, 2, "~ — ,")], confidence=30.0)
    confident_rule = _tsv([_body(1, 1, 1, "Total"), _body(1, 1, 2, "— —")], confidence=90.0)

    assert text_from_tesseract_data(noisy) == "The lamp is cleaned at dawn."
    assert text_from_tesseract_data(confident_rule) == "Total\n— —"


def test_a_page_tesseract_found_no_words_on_is_empty():
    assert text_from_tesseract_data(HEADER + "\n1\t1\t0\t0\t0\t0\t0\t0\t2480\t3508\t-1\t\n") == ""
    assert text_from_tesseract_data("") == ""
