"""The report's sections, built from one suite's data: the suite, a summary per budget, paper
vs ours with the protocol cards, the plots (the model families' own figures and the sample
images included), provenance and failures. `_Report` accumulates the blocks and draws the
PNGs (with `bench.plots`, imported only when a section draws: it loads matplotlib)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.data import (
    INPAINT_METHODS,
    NEW_METRICS,
    STATUS_COLUMNS,
    SuiteData,
    dropout_ll_data,
    factor_metric_sentence,
    failure_rows,
    inpainting_data,
    provenance_items,
    semisupervised_data,
    summarize_variants,
    variant_axes,
)
from bench.report.document import Block, Bullets, Figure, Heading, Paragraph, Table
from bench.report.figures import (
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
    snr_vs_k_data,
    throughput_data,
    unit_kl_data,
)
from bench.report.references import reference_rows
from bench.report.tables import (
    dropout_ll_table,
    family_summary_tables,
    inpainting_table,
    reference_table,
    semisupervised_table,
    summary_tables,
)
from bench.report.values import _missing
from bench.suite import Card
from bench.toys import bimodal_target


def card_blocks(card: Card | None, budgets: Sequence[str], rows: int) -> list[Block]:
    """A protocol card as a lead paragraph and one bullet per known difference: "vs paper"
    (the paper's text), "vs authors' code", and what code was read. `budgets`: the budgets
    of the references naming it (the protocol it describes); `rows`: table rows naming it."""
    if card is None:
        return [Paragraph(f"No protocol card for the {rows} row(s) above: their differences "
                          "from the published protocol are not checked.", emphasis=True)]
    where = ", ".join(dict.fromkeys(budgets)) or "its"
    lead = Paragraph(f"Protocol card {card.name} (named by the {rows} row(s) above): the known "
                     f"differences between our protocol at the {where} budget and the "
                     "published one.")
    items = [("vs paper", text) for text in card.paper]
    items += [("vs authors' code", text) for text in card.code]
    if card.source_code:
        items.append(("authors' code read", card.source_code))
    return [lead, Bullets(items)]


class _Report:
    """Accumulates the blocks and figures of one page. The PNGs are drawn into `out`/`folder`
    (a folder per suite page keeps a report directory of a hundred figures browsable) and a
    figure's filename is that path relative to `out`, where the page is written."""

    def __init__(self, out: Path, folder: str = "") -> None:
        self.out = out
        self.folder = folder
        self.blocks: list[Block] = []
        self.images: dict[str, bytes] = {}
        self._names: set[str] = set()

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, stem: str, caption: str, title: str, draw: Any) -> None:
        """Draw a PNG with `draw(path, title)` and add it as the next figure."""
        name = _safe_name(stem)
        candidate, i = name, 2
        while candidate in self._names:
            candidate, i = f"{name}-{i}", i + 1
        self._names.add(candidate)
        filename = f"{self.folder}/{candidate}.png" if self.folder else f"{candidate}.png"
        path = self.out / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(path, title)
        self.images[filename] = path.read_bytes()
        self.add(Figure(filename, caption, len(self.images), title))

    def plot(self, data: Any, stem: str, caption: str, title: str, draw: Any,
             **options: Any) -> bool:
        """Add the figure `draw(data, path, title=..., **options)`; nothing where `data` is
        None. Returns whether a figure was added."""
        if data is None:
            return False
        self.figure(stem, caption, title,
                    lambda path, title: draw(data, path, title=title, **options))
        return True


def _suite_section(report: _Report, data: SuiteData) -> None:
    runs, suite = data.runs, data.suite
    counts = {s: int((runs["status"] == s).sum()) for s in STATUS_COLUMNS}
    report.add(Heading(2, f"Suite {data.name}"))
    info = [("description", suite.description if suite is not None
             else f"unavailable ({data.suite_note})")]
    if suite is not None:
        info.append(("suite file", str(suite.path)))
    info.append(("budgets", ", ".join(
        f"{b} ({int((runs['budget'] == b).sum())} runs)" for b in data.budgets)))
    info.append(("runs", f"{len(runs)} ({', '.join(f'{v} {k}' for k, v in counts.items())})"))
    report.add(Bullets(info))
    if len(data.budgets) > 1:
        report.add(Paragraph("Several budgets are stored: each has its own tables and plots; "
                             "runs of different budgets are never averaged together.",
                             emphasis=True))

    order = [v.name for v in suite.variants] if suite is not None else []
    summaries = {}
    for budget in data.budgets:
        at = runs[runs["budget"] == budget]
        axes = variant_axes(at, suite)
        summary = summarize_variants(at, axes, order)
        summaries[budget] = summary
        _summary_section(report, data, budget, at, summary, axes)

    _reference_section(report, data)
    for budget in data.budgets:
        at = runs[runs["budget"] == budget]
        _plots_section(report, data, budget, at, summaries[budget], order)
    _provenance_section(report, data)


def _summary_section(report: _Report, data: SuiteData, budget: str, runs: pd.DataFrame,
                     summary: pd.DataFrame, axes: Sequence[str]) -> None:
    report.add(Heading(3, f"Summary: budget {budget}"))
    report.add(Paragraph(
        "Mean ± standard deviation over the finished seeds of each variant (the std is "
        "omitted with one seed). Log-likelihoods, ELBO, KL and distortion are in nats per "
        "test example; test LL is the IWAE estimate of log p(x) (higher is better). "
        "Sharpness is the Laplacian variance of the model's images divided by that of the "
        "test images (1 = as sharp as the data; lower = blurrier)."))
    quality, cost = summary_tables(summary, axes)
    by_family = family_summary_tables(summary, axes)
    if len(by_family) == 1:
        report.add(quality)
    else:  # one table per family: each with its own settings and metrics
        for heading, table in by_family:
            report.add(Heading(4, heading), table)
    if cost is not None:
        report.add(Paragraph("Throughput and cost (mean ± std over seeds):"), cost)
    notes = _missing_metric_notes(runs, summary)
    if notes:
        report.add(Paragraph(" ".join(notes), emphasis=True))


def _missing_metric_notes(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    missing = sorted({label for column, label in NEW_METRICS.items()
                      if f"{column}_mean" not in summary.columns
                      or not summary[f"{column}_mean"].notna().any()})
    notes = []
    if missing:
        notes.append(f"Not recorded by these runs: {', '.join(missing)} (results written "
                     "before these metrics existed, or not measurable here).")
    if "metric_blur_reason" in runs.columns:
        reasons = sorted({str(r) for r in runs["metric_blur_reason"] if not _missing(r)
                          and str(r).strip()})
        if reasons:
            notes.append(f"Blur/sharpness not computed: {'; '.join(reasons)}.")
    return notes


def _reference_section(report: _Report, data: SuiteData) -> None:
    report.add(Heading(3, "Paper vs ours"))
    if data.suite is None:
        report.add(Paragraph(f"References unavailable ({data.suite_note}).", emphasis=True))
        return
    if not data.suite.references:
        report.add(Paragraph("The suite lists no published references.", emphasis=True))
        return
    report.add(Paragraph(
        "Published values beside ours (mean ± std over finished seeds of the matching runs, "
        "at each budget that ran). test_nll is -log p(x) in nats (lower is better; ours is "
        "-test LL), so a positive difference means ours is worse; the same holds for "
        "test_cll (-log p(missing | given)) and test_error (%), while for test_ll and "
        "accuracies a positive difference means ours is better. Only runs at the "
        "reference's own budget reproduce the published protocol; other budgets are shown "
        "for orientation and are not reproductions."))
    records = reference_rows(data.runs, data.suite.references, data.budgets)
    # one table per run of consecutive rows sharing a protocol card, each followed by its card
    # (in full the first time; a card shared by rows further down is referred back to)
    shown: set[str] = set()
    for _, group in itertools.groupby(records, key=lambda r: _card_name(r.get("card"))):
        group = list(group)
        card = group[0].get("card")
        report.add(reference_table(group))
        if card is not None and card.name in shown:
            report.add(Paragraph(f"Protocol card {card.name}: as listed above.", emphasis=True))
            continue
        report.add(*card_blocks(card, [r["reference_budget"] for r in group], len(group)))
        if card is not None:
            shown.add(card.name)
    budgets = {r.budget for r in data.suite.references}
    missing = sorted(b for b in budgets if b not in data.budgets)
    if missing:
        report.add(Paragraph(
            f"No run at the {', '.join(missing)} budget is stored, so no row above is a "
            "reproduction of the published protocol.", emphasis=True))
    notes = sorted({f"{r.source}: {r.note}" for r in data.suite.references if r.note})
    if notes:
        report.add(Bullets([("note", n) for n in notes]))


def _plots_section(report: _Report, data: SuiteData, budget: str, runs: pd.DataFrame,
                   summary: pd.DataFrame, order: Sequence[str]) -> None:
    from bench import plots

    name = data.name
    stem = f"{name}-{budget}"
    where = f"suite {name}, budget {budget}"
    report.add(Heading(3, f"Plots: budget {budget}"))
    made = len(report.images)
    seeds = "error bars: std over seeds"

    report.plot(
        ll_vs_k_data(summary), f"{stem}-ll-vs-k",
        f"Test log-likelihood (nats, higher is better) against the number of samples k "
        f"in the training objective, VAE vs IWAE ({where}; {seeds}; variants with "
        "beta = 1).",
        f"Test log-likelihood vs k ({name}, {budget})", plots.ll_vs_k)
    report.plot(
        posterior_kl_vs_k_data(summary), f"{stem}-posterior-kl-vs-k",
        "Gaussian mixture of Le et al. 2019: exact KL(p(c|x) || q(c|x)) of the learned "
        f"inference network against the particles K, reverse (IWAE) vs forward (RWS) "
        f"({where}; {seeds}). Lower is a better inference network.",
        f"Inference network quality vs K ({name}, {budget})", plots.ll_vs_k,
        ylabel="KL(p(c|x) || q(c|x)) (nats, lower is better)",
        xlabel="K (particles, log scale)")
    report.plot(
        snr_vs_k_data(runs), f"{stem}-snr-vs-k",
        "Gaussian model of Rainforth et al. 2018: the signal-to-noise ratio |E g| / std g of "
        "each estimator's gradient for the encoder's b and the decoder's mu (mean over the 20 "
        "coordinates), against the samples k, near the optimum. Slopes: least squares in "
        "log-log over k = 10..1000, points at least 3x the dotted floor 1/sqrt(draws) below "
        f"which an estimated SNR cannot go ({where}; {seeds}). Theory: IWAE's encoder "
        "-1/2, its decoder +1/2.",
        f"Gradient SNR vs k ({name}, {budget})", plots.snr_vs_k)
    report.plot(
        bimodal_fit_data(runs), f"{stem}-bimodal",
        "Bimodal toy: one Gaussian q fitted to a target with two well-separated modes by "
        "reverse KL(q||p) (mode-seeking) and forward KL(p||q) (mass-covering), drawn over "
        f"the target density ({where}).",
        f"One Gaussian fitted to two modes ({name}, {budget})", bimodal_target.plot_fits)

    _family_figures(report, data, summary, runs, stem, where, seeds)

    if report.plot(
            rate_distortion_data(summary), f"{stem}-rate-distortion",
            f"Rate-distortion: rate KL(q(z|x) || p(z)) against distortion, nats per example, "
            f"one point per beta ({where}; {seeds}). Lower-left is better; beta trades one "
            "for the other.",
            f"Rate vs distortion ({name}, {budget})", plots.rate_distortion) \
            and not report.plot(
                sharpness_data(summary), f"{stem}-sharpness",
                f"Sharpness of prior samples and reconstructions against beta ({where}; "
                f"{seeds}): Laplacian variance of the model's images / of the test images; "
                "1.0 (dotted) = as sharp as the data, lower = blurrier.",
                f"Sharpness vs beta ({name}, {budget})", plots.sharpness_vs_beta):
        report.add(Paragraph("Sharpness vs beta: no sharpness recorded by these runs.",
                             emphasis=True))
    report.plot(
        posterior_bounds_data(summary), f"{stem}-posteriors",
        f"Test log-likelihood (IWAE estimate) and ELBO per posterior ({where}; {seeds}): "
        "a richer q closes the gap between the ELBO and log p(x).",
        f"What the posterior buys ({name}, {budget})", plots.posterior_bounds)
    report.plot(
        throughput_data(summary), f"{stem}-throughput",
        f"Training throughput per variant, examples per second (median over epochs after "
        f"the first; {where}; {seeds}).",
        f"Training throughput ({name}, {budget})", plots.throughput)
    if not report.plot(
            curve_data(runs, data.curves, order), f"{stem}-learning-curves",
            f"Learning curves: the training bound (nats per example, higher is better) per "
            f"epoch, mean over the finished seeds of each variant ({where}).",
            f"Training bound per epoch ({name}, {budget})", plots.learning_curves):
        report.add(Paragraph("Learning curves: no per-epoch curves stored.", emphasis=True))
    report.plot(  # EM fits: iterations are not epochs, and their bound is exact
        curve_data(runs, data.curves, order, unit="EM iteration"), f"{stem}-em-curves",
        f"EM fits: the exact training log-likelihood (nats per example, higher is better) "
        f"after each EM iteration, mean over the finished seeds of each variant ({where}).",
        f"Training log-likelihood per EM iteration ({name}, {budget})",
        plots.learning_curves, xlabel="EM iteration",
        ylabel="training log-likelihood (nats per example)")
    if len(report.images) == made:
        report.add(Paragraph("No plot: no finished run with metrics at this budget.",
                             emphasis=True))

    sets = sample_sets(runs, data.samples, order)
    extra = image_row_sets(runs, data.samples, order)
    if not sets and not extra:
        report.add(Paragraph("Samples: no sample images stored for these runs (results "
                             "written before samples were stored).", emphasis=True))
        return
    report.add(Heading(4, f"Samples: budget {budget}"))
    for rows in extra:
        seed = f"seed {rows.seed}" if rows.seed is not None else "one seed"
        report.plot(
            rows.rows, f"{stem}-images-{rows.variant}",
            f"{rows.variant} ({seed}, run {rows.run_id}): one row per kind of image, as "
            "labelled on the left (grayscale; 0.5 gray marks hidden pixels in masked inputs).",
            f"{rows.variant}: suite {name}, budget {budget}, {seed}",
            plots.image_rows)
    for images in sets:
        seed = f"seed {images.seed}" if images.seed is not None else "one seed"
        report.figure(
            f"{stem}-samples-{images.variant}",
            f"{images.variant} ({seed}, run {images.run_id}): samples from the prior (left) "
            "and test images, each row of originals above the row of their reconstructions "
            "(right); grayscale.",
            f"{images.variant}: suite {name}, budget {budget}, {seed}",
            lambda path, title, images=images: plots.sample_grid(
                images.prior, images.original, images.reconstruction, path, title=title))


def _family_figures(report: _Report, data: SuiteData, summary: pd.DataFrame,
                    runs: pd.DataFrame, stem: str, where: str, seeds: str) -> None:
    """The model families' own plots: EM mixture estimator convergence, CVAE quadrant
    completion and M2 error against their published values, inpainting scores."""
    from bench import plots

    name = data.name
    references = data.suite.references if data.suite is not None else ()
    report.plot(
        prior_iwae_data(runs), f"{stem}-prior-iwae",
        "Mixture of Bernoullis fitted by EM, where log p(x) is exact: the gap between the "
        "exact test log-likelihood and the IWAE estimate with q = p(z), against the number "
        f"of samples k ({where}; {seeds}). The estimate is a stochastic lower bound and "
        "converges to the exact value as k grows; q = p(z) is the worst proposal, so it "
        "needs many samples.",
        f"IWAE estimate with q = p(z) vs exact log p(x) ({name})", plots.ll_vs_k,
        log_y=True, ylabel="exact log p(x) - IWAE estimate (nats, log scale)",
        xlabel="k (samples from the prior, log scale)")

    panels = (
        ("metric_test_error", "labelled", summary["cfg_model"].isin(["m2", "classifier"])
         if "cfg_model" in summary.columns else None,
         "Semi-supervised M2: test error against the number of labelled examples, beside "
         "M2's classifier trained on the labelled examples alone (supervised only)",
         "labelled training examples N (log scale)", "test error (%, lower is better)", True),
        ("metric_test_cll", "given_quadrants", summary.get("cfg_condition") == "quadrants"
         if "cfg_condition" in summary.columns else None,
         "Quadrant completion: -log p(missing quadrants | given) against the quadrants given",
         "quadrants given", "-log p(missing | given) (nats per image, lower is better)",
         False),
    )
    for metric, axis, rows, caption, xlabel, ylabel, log_x in panels:
        if rows is None:
            continue
        table = axis_metric_data(summary, metric, axis, rows)
        if table is None:
            continue
        refs = axis_reference_data(summary[rows], references, metric, axis)
        report.figure(
            f"{stem}-{metric[len('metric_'):]}-vs-{axis}",
            f"{caption} ({where}; {seeds}); open diamonds: the published values (a "
            "reproduction only at their own budget).",
            f"{caption.split(':')[0]} ({name})",
            lambda path, title, table=table, refs=refs, xlabel=xlabel, ylabel=ylabel,
            log_x=log_x: plots.metric_vs_axis(table, refs, path, title=title, xlabel=xlabel,
                                              ylabel=ylabel, log_x=log_x))

    gain = semisupervised_data(summary)
    if gain is not None:
        report.add(Paragraph(
            f"What the unlabelled images buy ({where}): M2's test error beside the supervised-"
            "only baseline, M2's own classifier q(y|x) trained on the labelled cross-entropy "
            "alone from the same initial weights, on the same labelled images, with the same "
            "optimiser and number of steps (mean ± std over seeds; percentage points, "
            "negative = M2 better)."))
        report.add(semisupervised_table(gain))

    report.plot(
        disentanglement_data(runs), f"{stem}-disentanglement",
        "Disentanglement against beta (and the controlled-capacity objective, C = its "
        f"final capacity in nats): each dot one seed, bars the mean ± std ({where}). MIG and "
        "DCI are 0 for codes that mix the factors and 1 for codes that are the factors; the "
        "beta-VAE metric's chance level is 100 / (factors) %. Reconstruction shows what the "
        f"disentanglement costs. {factor_metric_sentence(runs)}",
        f"Disentanglement and reconstruction vs beta ({name})", plots.per_seed_panels,
        xlabel="objective")
    report.plot(
        unit_kl_data(runs), f"{stem}-unit-kl",
        "KL(q(z_j|x) || N(0, 1)) of each latent unit, averaged over the test set, units "
        f"sorted from most to least informative in each run, mean ± std over seeds ({where})"
        ". A unit near 0 carries no information; larger beta switches units off.",
        f"KL per latent unit ({name})", plots.profile_lines,
        xlabel="latent unit, by decreasing KL", ylabel="KL per unit (nats)")

    table = inpainting_data(runs)
    if table is not None:
        report.add(Paragraph(
            "Inpainting: -log p(missing pixels | observed) in nats per test image (summed over "
            "its missing pixels, averaged over images) and the % of missing pixels predicted "
            "wrongly, per mask and imputation method, for each input-dropout rate p used in "
            "training (mean ± std over seeds). One-pass: z ~ q(z | image with missing pixels "
            "zeroed); iterative: alternate z ~ q(z | filled image) and x_missing ~ p(x | z); "
            "matched: the iterative chain with the encoder shown the filled image with "
            "training-style pixel dropout at the model's own p (what a dropout-trained encoder "
            "saw in training). At p = 0 the matched chain is the iterative chain: its numbers "
            "are the iterative ones, not rerun, and it has no bar of its own."))
        report.add(inpainting_table(table))
        lls = dropout_ll_data(runs)
        if lls is not None:
            report.add(Paragraph(
                "Test log-likelihood beside the effective sample size of its importance weights "
                "(ESS / k_eval, mean ± std over seeds): the test LL is an importance-sampling "
                "estimate with q(z|x) as the proposal, and a dropout-trained encoder is scored "
                "here on complete test images, off the distribution it was trained on, so a "
                "small ESS warns that its estimate may be looser (further below log p(x)) "
                "than the plain VAE's, and part of its lower test LL may be the estimator, not "
                "the model."))
            report.add(dropout_ll_table(lls))
        table = table[~((table["method"] == INPAINT_METHODS["matched"])
                        & (table["input_dropout"] == 0))]  # p = 0: the iterative bar again
        table = table.sort_values("input_dropout", kind="stable")  # bars in order of p
        bars = table.assign(group=table["mask"],
                            bar=[f"p={p:g}, {m}" for p, m in
                                 zip(table["input_dropout"], table["method"], strict=True)],
                            mean=table["nll_mean"], std=table["nll_std"])
        report.plot(
            bars, f"{stem}-inpainting",
            f"Inpainting: -log p(missing | observed) per mask, training input dropout p and "
            f"imputation method ({where}; {seeds}). Lower is better.",
            f"Imputation of missing pixels ({name})",
            plots.grouped_bars, ylabel="-log p(missing | observed) (nats per image)")


def _provenance_section(report: _Report, data: SuiteData) -> None:
    report.add(Heading(3, "Provenance"))
    items = provenance_items(data.runs)
    report.add(Bullets(items) if items else Paragraph("No provenance recorded.",
                                                      emphasis=True))
    report.add(Heading(3, "Failed and diverged runs"))
    failures = failure_rows(data.runs)
    if not failures:
        report.add(Paragraph("None: every run finished."))
        return
    rows = [[str(f["variant"]), "-" if f["seed"] is None else str(f["seed"]), f["budget"],
             f["status"], f["error"] or "-",
             "-" if f["diverged_epoch"] is None else str(f["diverged_epoch"])]
            for f in failures]
    report.add(Table(["variant", "seed", "budget", "status", "error", "diverged at epoch"],
                     rows, [False, True, False, False, False, True]))


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "figure"


def _card_name(card: Card | None) -> str | None:
    return None if card is None else card.name
