"""A report regenerated from the results store alone: Markdown, self-contained HTML and PNGs.

    build_report("results", "report")            -> report/index.html (+ index.md), a page per
                                                    suite (<suite>.html, .md) and its PNGs
    build_report(..., single_file=True)          -> report/report.html alone, self-contained
    summary_text("results", "bench")             -> the per-variant summary as fixed-width text

No training happens here: everything comes from the Parquet files (`bench.store`), so a
report of a cluster run can be made on a laptop from a copy of the results directory. The
suite file (`suites/<name>.toml`), when it can be found, adds the description, the variant
axes and the published references; without it the report says so and goes on.

The package is in layers, data flowing one way (data -> sections -> document -> render):

* `data`: loading (`load_suite_data`: the runs, curves and samples of one suite, and its
  file) and the pure preparation of the tables (`summarize_variants`, `failure_rows`,
  `provenance_items`, ...), DataFrame in, DataFrame or records out, with `values` (the
  helpers for stored values); `references`: paper vs ours (`reference_rows`); `figures`: the
  figures' data (`ll_vs_k_data`, `rate_distortion_data`, `sharpness_data`,
  `throughput_data`, `curve_data`, `sample_sets`, ...), pure as well;
* `tables` and `sections`: the prepared data as tables and the report's sections; the
  matplotlib code lives in `bench.plots`;
* `document`: a small document model (headings, paragraphs, lists, tables, figures, tables
  of contents, links between pages) that `render` writes as GitHub-flavoured Markdown and as
  HTML; `pages`: the pages of a report (an index, a page per suite) or its single file.

This module is the public API: `build_report` (returning `ReportPages`), `summary_text`, and
the names of the modules above that other code uses.

Runs of different budgets are never pooled: every table and plot is per budget, and a
comparison with a published value is labelled a reproduction only at the reference's budget.
Every published value comes with its protocol card (`[card.<name>]` of the suite file): each
row of the paper-vs-ours table names its card, and the card (the known differences from the
paper's text and from the authors' code) follows the rows that name it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench import store
from bench.errors import BenchError, make_directory
from bench.report.data import (
    ALL_METRICS,
    COST_METRICS,
    FACTOR_METRIC_NAMES,
    INPAINT_MASKS,
    INPAINT_METHODS,
    NEW_METRICS,
    QUALITY_METRICS,
    STATUS_COLUMNS,
    UNSPECIFIED_BUDGET,
    MetricSpec,
    SuiteData,
    SuiteOverview,
    _budget_order,
    catalog_spec,
    dropout_ll_data,
    factor_metric_protocols,
    factor_metric_sentence,
    failure_rows,
    inpainting_data,
    load_suite_data,
    metric_headings,
    prepare_runs,
    present_metrics,
    provenance_items,
    semisupervised_data,
    suite_file,
    suite_overview,
    summarize_variants,
    variant_axes,
)
from bench.report.document import (
    Block,
    Bullets,
    Figure,
    Heading,
    Link,
    Paragraph,
    Table,
    slug,
    with_anchors,
)
from bench.report.figures import (
    DISENTANGLEMENT_PANELS,
    SAMPLE_KINDS,
    ImageRows,
    SampleSet,
    axis_metric_data,
    axis_reference_data,
    bimodal_fit_data,
    curve_data,
    disentanglement_data,
    image_row_sets,
    ll_vs_k_data,
    posterior_bounds_data,
    posterior_kl_vs_k_data,
    prior_iwae_data,
    rate_distortion_data,
    sample_sets,
    sharpness_data,
    throughput_data,
    unit_kl_data,
)
from bench.report.history import history_section
from bench.report.pages import (
    SINGLE_FILE,
    ReportPages,
    _stamp,
    page_stems,
    write_single_file,
    write_site,
)
from bench.report.references import (
    reference_matches,
    reference_rows,
    reference_value_column,
    reproduction_label,
    run_config,
)
from bench.report.render import (
    format_text_table,
    md_escape,
    png_size,
    render_html,
    render_markdown,
)
from bench.report.sections import _Report, card_blocks
from bench.report.tables import (
    dropout_ll_table,
    family_summary_tables,
    format_mean_std,
    inpainting_table,
    reference_table,
    semisupervised_table,
    summary_tables,
)

__all__ = [
    # the public API
    "build_report", "build_history_report", "summary_text", "ReportPages", "SINGLE_FILE",
    # bench.report.data
    "ALL_METRICS", "COST_METRICS", "FACTOR_METRIC_NAMES", "INPAINT_MASKS", "INPAINT_METHODS",
    "NEW_METRICS", "QUALITY_METRICS", "STATUS_COLUMNS", "UNSPECIFIED_BUDGET", "MetricSpec",
    "SuiteData", "SuiteOverview", "catalog_spec", "dropout_ll_data", "factor_metric_protocols",
    "factor_metric_sentence", "failure_rows", "inpainting_data", "load_suite_data",
    "metric_headings", "prepare_runs", "present_metrics", "provenance_items",
    "semisupervised_data", "suite_file", "suite_overview", "summarize_variants",
    "variant_axes",
    # bench.report.references
    "reference_matches", "reference_rows", "reference_value_column", "reproduction_label",
    "run_config",
    # bench.report.figures
    "DISENTANGLEMENT_PANELS", "SAMPLE_KINDS", "ImageRows", "SampleSet", "axis_metric_data",
    "axis_reference_data", "bimodal_fit_data", "curve_data", "disentanglement_data",
    "image_row_sets", "ll_vs_k_data", "posterior_bounds_data", "posterior_kl_vs_k_data",
    "prior_iwae_data", "rate_distortion_data", "sample_sets", "sharpness_data",
    "throughput_data", "unit_kl_data",
    # bench.report.document
    "Block", "Bullets", "Figure", "Heading", "Link", "Paragraph", "Table", "slug",
    "with_anchors",
    # bench.report.pages
    "page_stems",
    # bench.report.tables
    "dropout_ll_table", "format_mean_std", "inpainting_table", "reference_table",
    "semisupervised_table", "summary_tables", "family_summary_tables",
    # bench.report.sections
    "card_blocks",
    # bench.report.render
    "format_text_table", "md_escape", "png_size", "render_html", "render_markdown",
]


def build_report(results: str | Path, out: str | Path, *, suites: Sequence[str] | None = None,
                 skip_corrupt: bool = False, single_file: bool = False) -> ReportPages:
    """Write the report of `suites` (default: every suite in the store) into `out`: an index
    (index.html, index.md) and one page per suite with its figures as PNG files beside it
    (`bench.report.pages`), or with `single_file` one self-contained report.html.

    Nothing is trained: the report is a function of the Parquet files (and the suite files,
    where found). Returns the pages written (`ReportPages`: the index to open first and each
    suite's page). An empty store or a suite without runs is a BenchError."""
    root = store.results_dir(results)
    runs = store.load_runs(root, skip_corrupt=skip_corrupt)
    if runs.empty:
        raise BenchError(f"no runs in results directory {root}: nothing to report")
    present = sorted({str(s) for s in runs["suite"].dropna()})
    chosen = list(dict.fromkeys(suites)) if suites else present
    for name in chosen:
        if name not in present:
            raise BenchError(f"suite '{name}' has no runs in {root} (suites with runs: "
                             f"{', '.join(present)})")
    out = make_directory(Path(out), "report directory")
    write = write_single_file if single_file else write_site
    return write(root, out, runs, chosen, skip_corrupt=skip_corrupt)


def build_history_report(results: str | Path, out: str | Path, suite: str) -> Path:
    """The history page of `suite` (bench.report.history) alone: history.md, a
    self-contained history.html and its PNGs in `out`. A suite never tracked is a
    BenchError."""
    root = store.results_dir(results)
    out = make_directory(Path(out), "report directory")
    report = _Report(out)
    report.add(Heading(1, f"vaebench history: {suite}"))
    report.add(Bullets([("generated", _stamp()), ("results", str(root))]))
    if not history_section(report, root, suite, level=2):
        raise BenchError(f"no history of suite '{suite}' in {root}: run `vaebench track "
                         f"{suite}` at some commits first")
    md_path = out / "history.md"
    md_path.write_text(render_markdown(report.blocks), encoding="utf-8")
    (out / "history.html").write_text(
        render_html(report.blocks, report.images, f"vaebench history: {suite}"),
        encoding="utf-8")
    return md_path


def summary_text(results: str | Path, suite: str, *, budget: str | None = None,
                 skip_corrupt: bool = False) -> str:
    """The per-variant summary of `suite` as fixed-width text, one table per budget (or only
    `budget`)."""
    root = store.results_dir(results)
    runs = store.load_runs(root, suite=suite, skip_corrupt=skip_corrupt)
    if budget is not None and not runs.empty:
        runs = runs[runs["budget"] == budget]
    if runs.empty:
        raise BenchError(f"suite '{suite}' has no runs in {root}")
    runs = prepare_runs(runs)
    stored = list(dict.fromkeys(runs["budget"]))
    suite_obj, _ = suite_file(suite, stored)
    order = [v.name for v in suite_obj.variants] if suite_obj is not None else []
    parts = []
    for budget in _budget_order(stored, suite_obj):
        at = runs[runs["budget"] == budget]
        axes = variant_axes(at, suite_obj)
        quality, cost = summary_tables(summarize_variants(at, axes, order), axes)
        parts.append(f"{suite}, budget {budget} (mean ± std over seeds; nats per example)")
        parts.append(format_text_table(quality))
        if cost is not None:
            parts.append(format_text_table(cost))
    return "\n\n".join(parts)
