"""Small documents of every format Silo reads, made in the tests with the same libraries Office files are read with
(python-docx, python-pptx, openpyxl), and scans made by rendering text PDFs to images: no files shipped."""

from __future__ import annotations

import io
import zipfile

from tests.pdf_factory import text_pdf


def docx_bytes(blocks: list[tuple[str, object]]) -> bytes:
    """A Word document from ("heading1" | "heading2" | "paragraph" | "bullet" | "caption", text) and
    ("table", rows) blocks, in order."""
    import docx

    document = docx.Document()
    for kind, content in blocks:
        if kind.startswith("heading"):
            document.add_heading(str(content), level=int(kind.removeprefix("heading")))
        elif kind == "paragraph":
            document.add_paragraph(str(content))
        elif kind == "bullet":
            document.add_paragraph(str(content), style="List Bullet")
        elif kind == "caption":
            document.add_paragraph(str(content), style="Caption")
        elif kind == "table":
            rows = list(content)  # type: ignore[call-overload]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for row, values in zip(table.rows, rows, strict=True):
                for cell, value in zip(row.cells, values, strict=True):
                    cell.text = str(value)
        else:
            raise ValueError(kind)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def pptx_bytes(slides: list[dict]) -> bytes:
    """A presentation: each slide {"title": ..., "bullets": [...], "table": rows (optional), "notes": ...}."""
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    for spec in slides:
        slide = presentation.slides.add_slide(presentation.slide_layouts[1])
        slide.shapes.title.text = spec["title"]
        body = slide.placeholders[1].text_frame
        bullets = spec.get("bullets", [])
        body.text = bullets[0] if bullets else ""
        for bullet in bullets[1:]:
            body.add_paragraph().text = bullet
        if "table" in spec:
            rows = spec["table"]
            shape = slide.shapes.add_table(len(rows), len(rows[0]), Inches(1), Inches(4), Inches(6), Inches(2))
            for row_index, values in enumerate(rows):
                for column, value in enumerate(values):
                    shape.table.cell(row_index, column).text = str(value)
        if "notes" in spec:
            slide.notes_slide.notes_text_frame.text = spec["notes"]
    buffer = io.BytesIO()
    presentation.save(buffer)
    return buffer.getvalue()


def xlsx_bytes(sheets: dict[str, list[list[object]]]) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def xlsx_with_rows(row_count: int) -> bytes:
    """An XLSX of `row_count` rows written straight as sheet XML (openpyxl would take minutes for a million)."""
    template = xlsx_bytes({"Data": [["placeholder"]]})
    source = zipfile.ZipFile(io.BytesIO(template))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename == "xl/worksheets/sheet1.xml":
                rows = "".join(
                    f'<row r="{number}"><c r="A{number}"><v>{number}</v></c></row>'
                    for number in range(1, row_count + 1)
                )
                target.writestr(
                    item.filename,
                    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
                    '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                    f"<sheetData>{rows}</sheetData></worksheet>",
                )
            else:
                target.writestr(item, source.read(item.filename))
    return buffer.getvalue()


def zip_bomb_xlsx(unpacked_megabytes: int = 400) -> bytes:
    """A valid-looking XLSX whose one sheet unpacks to `unpacked_megabytes` of zeros from a few hundred kilobytes."""
    template = xlsx_bytes({"Data": [["placeholder"]]})
    source = zipfile.ZipFile(io.BytesIO(template))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if item.filename == "xl/worksheets/sheet1.xml":
                with target.open(item.filename, "w", force_zip64=True) as member:
                    block = b"0" * (1024 * 1024)
                    for _ in range(unpacked_megabytes):
                        member.write(block)
            else:
                target.writestr(item, source.read(item.filename))
    return buffer.getvalue()


def encrypted_docx(content: bytes, password: str = "secret") -> bytes:
    """A Word document protected with a password, as Office writes it (an OLE file wrapping the encrypted package)."""
    from msoffcrypto.format.ooxml import OOXMLFile

    encrypted = io.BytesIO()
    OOXMLFile(io.BytesIO(content)).encrypt(password, encrypted)
    return encrypted.getvalue()


def scanned_pdf(pdf: bytes, dpi: int = 150) -> bytes:
    """Every page of `pdf` rendered to a grayscale image at `dpi`, saved as an image-only PDF: a scan of it."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    images = [document[index].render(scale=dpi / 72, grayscale=True).to_pil() for index in range(len(document))]
    document.close()
    buffer = io.BytesIO()
    images[0].save(buffer, "PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return buffer.getvalue()


def mixed_pdf(pages: list[tuple[str, bool]], dpi: int = 150) -> bytes:
    """Pages of text, each either with its text layer (False) or scanned (True), in order."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for text, scanned in pages:
        page_pdf = text_pdf([text])
        if scanned:
            page_pdf = scanned_pdf(page_pdf, dpi)
        writer.append(PdfReader(io.BytesIO(page_pdf)))
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
