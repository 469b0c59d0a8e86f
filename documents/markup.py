"""Text formats -> located text units: HTML (Beautiful Soup), Markdown (markdown-it-py) and plain text.

HTML is read as data: scripts, styles and embedded objects are dropped, nothing is executed or fetched, and what
Silo keeps is the text, shown as text. Markdown keeps its own source lines (the user's words, as written), split at
headings with markdown-it's block map, tables on their own under their heading.
"""

from __future__ import annotations

from pathlib import Path

from documents.office import BEFORE_FIRST_HEADING, _SectionedUnits
from documents.parse_errors import ParseLimits
from documents.parsing import TextUnit, normalise_text

_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_DROPPED = ["script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "canvas", "head"]
_BLOCKS = {
    "p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "li", "ul", "ol", "dl", "dt", "dd",
    "pre", "blockquote", "figure", "figcaption", "address", "body", "html", "form", "fieldset", "details", "summary",
}  # fmt: skip
# Plain text has no headings: units of this many lines, located by line numbers.
TEXT_UNIT_LINES = 60


def html_units(path: Path, limits: ParseLimits) -> list[TextUnit]:
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(path.read_text(encoding="utf-8-sig"), "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for element in soup.find_all(_DROPPED):
        element.decompose()
    collector = _SectionedUnits()
    inline: list[str] = []

    def flush_inline() -> None:
        text = " ".join("".join(inline).split())
        if text:
            collector.paragraph(text)
        inline.clear()

    def walk(element: Tag) -> None:
        for child in element.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a comment, CDATA or doctype
                    inline.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            if child.name in _HEADINGS:
                flush_inline()
                collector.heading(_HEADINGS[child.name], child.get_text(" ", strip=True))
            elif child.name == "table":
                flush_inline()
                caption_tag = child.find("caption")
                caption = caption_tag.get_text(" ", strip=True) if caption_tag else ""
                if caption_tag:
                    caption_tag.decompose()
                rows = [
                    [cell.get_text(" ", strip=True) for cell in row.find_all(["th", "td"])]
                    for row in child.find_all("tr")
                ]
                collector.table(caption, rows)
            elif child.name == "br":
                inline.append("\n")
            elif child.name in _BLOCKS:
                flush_inline()
                if child.name == "li":
                    inline.append("• ")
                walk(child)
                flush_inline()
            else:
                walk(child)

    if title:
        collector.heading(0, title)
    walk(soup)
    flush_inline()
    return collector.finish()


def markdown_units(path: Path, limits: ParseLimits) -> list[TextUnit]:
    from markdown_it import MarkdownIt

    source = path.read_text(encoding="utf-8-sig")
    lines = source.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(source)
    collector = _SectionedUnits()
    covered = 0  # lines before this one have been placed
    for position, token in enumerate(tokens):
        if token.level != 0 or token.map is None or token.nesting == -1:
            continue
        start, end = token.map
        if token.type == "heading_open":
            _paragraph_lines(collector, lines[covered:start])
            inline = tokens[position + 1]
            collector.heading(int(token.tag[1:]), inline.content)
            covered = end
        elif token.type == "table_open":
            _paragraph_lines(collector, lines[covered:start])
            collector.table(collector.path and f"Table in “{collector.path}”", [[line] for line in lines[start:end]])
            covered = end
    _paragraph_lines(collector, lines[covered:])
    return collector.finish()


def _paragraph_lines(collector: _SectionedUnits, lines: list[str]) -> None:
    text = "\n".join(lines).strip()
    if text:
        collector.paragraph(text)


def text_units(path: Path, limits: ParseLimits) -> list[TextUnit]:
    units: list[TextUnit] = []
    with path.open(encoding="utf-8-sig") as file:
        lines = file.read().splitlines()
    for first in range(0, len(lines), TEXT_UNIT_LINES):
        text = normalise_text("\n".join(lines[first : first + TEXT_UNIT_LINES]))
        if text:
            last = min(first + TEXT_UNIT_LINES, len(lines))
            units.append(TextUnit(len(units) + 1, text, location=f"Lines {first + 1}-{last}"))
    return units


__all__ = ["BEFORE_FIRST_HEADING", "html_units", "markdown_units", "text_units"]
