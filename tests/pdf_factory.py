"""Small PDFs made in the tests: text pages in Helvetica, built with pypdf (no files shipped, nothing installed)."""

from __future__ import annotations

import io

from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject, StreamObject


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def text_pdf_writer(pages: list[str], wrap_width: int | None = 90) -> PdfWriter:
    """One page per string. Words are wrapped at `wrap_width` characters; with None, each "\\n" starts a line."""
    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        lines = _wrap(text, wrap_width) if wrap_width else text.split("\n")
        content = StreamObject()
        shown = "".join(f"({_escape(line)}) Tj T* " for line in lines)
        content.set_data(f"BT /F1 11 Tf 14 TL 72 720 Td {shown}ET".encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(content)
    return writer


def pdf_bytes(writer: PdfWriter) -> bytes:
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def text_pdf(pages: list[str], wrap_width: int | None = 90) -> bytes:
    return pdf_bytes(text_pdf_writer(pages, wrap_width))


def image_only_pdf(page_count: int = 1) -> bytes:
    """Pages that each paint a small grey image and carry no text: what a scan looks like."""
    from pypdf.generic import NumberObject

    writer = PdfWriter()
    for _ in range(page_count):
        page = writer.add_blank_page(612, 792)
        image = StreamObject()
        image.set_data(bytes(range(0, 256, 4)))
        image.update(
            {
                NameObject("/Type"): NameObject("/XObject"),
                NameObject("/Subtype"): NameObject("/Image"),
                NameObject("/Width"): NumberObject(8),
                NameObject("/Height"): NumberObject(8),
                NameObject("/ColorSpace"): NameObject("/DeviceGray"),
                NameObject("/BitsPerComponent"): NumberObject(8),
            }
        )
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/XObject"): DictionaryObject({NameObject("/Im1"): writer._add_object(image)})}
        )
        content = StreamObject()
        content.set_data(b"q 500 0 0 700 50 50 cm /Im1 Do Q")
        page[NameObject("/Contents")] = writer._add_object(content)
    return pdf_bytes(writer)


def placed_text_pdf(pages: list[list[tuple[float, float, str]]]) -> bytes:
    """One page per list of (x, y, text): each text shown at that point (PDF points from the bottom left), in
    Helvetica 10, the way typesetters place table cells."""
    writer = text_pdf_writer([""] * len(pages))
    for page, items in zip(writer.pages, pages, strict=True):
        content = StreamObject()
        shown = " ".join(f"BT /F1 10 Tf {x} {y} Td ({_escape(text)}) Tj ET" for x, y, text in items)
        content.set_data(shown.encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(content)
    return pdf_bytes(writer)
