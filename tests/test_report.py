"""The report: made from the Parquet files alone, tables and plots agree, published values are
never passed off as reproduced at a smaller budget, and older results without the newer metrics
or samples still make a report. Its pages: an index whose counts and links are right, a page
per suite whose table of contents and images resolve, the single self-contained file, and no
torch loaded to make any of it."""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import plots, report, store
from bench.config import RunConfig
from bench.errors import BenchError
from bench.suite import load_suite, resolve_suite_path

PNG = b"\x89PNG\r\n\x1a\n"
PROVENANCE = {
    "git_commit": "0123456789abcdef0123", "git_dirty": False, "python": "3.11.7",
    "torch": "2.13.0+cpu", "numpy": "2.4.6", "ray": "2.60.0", "hostname": "node-a",
    "platform": "Linux", "device": "cpu", "device_name": "Test CPU", "cpu_count": 4,
    "gpu_count": 0, "torch_threads": 1, "start_time": "2026-01-02T03:04:05+00:00",
    "end_time": "2026-01-02T03:05:05+00:00", "wall_seconds": 60.0,
}
SIDE = 8  # the digits are 8x8 images


def metrics_for(cfg: RunConfig, *, new: bool = True) -> dict:
    """Plausible metrics: IWAE-k tighter with k, beta trading rate for distortion."""
    ll = -30.0 + 0.8 * math.log(cfg.k) - 0.3 * cfg.seed - 2.0 * abs(cfg.beta - 1.0)
    rate = 6.0 / (0.5 + cfg.beta) + 0.1 * cfg.seed
    distortion = 22.0 + 3.0 * cfg.beta - 0.2 * cfg.seed
    values = {
        "test_ll": ll, "test_elbo": -(rate + distortion), "rate": rate,
        "distortion": distortion, "ess": 0.2 / cfg.k, "active_units": 6 + cfg.seed,
        "train_samples_per_s": 50_000.0 / cfg.k + 1000 * cfg.seed,
        "eval_samples_per_s": 250_000.0, "train_seconds": 0.1 * cfg.k,
        "eval_seconds": 0.05, "epochs_done": cfg.epochs, "diverged_epoch": None,
        "final_train_bound": ll - 1.0,
    }
    if new:
        values.update({
            "blur_data_mean": 0.20, "blur_data_min": 0.10,
            "blur_prior_mean": 0.20 / (0.5 + 0.2 * cfg.beta),
            "blur_prior_min": 0.08, "blur_recon_mean": 0.20 / (0.8 + 0.1 * cfg.beta),
            "blur_recon_min": 0.09, "sharpness_prior": 0.5 + 0.2 * cfg.beta,
            "sharpness_recon": 0.8 + 0.1 * cfg.beta, "blur_reason": None,
            "peak_memory_bytes": 123_000_000 + cfg.k * 1_000_000,
            "flops_per_example": 2.0e6 * cfg.k, "train_flops_per_s": 1.5e9 * cfg.k,
        })
    return values


def curves_for(cfg: RunConfig) -> list[dict]:
    return [{"epoch": e, "lr": cfg.lr, "train_bound": -40.0 + 4.0 * e - cfg.seed,
             "samples_per_s": 40_000.0, "wall_seconds": 0.1 * e}
            for e in range(1, cfg.epochs + 1)]


def samples_for(cfg: RunConfig, n_prior: int = 16, n_recon: int = 8) -> list[dict]:
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for kind, n in (("prior", n_prior), ("original", n_recon), ("reconstruction", n_recon)):
        for i in range(n):
            rows.append({"kind": kind, "index": i, "height": SIDE, "width": SIDE,
                         "pixels": rng.uniform(0, 1, SIDE * SIDE).round(3).tolist()})
    return rows


def write(results: Path, suite: str, variant: str, cfg: RunConfig, *, budget: str,
          status: str = "finished", new: bool = True, samples: bool = True,
          error: str | None = None, metrics: dict | None = None) -> None:
    values = metrics if metrics is not None else metrics_for(cfg, new=new)
    row = store.run_row(suite=suite, variant=variant, config=cfg, status=status,
                        metrics=values, provenance=PROVENANCE, error=error,
                        traceback="Traceback (most recent call last):\n..." if error else None,
                        budget=budget)
    images = samples_for(cfg) if samples and status == "finished" else []
    store.write_run(results, row, curves_for(cfg), samples=images)


@pytest.fixture(scope="module")
def smoke_suite():
    return load_suite(resolve_suite_path("smoke"), budget="smoke")


@pytest.fixture(scope="module")
def results(tmp_path_factory, smoke_suite) -> Path:
    """The smoke suite at its smoke budget (2 variants x 2 seeds, one seed without the new
    metrics or samples, one failed and one diverged run), one vae run at the cpu budget,
    and a suite 'grid' without a suite file, in which k and beta vary."""
    root = tmp_path_factory.mktemp("results")
    for v in smoke_suite.variants:
        old = v.name == "vae" and v.seed == 1  # as written before the new metrics existed
        write(root, "smoke", v.name, v.config, budget="smoke", new=not old, samples=not old)
    vae = next(v for v in smoke_suite.variants if v.name == "vae")
    iwae = next(v for v in smoke_suite.variants if v.name == "iwae-k5")
    write(root, "smoke", "vae", vae.config.replace(seed=7), budget="smoke", status="failed",
          error="RuntimeError: out of memory on worker 3\nsecond line", metrics={})
    write(root, "smoke", "iwae-k5", iwae.config.replace(seed=8), budget="smoke",
          status="diverged", metrics={"diverged_epoch": 2, "epochs_done": 1})
    cpu = load_suite(resolve_suite_path("smoke"), budget="cpu")
    cpu_vae = next(v for v in cpu.variants if v.name == "vae" and v.seed == 0)
    write(root, "smoke", "vae", cpu_vae.config.replace(epochs=3), budget="cpu")

    base = RunConfig(dataset="digits", hidden=((16,),), latent=(4,), epochs=3, k_eval=10,
                     train_size=200, test_size=50)
    for seed in (0, 1):
        for beta in (0.5, 1.0, 2.0):
            write(root, "grid", f"vae-beta{beta:g}", base.replace(beta=beta, seed=seed),
                  budget="smoke")
        for k in (1, 5, 10):
            write(root, "grid", f"iwae-k{k}", base.replace(objective="iwae", k=k, seed=seed),
                  budget="smoke")
    return root


@pytest.fixture(scope="module")
def built(results, tmp_path_factory):
    """The report of `results`: its pages and each suite page's Markdown."""
    out = tmp_path_factory.mktemp("report")
    pages = report.build_report(results, out)
    md = {name: page.with_suffix(".md").read_text(encoding="utf-8")
          for name, page in pages.suites.items()}
    return pages, md


class ImageCollector(HTMLParser):
    """The images, links and element ids of a page, and whether its tags balance."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.toc: list[str] = []  # the links inside <nav class="toc">
        self.ids: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "a":
            self.links.append(attrs["href"])
            if "nav" in self.stack:
                self.toc.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs)
        elif tag not in ("meta", "br", "hr", "link", "wbr"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def md_tables(text: str) -> list[list[list[str]]]:
    """Every GFM table in `text` as rows of cells (header first, the rule row left out)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            current.append(cells)
        elif current:
            tables.append(current)
            current = []
    for table in tables:  # valid GFM: a rule row of --- cells, the same width everywhere
        assert all(re.fullmatch(r":?-{3,}:?", c) for c in table[1]), table[1]
        assert len({len(row) for row in table}) == 1, table
    return [[t[0], *t[2:]] for t in tables]


def parse_page(path: Path) -> ImageCollector:
    parser = ImageCollector()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert not parser.errors and parser.stack == [], (path, parser.errors, parser.stack)
    return parser


def find_table(text: str, first_heading: str, has: str) -> list[list[str]]:
    for table in md_tables(text):
        if table[0][0] == first_heading and has in table[0]:
            return table
    raise AssertionError(f"no table with headings {first_heading!r}, {has!r}")


def test_report_has_summary_tables_per_budget(built, smoke_suite):
    pages, pages_md = built
    md = pages_md["smoke"]
    assert pages.index.name == "index.html" and pages.index.with_suffix(".md").is_file()
    assert {n: p.name for n, p in pages.suites.items()} == {"grid": "grid.html",
                                                            "smoke": "smoke.html"}
    assert md.startswith("[index: all suites](index.md)")
    assert "\n# Suite smoke\n" in md and "\n# Suite grid\n" in pages_md["grid"]
    assert "## Summary: budget smoke" in md and "## Summary: budget cpu" in md
    assert md.index("Summary: budget smoke") < md.index("Summary: budget cpu")  # suite order
    tables = [t for t in md_tables(md) if t[0][:2] == ["variant", "objective"]]
    smoke, cpu = tables
    assert smoke[0][:6] == ["variant", "objective", "k", "runs", "test LL (nats)",
                            "ELBO (nats)"]
    names = [row[0] for row in smoke[1:]]
    assert names == ["vae", "iwae-k5"]  # every variant, in the suite's order
    vae = dict(zip(smoke[0], smoke[1], strict=True))
    assert vae["runs"] == "2 of 3 finished, 1 failed"
    lls = [metrics_for(v.config)["test_ll"] for v in smoke_suite.variants if v.name == "vae"]
    assert vae["test LL (nats)"] == f"{np.mean(lls):.2f} ± {np.std(lls, ddof=1):.2f}"
    # the seed without sharpness is left out of the mean, not counted as zero
    assert vae["sharpness prior"] == "0.700"
    iwae = dict(zip(smoke[0], smoke[2], strict=True))
    assert iwae["runs"].endswith(", 1 diverged")
    assert [row[0] for row in cpu[1:]] == ["vae"]  # budgets never pooled
    assert dict(zip(cpu[0], cpu[1], strict=True))["runs"] == "1 finished"
    cost = find_table(md, "variant", "train ex/s")
    assert {"eval ex/s", "peak memory (MB)", "GFLOP/s"} <= set(cost[0])
    train = dict(zip(cost[0], cost[2], strict=True))["train ex/s"]  # iwae-k5: 10,000 ± 1,000
    assert re.fullmatch(r"10,500 ± 707", train), train


def test_paper_vs_ours_never_calls_a_smaller_budget_a_reproduction(built, smoke_suite):
    _, pages_md = built
    md = pages_md["smoke"]
    reference = smoke_suite.references[0]
    table = find_table(md, "metric", "paper")
    rows = [dict(zip(table[0], r, strict=True)) for r in table[1:]]
    assert {r["budget"] for r in rows} == {"smoke", "cpu"}
    for r in rows:
        assert r["metric"] == "test\\_nll" or r["metric"] == "test_nll"
        assert r["paper"] == f"{reference.value:.2f}"
        assert r["source"] == reference.source
        assert r["variant"] == "vae"  # match = {objective = "vae"}
        assert r["comparison"] == f"{r['budget']} budget: not a reproduction"
        assert "reproduction (paper" not in r["comparison"]
    smoke = next(r for r in rows if r["budget"] == "smoke")
    nll = [-metrics_for(v.config)["test_ll"] for v in smoke_suite.variants if v.name == "vae"]
    assert smoke["ours"] == f"{np.mean(nll):.2f} ± {np.std(nll, ddof=1):.2f}"
    assert smoke["ours - paper"] == f"{np.mean(nll) - reference.value:+.2f}"
    assert smoke["seeds"] == "2"
    assert "No run at the paper budget is stored" in md
    assert "References unavailable (suite file not found)" in pages_md["grid"]


def test_reference_rows_label_the_paper_budget_a_reproduction(smoke_suite):
    vae = next(v for v in smoke_suite.variants if v.name == "vae")
    row = store.run_row(suite="smoke", variant="vae", config=vae.config, status="finished",
                        metrics={"test_ll": -26.0}, provenance={}, budget="paper")
    runs = report.prepare_runs(__import__("pandas").DataFrame([row]))
    ref = smoke_suite.references[0]
    (record,) = report.reference_rows(runs, [ref], ["paper"])
    assert record["verdict"] == "reproduction (paper protocol)"
    assert record["mean"] == pytest.approx(26.0) and record["diff"] == pytest.approx(1.0)
    iwae_only = runs.assign(cfg_objective="iwae", cfg_k=5)
    (missing,) = report.reference_rows(iwae_only, [ref], ["paper"])
    assert missing["ours"] == "not run" and missing["verdict"].startswith("not run")


def test_index_lists_each_suite_with_its_counts_and_links_that_resolve(built):
    # Guards against: an index whose counts are not the stored rows' (a status pooled into
    # another, a budget left out), or whose links point at pages that were not written.
    pages, _ = built
    table = find_table(pages.index.with_suffix(".md").read_text(encoding="utf-8"), "suite",
                       "budgets (runs)")
    rows = {r[0]: dict(zip(table[0], r, strict=True)) for r in table[1:]}
    assert list(rows) == ["[grid](grid.md)", "[smoke](smoke.md)"]
    smoke = rows["[smoke](smoke.md)"]
    assert smoke["budgets (runs)"] == "smoke (6), cpu (1)"  # in the suite file's order
    assert (smoke["runs"], smoke["finished"], smoke["failed"], smoke["diverged"]) == \
        ("7", "5", "1", "1")
    assert smoke["last run ended"] == "2026-01-02 03:05 UTC"  # the stored end_time
    assert smoke["description"] == "VAE vs IWAE-5 on the embedded digits: a tiny, fast " \
        "pipeline check"
    grid = rows["[grid](grid.md)"]
    assert (grid["budgets (runs)"], grid["runs"], grid["finished"], grid["failed"]) == \
        ("smoke (12)", "12", "12", "0")
    assert grid["description"] == "suite file unavailable (suite file not found)"
    index = parse_page(pages.index)
    assert index.links == ["grid.html", "smoke.html"]
    for link in index.links:
        assert (pages.index.parent / link).is_file()
    assert index.images == []


def test_suite_overview_takes_the_newest_end_time_else_the_start_time(tmp_path):
    # Guards against: the index's "last run" being the first row's time, a start time
    # preferred over a recorded end, or rows without times breaking it.
    cfg = RunConfig(dataset="digits", epochs=1)
    times = [("2026-03-01T10:00:00+00:00", "2026-03-01T11:30:00+00:00"),
             ("2026-03-05T09:00:00+00:00", "2026-03-05T09:45:00+00:00"),
             ("2026-03-02T08:00:00+00:00", None)]
    for seed, (start, end) in enumerate(times):
        prov = {**PROVENANCE, "start_time": start, "end_time": end}
        store.write_run(tmp_path, store.run_row(
            suite="s", variant="vae", config=cfg.replace(seed=seed), status="finished",
            metrics={"test_ll": -30.0}, provenance=prov, budget="cpu"))
    data = report.load_suite_data(tmp_path, "s")
    overview = report.suite_overview(data)
    assert overview.last_run == pd.Timestamp("2026-03-05 09:45", tz="UTC")
    assert (overview.runs, overview.budgets, dict(overview.status)) == \
        (3, (("cpu", 3),), {"finished": 3, "failed": 0, "diverged": 0})
    no_end = data.runs.drop(columns=["sys_end_time"])
    assert report.suite_overview(dataclasses.replace(data, runs=no_end)).last_run == \
        pd.Timestamp("2026-03-05 09:00", tz="UTC")
    no_time = no_end.drop(columns=["sys_start_time"])
    assert report.suite_overview(dataclasses.replace(data, runs=no_time)).last_run is None


def test_each_suite_page_has_a_contents_whose_links_reach_its_headings(built):
    # Guards against: a table of contents linking anchors the page does not have (slugs
    # computed twice, repeated headings given the same id), in the HTML or the Markdown.
    pages, pages_md = built
    for name, page in pages.suites.items():
        parsed = parse_page(page)
        assert len(parsed.ids) == len(set(parsed.ids)), name  # ids unique on the page
        assert parsed.toc and all(href.startswith("#") for href in parsed.toc)
        assert {href[1:] for href in parsed.toc} <= set(parsed.ids)
        others = [h for h in parsed.links if not h.startswith("#")]
        assert "index.html" in others
        for href in others:  # the index, the previous and next suite
            assert (page.parent / href).is_file(), href
        # the Markdown: the same contents, to the anchors GitHub gives its headings
        texts = [h for h in re.findall(r"^#+ (.+)$", pages_md[name], re.M) if h != "Contents"]
        anchors = {b.anchor for b in report.with_anchors([report.Heading(2, t) for t in texts])}
        toc = re.findall(r"^ *- \[[^\]]+\]\(#([^)]+)\)$", pages_md[name], re.M)
        assert toc == [href[1:] for href in parsed.toc] and set(toc) <= anchors
    smoke = parse_page(pages.suites["smoke"])
    assert smoke.toc[:3] == ["#summary-budget-smoke", "#summary-budget-cpu", "#paper-vs-ours"]
    assert "#plots-budget-cpu" in smoke.toc and "#provenance" in smoke.toc


def test_anchors_are_github_slugs_numbered_when_repeated():
    blocks = report.with_anchors([report.Heading(2, "Summary: budget smoke"),
                                  report.Heading(3, "VAE family"), report.Paragraph("x"),
                                  report.Heading(3, "VAE family"),
                                  report.Heading(3, "VAE family")])
    assert [b.anchor for b in blocks if isinstance(b, report.Heading)] == [
        "summary-budget-smoke", "vae-family", "vae-family-1", "vae-family-2"]
    assert report.slug("Suite iwae_table1") == "suite-iwae_table1"


def test_a_suite_never_takes_the_index_s_name():
    # Guards against: a suite called "index" (or "report") overwriting the index page.
    assert report.page_stems(["index", "report", "a/b", "a b", "smoke"]) == {
        "index": "suite-index", "report": "suite-report", "a/b": "a_b", "a b": "a_b-2",
        "smoke": "smoke"}


def test_images_are_png_files_beside_the_pages_loaded_lazily(built):
    # Guards against: an <img> whose file is missing, an image inlined (the page weighs
    # megabytes again) or loaded eagerly, the Markdown and HTML showing different figures.
    pages, pages_md = built
    total = 0
    for name, page in pages.suites.items():
        linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", pages_md[name])
        assert len(linked) == len(set(linked)) >= 3
        parsed = parse_page(page)
        assert [img["src"] for img in parsed.images] == linked
        for img in parsed.images:
            png = page.parent / img["src"]
            assert img["src"].startswith(f"{name}/") and png.is_file()
            assert plots.is_png(png) and png.stat().st_size > 5000
            assert img["loading"] == "lazy" and img.get("alt")
            assert (int(img["width"]), int(img["height"])) == report.png_size(png.read_bytes())
        page_text = page.read_text(encoding="utf-8")
        assert "data:" not in page_text and len(page_text) < 60_000
        assert "http://" not in page_text and "https://" not in page_text
        total += len(linked)
    assert total >= 8


def test_single_file_inlines_every_image_and_its_contents_resolve(results, built, tmp_path):
    # Guards against: a mailed report that points at files the reader does not have.
    pages = report.build_report(results, tmp_path / "mail", suites=["smoke"], single_file=True)
    assert pages.index == tmp_path / "mail" / report.SINGLE_FILE
    assert [p.name for p in (tmp_path / "mail").iterdir()] == ["report.html"]  # nothing else
    assert pages.suites == {"smoke": pages.index}
    parsed = parse_page(pages.index)
    assert len(parsed.images) == len(parse_page(built[0].suites["smoke"]).images) == 7
    for img in parsed.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == PNG and (int(img["width"]), int(img["height"])) == \
            report.png_size(png)
        assert img.get("alt")
    assert all(not h.startswith(("http", "/")) and h.startswith("#") for h in parsed.links)
    assert parsed.toc and {h[1:] for h in parsed.toc} <= set(parsed.ids)
    assert {"#suite-smoke", "#summary-budget-cpu", "#provenance"} <= set(parsed.toc)
    page = pages.index.read_text(encoding="utf-8")
    assert "<link" not in page and "<style>" in page and 'src="data:' in page


def test_plots_made_are_those_the_data_supports(built):
    _, pages_md = built
    md = "\n".join(pages_md.values())
    names = {Path(n).name for n in re.findall(r"\]\(([^)]+\.png)\)", md)}
    # smoke: one k per objective and no beta axis: no LL-vs-k, no rate-distortion
    assert {"smoke-smoke-throughput.png", "smoke-smoke-learning-curves.png",
            "smoke-cpu-throughput.png"} <= names
    assert not any(n.startswith("smoke-smoke-ll-vs-k") or "smoke-smoke-rate" in n
                   for n in names)
    # grid: k varies for iwae and beta for vae
    assert {"grid-smoke-ll-vs-k.png", "grid-smoke-rate-distortion.png",
            "grid-smoke-sharpness.png", "grid-smoke-throughput.png"} <= names
    # one sample grid per variant and budget, from the lowest seed with samples
    assert {"smoke-smoke-samples-vae.png", "smoke-smoke-samples-iwae-k5.png",
            "smoke-cpu-samples-vae.png"} <= names
    assert "*Figure" in md and "vae (seed 0, run" in md
    assert "Figure 1:" in md and "nats" in md


def test_failed_and_diverged_runs_are_listed(built):
    md = built[1]["smoke"]
    table = find_table(md, "variant", "error")
    rows = [dict(zip(table[0], r, strict=True)) for r in table[1:]]
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["variant"] == "vae" and failed["seed"] == "7"
    assert failed["error"] == "RuntimeError: out of memory on worker 3"  # first line only
    diverged = next(r for r in rows if r["status"] == "diverged")
    assert diverged["variant"] == "iwae-k5" and diverged["diverged at epoch"] == "2"


def test_provenance_section(built):
    md = built[1]["smoke"]
    assert "## Provenance" in md
    assert "0123456789ab" in md and "torch 2.13.0+cpu" in md and "Ray 2.60.0" in md
    assert "cpu: Test CPU" in md and "node-a" in md
    assert "2026-01-02 03:04 UTC to 2026-01-02 03:05 UTC" in md


def test_provenance_counts_each_execution(tmp_path):
    # Guards against: a report whose speed table mixes compiled, stacked and eager runs
    # without saying so (the modes are not part of a run's identity), and rows older than
    # the execution columns (read back as NaN beside newer rows) counted as compiled.
    cfg = RunConfig(dataset="digits", epochs=1)
    executions = [{}, {"compiled": False, "eval_compiled": False, "stack_size": 1},
                  {"compiled": True, "eval_compiled": True, "stack_size": 4}]
    for seed, extra in enumerate(executions):
        store.write_run(tmp_path, store.run_row(
            suite="s", variant="vae", config=cfg.replace(seed=seed), status="finished",
            metrics={"test_ll": -30.0}, provenance={**PROVENANCE, **extra}, budget="cpu"))
    items = dict(report.provenance_items(store.load_runs(tmp_path)))
    assert sorted(items["execution"].split("; ")) == [
        "compiled step and estimate, stack of 4 (1 runs)", "eager (2 runs)"]


def test_ll_vs_k_plot_data_are_the_summary_means(results):
    runs = report.prepare_runs(store.load_runs(results, suite="grid"))
    summary = report.summarize_variants(runs, ["objective", "k", "beta"])
    data = report.ll_vs_k_data(summary)
    assert set(data["line"]) == {"VAE", "IWAE"}
    assert sorted(data.loc[data["objective"] == "iwae", "k"]) == [1, 5, 10]
    assert list(data.loc[data["objective"] == "vae", "k"]) == [1]  # beta != 1 left out
    by_variant = summary.set_index("variant")
    for _, point in data.iterrows():
        assert point["mean"] == by_variant.loc[point["variant"], "metric_test_ll_mean"]
        assert point["std"] == by_variant.loc[point["variant"], "metric_test_ll_std"]
        cfg = RunConfig(dataset="digits", hidden=((16,),), latent=(4,), epochs=3, k_eval=10,
                        train_size=200, test_size=50, objective=point["objective"],
                        k=int(point["k"]))
        lls = [metrics_for(cfg.replace(seed=s))["test_ll"] for s in (0, 1)]
        assert point["mean"] == pytest.approx(np.mean(lls))
        assert point["std"] == pytest.approx(np.std(lls, ddof=1))
    rd = report.rate_distortion_data(summary)
    assert sorted(rd["beta"]) == [0.5, 1.0, 2.0]
    row = rd.set_index("beta").loc[2.0]
    assert row["rate_mean"] == by_variant.loc["vae-beta2", "metric_rate_mean"]
    sharp = report.sharpness_data(summary).set_index("beta")
    assert sharp.loc[0.5, "prior_mean"] == pytest.approx(0.6)
    tp = report.throughput_data(summary).set_index("variant")
    assert tp.loc["iwae-k5", "mean"] == pytest.approx(np.mean([10_000, 11_000]))


def test_stored_configs_are_rebuilt_exactly(results):
    runs = store.load_runs(results)
    for _, row in runs.iterrows():
        config = report.run_config(row)
        assert config is not None and config.run_id == row["run_id"]


def test_older_results_without_new_metrics_or_samples(tmp_path, smoke_suite):
    for v in smoke_suite.variants:
        write(tmp_path, "smoke", v.name, v.config, budget="smoke", new=False, samples=False)
    pages = report.build_report(tmp_path, tmp_path / "out", suites=["smoke"])
    md = pages.suites["smoke"].with_suffix(".md").read_text(encoding="utf-8")
    assert "Not recorded by these runs: FLOP/s, peak memory, sharpness" in md
    assert "no sample images stored" in md
    assert "sharpness prior" not in md and "GFLOP/s" not in md
    assert "smoke-smoke-throughput.png" in md
    text = report.summary_text(tmp_path, "smoke")
    assert "vae" in text and "iwae-k5" in text and "test LL (nats)" in text


def test_blur_reason_is_reported(tmp_path):
    cfg = RunConfig(dataset="digits", hidden=((16,),), latent=(4,), epochs=2, k_eval=10)
    values = {**metrics_for(cfg), "sharpness_prior": None, "sharpness_recon": None,
              "blur_reason": "data has no image shape"}
    write(tmp_path, "nosuite", "vae", cfg, budget="smoke", metrics=values, samples=False)
    pages = report.build_report(tmp_path, tmp_path / "out")
    md = pages.suites["nosuite"].with_suffix(".md").read_text(encoding="utf-8")
    assert "Blur/sharpness not computed: data has no image shape." in md


def test_empty_store_or_unknown_suite_is_a_one_line_error(tmp_path, results):
    with pytest.raises(BenchError, match="no runs") as err:
        report.build_report(tmp_path / "empty", tmp_path / "out")
    assert "\n" not in str(err.value)
    with pytest.raises(BenchError, match="suite 'nope' has no runs") as err:
        report.build_report(results, tmp_path / "out", suites=["nope"])
    assert "\n" not in str(err.value) and "grid, smoke" in str(err.value)


def test_corrupt_file_is_an_error_unless_skipped(tmp_path, smoke_suite):
    for v in smoke_suite.variants:
        write(tmp_path, "smoke", v.name, v.config, budget="smoke", samples=False)
    bad = tmp_path / "runs" / "suite=smoke" / "0000000000000000.parquet"
    bad.write_bytes(b"PAR1 truncated")
    with pytest.raises(BenchError, match="corrupt"):
        report.build_report(tmp_path, tmp_path / "out")
    with pytest.warns(UserWarning, match="skipping corrupt"):
        pages = report.build_report(tmp_path, tmp_path / "out", skip_corrupt=True)
    assert "iwae-k5" in pages.suites["smoke"].read_text(encoding="utf-8")


def test_markdown_and_html_escape_text():
    blocks = [report.Heading(2, "a <b> & c"),
              report.Table(["x|y", "n"], [["<script>alert(1)</script>", "1"],
                                          [report.Link("s]<i>", "s"), "2"]], [False, True])]
    md = report.render_markdown(blocks)
    assert "x\\|y" in md and "<script>" not in md and "[s\\]&lt;i&gt;](s.md)" in md
    page = report.render_html(blocks, {}, "t")
    assert "&lt;script&gt;" in page and "<script>" not in page and "a &lt;b&gt; &amp; c" in page
    assert '<a href="s.html">s]&lt;i&gt;</a>' in page


def test_posterior_bounds_plot_only_when_the_posterior_varies_and_shows_the_means():
    summary = pd.DataFrame({
        "variant": ["gaussian", "planar-k8"],
        "cfg_posterior": ["gaussian", "planar"],
        "metric_test_ll_mean": [-100.0, -98.0], "metric_test_ll_std": [0.5, float("nan")],
        "metric_test_elbo_mean": [-104.0, -99.5], "metric_test_elbo_std": [0.1, 0.2],
    })
    data = report.posterior_bounds_data(summary).set_index("variant")
    assert data.loc["planar-k8", "ll_mean"] == -98.0
    assert data.loc["gaussian", "elbo_mean"] == -104.0
    assert report.posterior_bounds_data(summary.iloc[:1]) is None  # one family: no plot


def test_posterior_kl_vs_k_lines_per_direction_carry_the_summary_means():
    summary = pd.DataFrame({
        "variant": ["gmm-k2,r", "gmm-k20,r", "gmm-k2,f", "gmm-k20,f", "mnist"],
        "cfg_k": [2, 20, 2, 20, 5],
        "cfg_kl_direction": ["reverse", "reverse", "forward", "forward", "reverse"],
        "metric_posterior_kl_mean": [1.5, 1.9, 2.6, 0.3, float("nan")],
        "metric_posterior_kl_std": [float("nan")] * 5,
        "metric_posterior_kl_n": [1, 1, 1, 1, 0],
    })
    data = report.posterior_kl_vs_k_data(summary)
    assert len(data) == 4  # the MNIST row has no posterior KL
    forward = data[data["line"] == "forward KL"].set_index("k")["mean"]
    assert forward.to_dict() == {2: 2.6, 20: 0.3}


def test_bimodal_toy_runs_are_drawn_from_their_stored_fit():
    runs = pd.DataFrame({
        "cfg_dataset": ["bimodal", "bimodal", "mnist"],
        "cfg_kl_direction": ["reverse", "forward", "reverse"],
        "cfg_seed": [0, 0, 0],
        "status": ["finished", "finished", "finished"],
        "metric_q_mean": [3.95, -0.05, float("nan")],
        "metric_q_std": [0.62, 4.01, float("nan")],
        "metric_mass_left": [0.0, 0.51, float("nan")],
        "metric_mass_right": [1.0, 0.49, float("nan")],
    })
    fits = report.bimodal_fit_data(runs)
    assert sorted(fits.values()) == [(-0.05, 4.01), (3.95, 0.62)]
    assert any(label.startswith("reverse KL") and "100%" in label for label in fits)
    assert report.bimodal_fit_data(runs[runs["cfg_dataset"] == "mnist"]) is None


NO_TORCH = """
import sys
from bench.report import build_report
pages = build_report(sys.argv[1], sys.argv[2])
assert pages.suites, pages
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_the_report_loads_no_torch(tmp_path):
    # Guards against: the report importing torch (seconds of start-up and a GPU build's
    # gigabytes on the laptop that reports a cluster's results), as its bimodal-toy figure
    # did to evaluate two Gaussian densities, and its factor metrics' protocols (MIG, DCI)
    # through bench.metrics.factors and bench.data's package init. A subprocess: this one has
    # torch loaded.
    for seed, (direction, mean, std) in enumerate((("reverse", 3.98, 0.61),
                                                   ("forward", 0.02, 4.03))):
        cfg = RunConfig(dataset="bimodal", objective="iwae", k=2, iterations=3,
                        kl_direction=direction)
        write(tmp_path / "r", "toys", f"bimodal-{direction}", cfg, budget="smoke",
              samples=False, metrics={"q_mean": mean, "q_std": std, "mass_left": seed * 0.5,
                                      "mass_right": 1 - seed * 0.5})
    cfg = RunConfig(dataset="digits", hidden=((16,),), latent=(4,), epochs=2, k_eval=10)
    write(tmp_path / "r", "digits", "vae", cfg, budget="smoke", samples=False)
    cfg = RunConfig(dataset="shapes_small", hidden=((16,),), latent=(4,), epochs=2, k_eval=10)
    write(tmp_path / "r", "shapes", "beta-vae", cfg, budget="smoke", samples=False,
          metrics={"mig": 0.25, "dci_disentanglement": 0.5, "beta_vae_accuracy": 80.0})
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "r"),
                           str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert (tmp_path / "out" / "toys" / "toys-smoke-bimodal.png").is_file()  # drawn
    # the command line, `python -m bench.cli report`: no torch among its imports
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench.cli", "report",
                           "--results", str(tmp_path / "r"), "--out", str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"report: {tmp_path / 'cli' / 'index.html'}")
    imported = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line]
    assert "bench.report.pages" in imported and "matplotlib" in imported
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]



def test_a_sample_grid_shows_each_image_once_at_a_whole_scale(tmp_path):
    # Guards against: a sample grid that drops, repeats or resamples images (a fractional
    # scale blends tiles into the separator), shows reconstructions above originals, or
    # draws the gaps between tiles in a colour an image could have. Three prior samples
    # (black), two originals (white), two reconstructions (mid gray) of 5x4 pixels.
    from PIL import Image

    from bench.images import SEPARATOR

    path = plots.sample_grid(np.zeros((3, 5, 4)), np.ones((2, 5, 4)), np.full((2, 5, 4), 0.5),
                             tmp_path / "g.png", title="t")
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    gap = list(SEPARATOR)
    is_gap = (image == gap).all(axis=2)
    scale = 28  # 3 columns of 4 pixels + 4 separators = 16, scaled to the 440-pixel panel
    # the panels: the prior's (one row of 3) and the pairs' (originals row, reconstructions
    # row, the third slot of each empty), each a mosaic of 1-pixel separators
    columns = np.flatnonzero(is_gap.any(axis=0))
    split = np.flatnonzero(np.diff(columns) > 1)
    assert len(split) == 1
    crops = []
    for cols in (columns[:split[0] + 1], columns[split[0] + 1:]):
        rows = np.flatnonzero(is_gap[:, cols].any(axis=1))
        crops.append(image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    assert [c.shape[:2] for c in crops] == [(7 * scale, 16 * scale), (13 * scale, 16 * scale)]
    mosaics = []
    for crop in crops:
        mosaic = crop[::scale, ::scale]
        assert (np.kron(mosaic, np.ones((scale, scale, 1), dtype=int)) == crop).all()
        mosaics.append(mosaic)
    expected = [np.full((7, 16, 3), gap), np.full((13, 16, 3), gap)]
    for left in (1, 6, 11):
        expected[0][1:6, left:left + 4] = 0
    for left in (1, 6):
        expected[1][1:6, left:left + 4] = 255
        expected[1][7:12, left:left + 4] = 128
    assert (mosaics[0] == expected[0]).all() and (mosaics[1] == expected[1]).all()
