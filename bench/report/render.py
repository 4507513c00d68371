"""The document written out: GitHub-flavoured Markdown, an HTML page (inline CSS; every figure
either a PNG file beside the page, lazy-loaded, or a data: URI for a self-contained page), and
a table as aligned plain text for the terminal."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from bench.report.document import (
    Block,
    Bullets,
    Contents,
    Figure,
    Heading,
    Link,
    Nav,
    Paragraph,
    Table,
    cell_text,
)

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(text: str) -> str:
    """Text safe in Markdown (tables included): no emphasis, links, HTML or cell breaks."""
    text = " ".join(str(text).split())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _href(link: Link, extension: str) -> str:
    """The link's target: its page with this renderer's extension, then its anchor."""
    page = f"{link.page}.{extension}" if link.page else ""
    return page + (f"#{link.anchor}" if link.anchor else "")


def _md_link(link: Link) -> str:
    return f"[{md_escape(link.text)}]({_href(link, 'md')})"


def _md_cell(cell: str | Link) -> str:
    return _md_link(cell) if isinstance(cell, Link) else md_escape(cell)


def render_markdown(blocks: Sequence[Block]) -> str:
    """GitHub-flavoured Markdown; figures link their PNG files, links go to the .md pages."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, Paragraph):
            text = md_escape(block.text)
            parts.append(f"*{text}*" if block.emphasis else text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(
                f"- **{md_escape(label)}:** {md_escape(text)}" if label else
                f"- {md_escape(text)}" for label, text in block.items))
        elif isinstance(block, Table):
            head = "| " + " | ".join(md_escape(h) for h in block.headers) + " |"
            rule = "| " + " | ".join("---:" if right else "---" for right in block.numeric) \
                + " |"
            rows = ["| " + " | ".join(_md_cell(c) or " " for c in row) + " |"
                    for row in block.rows]
            parts.append("\n".join([head, rule, *rows]))
        elif isinstance(block, Figure):
            caption = md_escape(f"Figure {block.number}: {block.caption}")
            alt = md_escape(f"Figure {block.number}: {block.alt or block.caption}")
            parts.append(f"![{alt}]({block.filename})\n\n*{caption}*")
        elif isinstance(block, Contents):
            if block.entries:
                parts.append("\n".join(f"{'  ' * depth}- {_md_link(link)}"
                                       for depth, link in block.entries))
        elif isinstance(block, Nav):
            parts.append(" · ".join(_md_link(link) for link in block.links))
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #1f2328;
       line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.6em; }
.scroll { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border: 1px solid #d0d7de; padding: 4px 6px; vertical-align: top; }
td:first-child { white-space: nowrap; }
th { background: #f6f8fa; text-align: left; vertical-align: bottom; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tr:nth-child(even) td { background: #fbfcfd; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: 0.9em; color: #57606a; margin-top: .3em; }
p.note { color: #57606a; font-style: italic; }
ul { padding-left: 1.4em; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
h2, h3, h4 { scroll-margin-top: .5em; }
p.nav { margin: .4em 0 1em; font-size: 0.95em; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
          padding: .6em 1.2em; margin: 1em 0 1.6em; columns: 2 24em; column-gap: 2em; }
nav.toc ul { list-style: none; margin: 0; padding: 0; }
nav.toc li { margin: .1em 0; break-inside: avoid; }
nav.toc li.d0 { font-weight: 600; margin-top: .4em; }
nav.toc li.d1 { padding-left: 1.2em; }
nav.toc li.d2 { padding-left: 2.4em; font-size: 0.92em; }
nav.toc li.d3 { padding-left: 3.6em; font-size: 0.9em; }
"""


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG's IHDR chunk; None for anything else."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _html_link(link: Link) -> str:
    href = html.escape(_href(link, "html") or "#")
    return f'<a href="{href}">{html.escape(link.text)}</a>'


def render_html(blocks: Sequence[Block], images: Mapping[str, bytes], title: str, *,
                inline: bool = True) -> str:
    """One HTML page with inline CSS. `images`: the figures' PNGs by filename. `inline`: a
    self-contained page, every figure a data: URI (to mail); otherwise each figure is its PNG
    file, `filename` relative to the page, loaded lazily (a page of a hundred figures opens at
    once and fetches them as they scroll into view). Either way an image carries its width and
    height, so the page does not reflow as the images arrive."""
    esc = html.escape
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f' id="{esc(block.anchor)}"' if block.anchor else ""
            body.append(f"<h{block.level}{anchor}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            cls = ' class="note"' if block.emphasis else ""
            body.append(f"<p{cls}>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(
                f"<li><strong>{esc(label)}:</strong> {esc(text)}</li>" if label else
                f"<li>{esc(text)}</li>" for label, text in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            def cell(tag: str, text: str | Link, right: bool) -> str:
                cls = ' class="num"' if right else ""
                if isinstance(text, Link):
                    return f"<{tag}{cls}>{_html_link(text)}</{tag}>"
                shown = esc(text)
                if tag == "th" and not right:  # a config key may break after "_" (kl_direction)
                    shown = shown.replace("_", "_<wbr>")
                return f"<{tag}{cls}>{shown}</{tag}>"

            head = "".join(cell("th", h, r) for h, r in zip(block.headers, block.numeric,
                                                           strict=True))
            rows = "".join(
                "<tr>" + "".join(cell("td", c, r) for c, r in zip(row, block.numeric,
                                                                  strict=True)) + "</tr>"
                for row in block.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                        f"<tbody>{rows}</tbody></table></div>")
        elif isinstance(block, Figure):
            caption = f"Figure {block.number}: {block.caption}"
            png = images[block.filename]
            size = png_size(png)
            dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
            if inline:
                src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
                lazy = ""
            else:
                src, lazy = esc(block.filename), ' loading="lazy"'
            alt = esc(f"Figure {block.number}: {block.alt or block.caption}")
            body.append(f'<figure><img{lazy} src="{src}"{dims} alt="{alt}">'
                        f"<figcaption>{esc(caption)}</figcaption></figure>")
        elif isinstance(block, Contents):
            if block.entries:
                items = "".join(f'<li class="d{min(depth, 3)}">{_html_link(link)}</li>'
                                for depth, link in block.entries)
                body.append(f'<nav class="toc"><ul>{items}</ul></nav>')
        elif isinstance(block, Nav):
            body.append('<p class="nav">' + " · ".join(_html_link(link) for link in block.links)
                        + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")



def format_text_table(table: Table) -> str:
    """A Table as aligned plain text (for the terminal)."""
    rows = [[cell_text(c) for c in row] for row in table.rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(table.headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w)
                         for c, w, right in zip(cells, widths, table.numeric, strict=True))

    return "\n".join([line(table.headers), line(["-" * w for w in widths]),
                      *(line(r) for r in rows)]).rstrip()
