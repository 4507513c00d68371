"""The report as a document: a list of blocks (headings, paragraphs, bullet lists, tables,
figures, a table of contents, a line of links), written out by `bench.report.render`.

A report is several pages (an index and one page per suite, `bench.report.pages`), so a link
names its target page by stem ("smoke", "index"; "" for the page it is on) and each renderer
adds its own extension (smoke.md, smoke.html): the Markdown pages link to each other and the
HTML pages to each other. Headings get their anchors from `with_anchors`, GitHub's slugs, so
the Markdown's table of contents also resolves where GitHub renders the file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""  # the id a table of contents links to (`with_anchors`)


@dataclass
class Paragraph:
    text: str
    emphasis: bool = False  # a note, rendered in italics


@dataclass
class Bullets:
    items: list[tuple[str, str]]  # (bold label, text); label may be ""


@dataclass
class Link:
    text: str
    page: str = ""  # the target page's stem ("smoke", "index"); "" = this page
    anchor: str = ""  # a heading's anchor on that page; "" = its top


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str | Link]]  # a Link cell links (the index's suite names)
    numeric: list[bool]  # right-aligned columns


@dataclass
class Figure:
    filename: str  # the PNG, relative to the page (e.g. "smoke/smoke-cpu-throughput.png")
    caption: str
    number: int
    alt: str = ""  # short text for the image itself (the plot's title)


@dataclass
class Contents:
    """A table of contents: (depth, link) entries, depth 0 the outermost."""

    entries: list[tuple[int, Link]]


@dataclass
class Nav:
    """A line of links (to the index, to the other pages)."""

    links: list[Link]


Block = Heading | Paragraph | Bullets | Table | Figure | Contents | Nav


def cell_text(cell: str | Link) -> str:
    """A table cell's text (a link's text) for plain-text output."""
    return cell.text if isinstance(cell, Link) else cell


def slug(text: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-") or "section"


def with_anchors(blocks: Sequence[Block]) -> list[Block]:
    """`blocks` with every heading given an anchor unique on the page: its slug, and for a
    repeated slug "-1", "-2", ... as GitHub numbers them."""
    seen: set[str] = set()
    out: list[Block] = []
    for block in blocks:
        if isinstance(block, Heading):
            base = slug(block.text)
            anchor, i = base, 1
            while anchor in seen:
                anchor, i = f"{base}-{i}", i + 1
            seen.add(anchor)
            block = replace(block, anchor=anchor)
        out.append(block)
    return out


def contents(blocks: Sequence[Block], levels: range) -> Contents:
    """The table of contents of the anchored headings of `blocks` whose level is in `levels`."""
    return Contents([(b.level - levels.start, Link(b.text, anchor=b.anchor)) for b in blocks
                     if isinstance(b, Heading) and b.level in levels and b.anchor])


def shifted(blocks: Sequence[Block], by: int) -> list[Block]:
    """`blocks` with every heading `by` levels deeper (negative: higher), kept within 1..6:
    a suite's sections, written for a page of all suites (the suite a level-2 heading), are
    a suite's own page with the suite its title."""
    return [replace(b, level=min(6, max(1, b.level + by))) if isinstance(b, Heading) else b
            for b in blocks]
