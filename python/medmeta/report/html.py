"""Render a report :class:`~medmeta.report.document.Document` as one HTML page.

The page is one self-contained file: inline CSS, system fonts, no scripts, and the figures
embedded as ``data:image/png;base64`` URIs when their bytes are given (else linked by
relative path), so it can be attached to a message or an audit record on its own. All text
goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
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

__all__ = ["render_html"]

CSS = """
:root { --fg: #1f2933; --muted: #52606d; --accent: #1c5d99; --border: #d9e2ec;
        --soft: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
.wrap { max-width: 1060px; margin: 0 auto; padding: 0 28px; }
header.top { background: var(--accent); color: #fff; padding: 26px 0 18px; }
header.top h1 { margin: 0 0 4px; font-size: 1.75em; line-height: 1.25; }
header.top .sub { opacity: 0.85; font-size: 0.95em; }
nav.toc { border-bottom: 1px solid var(--border); background: var(--soft); padding: 8px 0;
          font-size: 0.92em; }
nav.toc .wrap { display: flex; flex-wrap: wrap; gap: 2px 20px; }
nav.toc a { color: var(--accent); text-decoration: none; white-space: nowrap; }
nav.toc a:hover { text-decoration: underline; }
section { margin: 34px 0 10px; }
h2 { font-size: 1.35em; margin: 0 0 14px; padding-bottom: 5px;
     border-bottom: 2px solid var(--border); }
h3 { font-size: 1.05em; margin: 22px 0 6px; }
p { margin: 8px 0 14px; max-width: 80ch; }
p.muted { color: var(--muted); font-size: 0.9em; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr));
         gap: 12px; margin: 6px 0 20px; }
.tile { border: 1px solid var(--border); border-radius: 8px; padding: 12px 14px;
        background: var(--soft); }
.tile .label { color: var(--muted); font-size: 0.86em; }
.tile .value { color: var(--accent); font-size: 1.3em; font-weight: 650;
               font-variant-numeric: tabular-nums; line-height: 1.3; white-space: nowrap; }
.tile .note { color: var(--muted); font-size: 0.8em; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; margin: 6px 0 18px; }
caption { text-align: left; font-weight: 600; padding: 4px 0 8px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--border); text-align: left;
         vertical-align: top; }
thead th { border-bottom: 2px solid #bcccdc; font-weight: 600; background: #fff; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--soft); }
.scroll { overflow-x: auto; }
table.kv { width: auto; min-width: 50%; }
table.kv th { font-weight: 500; color: var(--muted); padding-right: 32px; white-space: nowrap; }
table.kv tbody tr:nth-child(even) { background: none; }
th.group { text-align: center; border-bottom: 1px solid #bcccdc; }
figure { margin: 22px 0 26px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr));
        gap: 0 28px; align-items: start; }
.grid figure { margin: 14px 0 18px; }
.grid figure img { width: 100%; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--border);
             border-radius: 4px; background: #fff; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 6px; max-width: 90ch; }
ul { padding-left: 22px; margin: 6px 0 14px; }
li { margin: 3px 0; max-width: 90ch; }
pre { background: var(--soft); border: 1px solid var(--border); border-radius: 4px;
      padding: 10px 14px; white-space: pre-wrap; word-break: break-word;
      font: 0.88em/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
footer { color: var(--muted); font-size: 0.85em; border-top: 1px solid var(--border);
         margin-top: 40px; padding: 12px 0 28px; }
@media print {
  header.top { background: none; color: var(--fg); }
  nav.toc { display: none; }
  figure, table, .tile { break-inside: avoid; }
}
""".strip()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(t: Table) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i < len(t.numeric) and t.numeric[i] else ""

    head = "".join(f'<th{cls(i)} scope="col">{_e(h)}</th>' for i, h in enumerate(t.header))
    if t.groups:
        spans = "".join(
            f'<th colspan="{w}" scope="colgroup" class="group">{_e(g)}</th>'
            if g
            else f'<th colspan="{w}"></th>'
            for g, w in t.groups
        )
        head = f"{spans}</tr><tr>{head}"
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in t.rows
    )
    caption = f"<caption>{_e(t.caption)}</caption>" if t.caption else ""
    return (
        f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _figure_src(src: str, figures: Mapping[str, bytes] | None) -> str:
    if figures is not None and src in figures:
        return "data:image/png;base64," + base64.b64encode(figures[src]).decode("ascii")
    return quote(src, safe="/")


def _block(b: Block, figures: Mapping[str, bytes] | None = None) -> str:
    if isinstance(b, Paragraph):
        return f'<p class="muted">{_e(b.text)}</p>' if b.muted else f"<p>{_e(b.text)}</p>"
    if isinstance(b, Bullets):
        title = f"<h3>{_e(b.title)}</h3>" if b.title else ""
        items = "\n".join(f"<li>{_e(i)}</li>" for i in b.items)
        return f"{title}<ul>\n{items}\n</ul>"
    if isinstance(b, KeyValues):
        rows = "\n".join(
            f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in b.pairs
        )
        return f'<table class="kv"><tbody>\n{rows}\n</tbody></table>'
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        src = _figure_src(b.src, figures)
        return (
            f'<figure id="figure-{b.number}"><img src="{_e(src)}" alt="{_e(b.alt)}">'
            f"<figcaption><b>Figure {b.number}.</b> {_e(b.caption)}</figcaption></figure>"
        )
    if isinstance(b, FigureGrid):
        return (
            '<div class="grid">\n' + "\n".join(_block(f, figures) for f in b.figures) + "\n</div>"
        )
    if isinstance(b, Code):
        return f"<pre><code>{_e(b.text)}</code></pre>"
    if isinstance(b, Tiles):
        tiles = "\n".join(
            f'<div class="tile"><div class="label">{_e(t.label)}</div>'
            f'<div class="value">{_e(t.value)}</div>'
            + (f'<div class="note">{_e(t.note)}</div>' if t.note else "")
            + "</div>"
            for t in b.tiles
        )
        return f'<div class="tiles">\n{tiles}\n</div>'
    raise TypeError(f"unknown report block {type(b).__name__}")  # pragma: no cover


def render_html(doc: Document, figures: Mapping[str, bytes] | None = None) -> str:
    """The whole page as a string (UTF-8 text, ``<!DOCTYPE html>``); ``figures`` maps a
    figure's ``src`` to its PNG bytes, embedded in the page."""
    toc = "".join(f'<a href="#{_e(s.id)}">{_e(s.title)}</a>' for s in doc.sections if s.blocks)
    sections = "\n".join(
        f'<section id="{_e(s.id)}">\n<h2>{_e(s.title)}</h2>\n'
        + "\n".join(_block(b, figures) for b in s.blocks)
        + "\n</section>"
        for s in doc.sections
        if s.blocks
    )
    sub = f'<div class="sub">{_e(doc.subtitle)}</div>' if doc.subtitle else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="medmeta.report">
<title>{_e(doc.title)}</title>
<style>
{CSS}
</style>
</head>
<body>
<header class="top"><div class="wrap"><h1>{_e(doc.title)}</h1>{sub}</div></header>
<nav class="toc"><div class="wrap">{toc}</div></nav>
<main class="wrap">
{sections}
</main>
<footer><div class="wrap">Made with medmeta.</div></footer>
</body>
</html>
"""
