"""The report as a document: a list of blocks (headings, paragraphs, bullet lists, tables,
figures), written out by `bench.report.render`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str
    emphasis: bool = False  # a note, rendered in italics


@dataclass
class Bullets:
    items: list[tuple[str, str]]  # (bold label, text); label may be ""


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-aligned columns


@dataclass
class Figure:
    filename: str  # the PNG, next to report.md
    caption: str
    number: int
    alt: str = ""  # short text for the image itself (the plot's title)


Block = Heading | Paragraph | Bullets | Table | Figure
