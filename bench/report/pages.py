"""The report's pages. By default a site to browse, every figure a PNG file beside its page
(loaded lazily, so a page of fifty figures opens at once):

    OUT/index.html, index.md        every suite: budgets, runs by status, when its last run
                                    ended, a link to its page
    OUT/<suite>.html, <suite>.md    one suite: its own table of contents, links to the index
                                    and to the previous and next suite
    OUT/<suite>/*.png               its figures

or, with `single_file`, OUT/report.html alone: every suite on one self-contained page (each
figure a data: URI, a table of contents at the top), to mail. The Markdown pages carry the
same content as the HTML ones and link each other (and the same PNGs)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.report.data import STATUS_COLUMNS, SuiteData, load_suite_data, suite_overview
from bench.report.document import (
    Block,
    Bullets,
    Heading,
    Link,
    Nav,
    Paragraph,
    contents,
    shifted,
    with_anchors,
)
from bench.report.history import history_section
from bench.report.render import render_html, render_markdown
from bench.report.sections import _Report, _suite_section
from bench.report.tables import index_table

INDEX = "index"  # the index's stem: index.html, index.md
SINGLE_FILE = "report.html"  # the self-contained report (`single_file`)
_RESERVED = frozenset({INDEX, "report"})  # stems a suite's page must not take


@dataclass(frozen=True)
class ReportPages:
    """What `build_report` wrote: the page to open first, and each suite's HTML page (with
    `single_file` both are report.html). A suite's Markdown page is its HTML page's path
    with the suffix .md (none with `single_file`)."""

    index: Path
    suites: Mapping[str, Path]


def page_stems(suites: Sequence[str]) -> dict[str, str]:
    """Each suite's page stem (also the name of its figures' folder): its name made safe for
    a file name, never "index" or "report" (the index and the single file), unique."""
    stems: dict[str, str] = {}
    for name in suites:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "suite"
        if base in _RESERVED:
            base = f"suite-{base}"
        stem, i = base, 2
        while stem in stems.values():
            stem, i = f"{base}-{i}", i + 1
        stems[name] = stem
    return stems


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _suite_data(root: Path, runs: pd.DataFrame, name: str, skip_corrupt: bool) -> SuiteData:
    return load_suite_data(root, name, skip_corrupt=skip_corrupt,
                           runs=runs[runs["suite"] == name])


def _write(out: Path, stem: str, blocks: Sequence[Block], images: Mapping[str, bytes],
           title: str) -> Path:
    (out / f"{stem}.md").write_text(render_markdown(blocks), encoding="utf-8")
    page = out / f"{stem}.html"
    page.write_text(render_html(blocks, images, title, inline=False), encoding="utf-8")
    return page


def write_site(root: Path, out: Path, runs: pd.DataFrame, chosen: Sequence[str], *,
               skip_corrupt: bool = False) -> ReportPages:
    """The index and one page per suite of `chosen` (see the module's docstring)."""
    stems = page_stems(chosen)
    generated = _stamp()
    overviews, pages = [], {}
    for i, name in enumerate(chosen):
        data = _suite_data(root, runs, name, skip_corrupt)
        overviews.append(suite_overview(data))
        page = _Report(out, folder=stems[name])
        _suite_section(page, data)  # "Suite <name>" at level 2, its sections below
        history_section(page, root, name, level=3)  # where `vaebench track` kept any
        blocks = with_anchors(shifted(page.blocks, -1))  # the suite is the page's title
        nav = [Link("index: all suites", INDEX)]
        if i > 0:
            nav.append(Link(f"previous: {chosen[i - 1]}", stems[chosen[i - 1]]))
        if i + 1 < len(chosen):
            nav.append(Link(f"next: {chosen[i + 1]}", stems[chosen[i + 1]]))
        first = next((j for j, b in enumerate(blocks) if isinstance(b, Heading)
                      and b.level == 2), len(blocks))
        blocks = [Nav(nav), *blocks[:first],
                  Paragraph(f"Report generated {generated} from {root}.", emphasis=True),
                  Heading(2, "Contents"), contents(blocks, range(2, 5)), *blocks[first:],
                  Nav(nav)]
        pages[name] = _write(out, stems[name], blocks, page.images,
                             f"vaebench report: suite {name}")

    total = sum(o.runs for o in overviews)
    by_status = {s: sum(dict(o.status)[s] for o in overviews) for s in STATUS_COLUMNS}
    index: list[Block] = [
        Heading(1, "vaebench report"),
        Bullets([("generated", generated), ("results", str(root)),
                 ("suites", f"{len(chosen)}"),
                 ("runs", f"{total:,} ({', '.join(f'{n:,} {s}' for s, n in by_status.items())})"),
                 ]),
        index_table(overviews, stems),
        Paragraph("Each suite's page opens with its table of contents; its figures are the "
                  "PNG files in the folder of the same name. vaebench report --single-file "
                  f"writes the whole report as one self-contained {SINGLE_FILE} (to mail).",
                  emphasis=True),
    ]
    return ReportPages(_write(out, INDEX, index, {}, "vaebench report"), pages)


def write_single_file(root: Path, out: Path, runs: pd.DataFrame, chosen: Sequence[str], *,
                      skip_corrupt: bool = False) -> ReportPages:
    """Every suite of `chosen` on one self-contained page, OUT/report.html (the figures drawn
    in a scratch folder and inlined: nothing else is written)."""
    with tempfile.TemporaryDirectory(prefix="vaebench-report-") as scratch:
        report = _Report(Path(scratch))
        for name in chosen:
            _suite_section(report, _suite_data(root, runs, name, skip_corrupt))
            history_section(report, root, name, level=3)
        title = f"vaebench report: {', '.join(chosen)}" if len(chosen) <= 3 else \
            f"vaebench report: {len(chosen)} suites"
        blocks = with_anchors(report.blocks)
        head: list[Block] = [
            Heading(1, title),
            Bullets([("generated", _stamp()), ("results", str(root)),
                     ("suites", ", ".join(chosen))]),
            contents(blocks, range(2, 4)),
        ]
        page = out / SINGLE_FILE
        page.write_text(render_html([*head, *blocks], report.images, title, inline=True),
                        encoding="utf-8")
    return ReportPages(page, {name: page for name in chosen})
