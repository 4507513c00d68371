"""The document written out: GitHub-flavoured Markdown, a self-contained HTML page (inline
CSS, every figure a data: URI), and a table as aligned plain text for the terminal."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from bench.report.document import Block, Bullets, Figure, Heading, Paragraph, Table

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(text: str) -> str:
    """Text safe in Markdown (tables included): no emphasis, links, HTML or cell breaks."""
    text = " ".join(str(text).split())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(blocks: Sequence[Block]) -> str:
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
            rows = ["| " + " | ".join(md_escape(c) or " " for c in row) + " |"
                    for row in block.rows]
            parts.append("\n".join([head, rule, *rows]))
        elif isinstance(block, Figure):
            caption = md_escape(f"Figure {block.number}: {block.caption}")
            alt = md_escape(f"Figure {block.number}: {block.alt or block.caption}")
            parts.append(f"![{alt}]({block.filename})\n\n*{caption}*")
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
"""


def render_html(blocks: Sequence[Block], images: Mapping[str, bytes], title: str) -> str:
    """A self-contained page: inline CSS, every figure a data: URI from `images`."""
    esc = html.escape
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            cls = ' class="note"' if block.emphasis else ""
            body.append(f"<p{cls}>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(
                f"<li><strong>{esc(label)}:</strong> {esc(text)}</li>" if label else
                f"<li>{esc(text)}</li>" for label, text in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            def cell(tag: str, text: str, right: bool) -> str:
                cls = ' class="num"' if right else ""
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
            data = base64.b64encode(images[block.filename]).decode("ascii")
            alt = esc(f"Figure {block.number}: {block.alt or block.caption}")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                        f"<figcaption>{esc(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def format_text_table(table: Table) -> str:
    """A Table as aligned plain text (for the terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in table.rows)) if table.rows else len(h)
              for i, h in enumerate(table.headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w)
                         for c, w, right in zip(cells, widths, table.numeric, strict=True))

    return "\n".join([line(table.headers), line(["-" * w for w in widths]),
                      *(line(r) for r in table.rows)]).rstrip()
