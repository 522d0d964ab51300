"""Render a report :class:`~medmeta.report.document.Document` as GitHub-flavoured Markdown.

Text is escaped so that names cannot become markup: Markdown punctuation gets a backslash
(CommonMark allows one before any ASCII punctuation) and ``<``/``>`` too, so raw HTML in a
class name stays text; ``_`` inside a word is left alone (it is not emphasis there).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from medmeta.report.document import (
    Block,
    Bullets,
    Code,
    Document,
    Figure,
    FigureGrid,
    KeyValues,
    Paragraph,
    Table,
    Tiles,
)

__all__ = ["md_escape", "render_markdown"]

_SPECIAL = re.compile(r"([\\`*\[\]<>|#!{}~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def md_escape(text: object) -> str:
    """``text`` as literal Markdown inline text (one line: newlines become spaces)."""
    flat = " ".join(str(text).split())
    return _SPECIAL.sub(r"\\\1", flat).replace("&", "&amp;")


def _table(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    align = ["---:" if i < len(numeric) and numeric[i] else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _block(b: Block) -> str:
    if isinstance(b, Paragraph):
        return f"*{md_escape(b.text)}*" if b.muted else md_escape(b.text)
    if isinstance(b, Bullets):
        items = "\n".join(f"- {md_escape(i)}" for i in b.items)
        return f"### {md_escape(b.title)}\n\n{items}" if b.title else items
    if isinstance(b, KeyValues):
        return _table(["Item", "Value"], [[k, v] for k, v in b.pairs], [False, False])
    if isinstance(b, Table):
        caption = f"**{md_escape(b.caption)}**\n\n" if b.caption else ""
        return caption + _table(b.flat_header(), b.rows, b.numeric)
    if isinstance(b, Figure):
        src = quote(b.src, safe="/")
        return f"![{md_escape(b.alt)}]({src})\n\n*Figure {b.number}. {md_escape(b.caption)}*"
    if isinstance(b, FigureGrid):
        return "\n\n".join(_block(f) for f in b.figures)
    if isinstance(b, Code):
        fence = "```"
        while fence in b.text:
            fence += "`"
        return f"{fence}\n{b.text}\n{fence}"
    if isinstance(b, Tiles):
        return "\n".join(
            f"- **{md_escape(t.label)}: {md_escape(t.value)}**"
            + (f" ({md_escape(t.note)})" if t.note else "")
            for t in b.tiles
        )
    raise TypeError(f"unknown report block {type(b).__name__}")  # pragma: no cover


def render_markdown(doc: Document) -> str:
    """The whole report as Markdown text (ends with a newline)."""
    parts = [f"# {md_escape(doc.title)}"]
    if doc.subtitle:
        parts.append(f"*{md_escape(doc.subtitle)}*")
    for s in doc.sections:
        if not s.blocks:
            continue
        parts.append(f"## {md_escape(s.title)}")
        parts += [_block(b) for b in s.blocks]
    return "\n\n".join(parts) + "\n"
