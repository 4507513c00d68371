"""Matplotlib rendering for the report: each function draws one prepared data set into a PNG
(sample grids, which are pixel tiles, are composed with Pillow in matplotlib's font).

The data come from the pure preparation functions in `bench.report` (DataFrames and arrays);
nothing here reads the results store or computes statistics. Every function writes one file,
closes its figure and returns the path. The Agg backend is selected before pyplot is
imported, so plots render on machines without a display (clusters, CI).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from bench.images import SEPARATOR_HEX, mosaic, to_rgb  # noqa: E402

DPI = 110
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


def _plain_number(value: float, _pos: object = None) -> str:
    return f"{value:g}"


def ll_vs_k(data: pd.DataFrame, path: str | Path, *, title: str,
            ylabel: str = "test log-likelihood (nats, higher is better)",
            xlabel: str = "k (samples per example in the training objective, log scale)",
            log_y: bool = False) -> Path:
    """A metric (default: test log-likelihood) against k (log scale), one line per `line`,
    error bars = std.

    `data`: columns line, k, mean, std, seeds (see `bench.report.ll_vs_k_data`).
    """
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        lines = list(dict.fromkeys(data["line"]))
        shared = data["k"].duplicated().any()  # e.g. VAE and IWAE at k = 1: dodge sideways
        for i, line in enumerate(lines):
            group = data[data["line"] == line].sort_values("k")
            dodge = 10 ** (0.012 * (i - (len(lines) - 1) / 2)) if shared else 1.0
            layers = int(group["layers"].iloc[0]) if "layers" in group.columns else 1
            ax.errorbar(group["k"] * dodge, group["mean"], yerr=group["std"].fillna(0.0),
                        marker="o" if layers == 1 else "s", capsize=3, linewidth=1.5,
                        linestyle="-" if layers == 1 else "--", label=str(line))
        ax.set_xscale("log")
        ks = sorted(data["k"].unique())
        ax.set_xticks(ks)
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(ks) == 1:
            ax.set_xlim(ks[0] / 2, ks[0] * 2)
        else:
            ax.set_xlim(min(ks) / 1.5, max(ks) * 1.5)
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="best")
        return _save(fig, path)


def snr_vs_k(data: pd.DataFrame, path: str | Path, *, title: str) -> Path:
    """Gradient SNR against k, log-log: encoder lines solid, decoder lines dashed (each
    labelled with its fitted slope), error bars = std over seeds, the 1/sqrt(draws) floor
    dotted. `data`: columns of `bench.report.figures.snr_vs_k_data`."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.8, 4.6))
        for line in dict.fromkeys(data["line"]):
            group = data[data["line"] == line].sort_values("k")
            encoder = group["part"].iloc[0] == "encoder"
            ax.errorbar(group["k"], group["mean"], yerr=group["std"].fillna(0.0),
                        marker="o" if encoder else "s", capsize=3, linewidth=1.5,
                        linestyle="-" if encoder else "--", label=str(line))
        for floor in sorted(set(np.round(data["floor"].to_numpy(dtype=float), 12))):
            ax.axhline(floor, color="0.4", linestyle=":", linewidth=1.0,
                       label=f"floor 1/sqrt(draws) = {floor:.2g}")
        ks = sorted(data["k"].unique())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("k (samples per data point, log scale)")
        ax.set_ylabel("gradient SNR |E g| / std g (log scale)")
        ax.set_title(title)
        ax.legend(loc="best", fontsize=7)
        return _save(fig, path)


def history_series(points, steps: pd.DataFrame, path: str | Path, *, title: str,
                   declared: set[str] = frozenset()) -> Path:
    """One metric's history: the mean over seeds per tracked commit (in history order), a band
    from the lowest to the highest seed, a vertical line at each step (red regressed, green
    improved, grey dashed declared) labelled with its commit; x ticks thinned to about ten
    commits (short hash and date); `declared` commits (bench.steps.declared_changes) where no
    step is are dotted grey. `points`: bench.steps.Point; `steps`: rows of
    bench.steps.find_steps for this series."""
    colors = {"regressed": "#c0392b", "improved": "#1e8449", "declared": "0.45"}
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7.2, 3.4))
        x = np.arange(len(points))
        ax.fill_between(x, [min(p.values) for p in points], [max(p.values) for p in points],
                        color="#9ab7d3", alpha=0.5, linewidth=0, label="seeds (min to max)")
        ax.plot(x, [p.mean for p in points], color="#1f4e79", linewidth=1.2,
                marker="o" if len(points) <= 60 else None, markersize=3, label="mean")
        for step in steps.itertuples():
            ax.axvline(step.index - 0.5, color=colors[step.verdict], linewidth=1.4,
                       linestyle="--" if step.verdict == "declared" else "-",
                       label=f"{step.verdict} at {step.commit[:7]} ({step.delta:+.3g})"
                       + (f": {step.reason}" if step.reason else ""))
        marked = {step.commit for step in steps.itertuples()}
        shown = False
        for i, point in enumerate(points):  # declared changes that moved nothing: dotted
            if point.commit in declared and point.commit not in marked:
                ax.axvline(i - 0.5, color="0.45", linewidth=1.0, linestyle=":",
                           label=None if shown else "declared change (PROTOCOL, torch)")
                shown = True
        every = max(1, len(points) // 10)
        ticks = list(range(0, len(points), every))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{points[i].commit[:7]}\n{points[i].date[:10]}" for i in ticks],
                           fontsize=7)
        ax.set_xlim(-0.5, len(points) - 0.5)
        ax.set_xlabel("tracked commit (history order)")
        ax.set_title(title)
        ax.legend(loc="best", fontsize=7)
        return _save(fig, path)


def rate_distortion(data: pd.DataFrame, path: str | Path, *, title: str) -> Path:
    """Distortion against rate, one point per variant labelled by beta, error bars = std.

    `data`: columns line, beta, rate_mean, rate_std, distortion_mean, distortion_std.
    The rate axis is logarithmic when the rates span more than a factor of 30 (beta = 0).
    """
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        for line, group in data.groupby("line", sort=False):
            group = group.sort_values("beta")
            ax.errorbar(group["rate_mean"], group["distortion_mean"],
                        xerr=group["rate_std"].fillna(0.0),
                        yerr=group["distortion_std"].fillna(0.0), marker="o", capsize=3,
                        linewidth=1.0, linestyle="--", label=str(line))
            for _, row in group.iterrows():
                ax.annotate(f"β={row['beta']:g}", (row["rate_mean"], row["distortion_mean"]),
                            textcoords="offset points", xytext=(6, 6), fontsize=9)
        rates = data["rate_mean"].to_numpy(dtype=float)
        rates = rates[np.isfinite(rates) & (rates > 0)]
        if len(rates) and rates.max() / rates.min() > 30:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
            ax.set_xlabel("rate = KL(q(z|x) || p(z)) (nats, log scale)")
        else:
            ax.set_xlabel("rate = KL(q(z|x) || p(z)) (nats)")
        ax.set_ylabel("distortion = -E_q log p(x|z) (nats)")
        ax.set_title(title)
        ax.margins(x=0.12, y=0.12)
        if data["line"].nunique() > 1:
            ax.legend(loc="best")
        return _save(fig, path)


def sharpness_vs_beta(data: pd.DataFrame, path: str | Path, *, title: str) -> Path:
    """Sharpness ratios (prior samples, reconstructions) against beta; 1.0 = the data's.

    `data`: columns line, beta, prior_mean, prior_std, recon_mean, recon_std (NaN allowed).
    """
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        betas = sorted(data["beta"].unique())
        positions = {b: i for i, b in enumerate(betas)}  # categorical: beta = 0 is common
        multi = data["line"].nunique() > 1
        for line, group in data.groupby("line", sort=False):
            group = group.sort_values("beta")
            x = group["beta"].map(positions)
            suffix = f" ({line})" if multi else ""
            for column, label, marker in (("prior", "prior samples", "o"),
                                          ("recon", "reconstructions", "s")):
                mean = group[f"{column}_mean"]
                if mean.notna().any():
                    ax.errorbar(x, mean, yerr=group[f"{column}_std"].fillna(0.0), marker=marker,
                                capsize=3, linewidth=1.5, label=label + suffix)
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2,
                   label="as sharp as the test data")
        ax.set_xticks(range(len(betas)))
        ax.set_xticklabels([f"{b:g}" for b in betas])
        ax.set_xlabel("β (weight on the KL term)")
        ax.set_ylabel("sharpness (Laplacian variance, model / data)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(loc="best")
        return _save(fig, path)


def throughput(data: pd.DataFrame, path: str | Path, *, title: str) -> Path:
    """Horizontal bars of training throughput per variant (mean, error bar = std).

    `data`: columns variant, mean, std, seeds.
    """
    with plt.rc_context(_STYLE):
        height = max(2.4, 0.45 * len(data) + 1.4)
        fig, ax = plt.subplots(figsize=(6.8, height))
        y = np.arange(len(data))
        ax.barh(y, data["mean"], xerr=data["std"].fillna(0.0), capsize=3, color="#4C72B0",
                alpha=0.85)
        ax.set_yticks(y)
        ax.set_yticklabels([str(v) for v in data["variant"]])
        ax.invert_yaxis()
        ends = (data["mean"] + data["std"].fillna(0.0)).to_numpy(dtype=float)
        top = float(np.nanmax(ends)) if np.isfinite(ends).any() else 0.0
        for i, (value, end) in enumerate(zip(data["mean"], ends, strict=True)):
            if np.isfinite(value):  # the label right of the error bar, never on it
                ax.text(end + 0.015 * top, i, f"{value:,.0f}", va="center", fontsize=9)
        ax.set_xlim(0, top * 1.25 if top > 0 else 1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
        ax.set_xlabel("training throughput (examples / s, median over epochs)")
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
        return _save(fig, path)


def posterior_bounds(data: pd.DataFrame, path: str | Path, *, title: str) -> Path:
    """Per variant: test LL and ELBO as points with std error bars (nats, higher better).

    `data`: columns variant, ll_mean, ll_std, elbo_mean, elbo_std.
    """
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.8, max(2.6, 0.45 * len(data) + 1.4)))
        y = np.arange(len(data))
        ax.errorbar(data["ll_mean"], y - 0.12, xerr=data["ll_std"].fillna(0.0), fmt="o",
                    capsize=3, label="test log-likelihood (IWAE, k_eval)")
        ax.errorbar(data["elbo_mean"], y + 0.12, xerr=data["elbo_std"].fillna(0.0), fmt="s",
                    capsize=3, label="test ELBO")
        ax.set_yticks(y)
        ax.set_yticklabels([str(v) for v in data["variant"]])
        ax.invert_yaxis()
        ax.set_xlabel("nats per example (higher is better)")
        ax.set_title(title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8,
                  frameon=False)
        fig.subplots_adjust(bottom=0.22)
        return _save(fig, path)


def learning_curves(data: pd.DataFrame, path: str | Path, *, title: str, xlabel: str = "epoch",
                    ylabel: str = "training bound (nats per example, higher is better)"
                    ) -> Path:
    """Training bound against epoch (or `xlabel`'s unit), one line per variant (mean over
    seeds).

    `data`: columns variant, epoch, mean, seeds. The y range leaves out the first epoch's
    very low bound where it would flatten the rest of the curves.
    """
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7.2, 4.6))
        styles = ("-", "--", ":", "-.")  # beyond 10 variants the colours repeat
        for i, (variant, group) in enumerate(data.groupby("variant", sort=False)):
            group = group.sort_values("epoch")
            ax.plot(group["epoch"], group["mean"], marker="o" if len(group) <= 20 else None,
                    markersize=3, linewidth=1.5, linestyle=styles[(i // 10) % len(styles)],
                    label=str(variant))
        values = data["mean"].to_numpy(dtype=float)
        later = data.loc[data["epoch"] > data["epoch"].min(), "mean"].to_numpy(dtype=float)
        if len(later) and np.isfinite(later).any() and np.isfinite(values).any():
            low, high = np.nanmin(later), np.nanmax(values)
            if np.nanmin(values) < low - 2 * (high - low):  # the first epoch dominates
                span = high - low if high > low else 1.0
                ax.set_ylim(low - 0.25 * span, high + 0.1 * span)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # 1 epoch: "1"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="best", ncol=2 if data["variant"].nunique() > 6 else 1)
        return _save(fig, path)


def interleave_rows(originals: np.ndarray, reconstructions: np.ndarray,
                    columns: int) -> tuple[np.ndarray, list[str]]:
    """Rows of `columns` originals, each followed by the row of their reconstructions."""
    n = min(len(originals), len(reconstructions))
    stacked, labels = [], []
    for start in range(0, n, columns):
        chunk = slice(start, min(start + columns, n))
        for images, label in ((originals[chunk], "original"),
                              (reconstructions[chunk], "reconstruction")):
            row = np.full((columns, *images.shape[1:]), np.nan)
            row[:len(images)] = images
            stacked.append(row)
            labels.append(label)
    if not stacked:
        return np.zeros((0, 1, 1)), []
    return np.concatenate(stacked), labels


def sample_grid(prior: np.ndarray | None, originals: np.ndarray | None,
                reconstructions: np.ndarray | None, path: str | Path, *, title: str,
                columns: int = 8) -> Path:
    """Prior samples (left) and test originals above their reconstructions (right), grayscale.

    Each argument is an (n, h, w) array of intensities in [0, 1], or None/empty when absent.
    The images are pixel tiles, composed and labelled with Pillow (in matplotlib's font)
    rather than drawn through matplotlib's axes: a report draws one grid per variant, and a
    suite of 40 variants spent 4 of its 15 s in these figures.
    """
    panels: list[tuple[str, np.ndarray, list[str]]] = []
    pairs = 0 if originals is None or reconstructions is None else \
        min(len(originals), len(reconstructions))
    columns = max(1, min(columns, max(pairs, 0 if prior is None else len(prior))))
    if prior is not None and len(prior):
        panels.append((f"samples from the prior ({len(prior)})", mosaic(prior, columns), []))
    if pairs:
        tiles, labels = interleave_rows(originals, reconstructions, columns)
        panels.append((f"test images and reconstructions ({pairs})", mosaic(tiles, columns),
                       ["orig." if label == "original" else "recon." for label in labels]))
    title_font, heading_font, label_font = (_font(points) for points in (11, 10, 8))
    margin, gap = 12, 24
    panel_width = round(4.0 * DPI)  # as the matplotlib figures: about 4 inches a panel
    pictures = []
    for heading, tiled, labels in panels:
        scale = max(1, round(panel_width / tiled.shape[1]))
        pixels = to_rgb(tiled).repeat(scale, axis=0).repeat(scale, axis=1)
        label_width = max([int(label_font.getlength(x)) + 6 for x in labels] or [0])
        pictures.append((heading, Image.fromarray(pixels), labels, label_width))
    line = _line_height(heading_font)
    width = margin + sum(max(p.width + w, int(heading_font.getlength(h)))
                         for h, p, _, w in pictures) + gap * max(0, len(pictures) - 1) + margin
    width = max(width, int(title_font.getlength(title)) + 2 * margin, 320)
    top = margin + _line_height(title_font) + 8
    height = top + line + 4 + max([p.height for _, p, _, _ in pictures] or [0]) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, margin), title, fill="black", font=title_font, anchor="ma")
    left = margin
    for heading, picture, labels, label_width in pictures:
        span = max(picture.width + label_width, int(heading_font.getlength(heading)))
        draw.text((left + span / 2, top), heading, fill="black", font=heading_font,
                  anchor="ma")
        x, y = left + label_width, top + line + 4
        canvas.paste(picture, (x, y))
        rows = picture.height / max(1, len(labels))
        for i, label in enumerate(labels):
            draw.text((x - 6, y + rows * (i + 0.5)), label, fill="black", font=label_font,
                      anchor="rm")
        left += span + gap
    path = Path(path)
    canvas.save(path, format="PNG", dpi=(DPI, DPI))
    return path


def _font(points: float) -> ImageFont.FreeTypeFont:
    """matplotlib's own font (DejaVu Sans, shipped with it) at `points` for DPI."""
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf"
                                  / "DejaVuSans.ttf"), round(points * DPI / 72))


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def metric_vs_axis(data: pd.DataFrame, references: pd.DataFrame | None, path: str | Path, *,
                   title: str, xlabel: str, ylabel: str, log_x: bool = False) -> Path:
    """A metric against a setting (labelled examples, given quadrants, ...), one line per
    `line`, error bars = std; published values as open markers in the line's colour.

    `data`: columns line, x, mean, std. `references`: columns line, x, value (or None).
    """
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        colours = {}
        for line, group in data.groupby("line", sort=False):
            group = group.sort_values("x")
            bars = ax.errorbar(group["x"], group["mean"], yerr=group["std"].fillna(0.0),
                               marker="o", capsize=3, linewidth=1.5, label=f"{line} (ours)")
            colours[line] = bars.lines[0].get_color()
        if references is not None and not references.empty:
            for line, group in references.groupby("line", sort=False):
                group = group.sort_values("x")
                ax.plot(group["x"], group["value"], marker="D", markerfacecolor="none",
                        linestyle=":", color=colours.get(line, "black"), markersize=7,
                        label=f"{line} (published)")
        xs = sorted(set(data["x"]) | (set(references["x"]) if references is not None
                                      and not references.empty else set()))
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(xs)
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.margins(x=0.08, y=0.1)
        ax.legend(loc="best", fontsize=8)
        return _save(fig, path)


def grouped_bars(data: pd.DataFrame, path: str | Path, *, title: str, ylabel: str) -> Path:
    """Bars of `mean` (error bar = std) per `group` on the x axis, one colour per `bar`.

    `data`: columns group, bar, mean, std.
    """
    with plt.rc_context(_STYLE):
        groups = list(dict.fromkeys(data["group"]))
        bars = list(dict.fromkeys(data["bar"]))
        fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(groups) + 2.0), 4.4))
        width = 0.8 / max(1, len(bars))
        for i, bar in enumerate(bars):
            rows = data[data["bar"] == bar].set_index("group").reindex(groups)
            x = np.arange(len(groups)) + (i - (len(bars) - 1) / 2) * width
            ax.bar(x, rows["mean"], width, yerr=rows["std"].fillna(0.0), capsize=2,
                   label=str(bar))
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels([str(g) for g in groups])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
        ax.legend(loc="best", fontsize=8)
        return _save(fig, path)


def image_rows(rows: Sequence[tuple[str, np.ndarray]], path: str | Path, *, title: str,
               columns: int = 16) -> Path:
    """Labelled rows of grayscale images: each (label, (n, h, w) array in [0, 1]) is one row
    of at most `columns` images, its label on the left. Rows of another image size than the
    first are left out."""
    rows = [(label, images[:columns]) for label, images in rows if len(images)]
    shape = rows[0][1].shape[1:] if rows else (1, 1)
    rows = [(label, images) for label, images in rows if images.shape[1:] == shape]
    width = max([len(images) for _, images in rows] or [1])
    tiles = np.full((max(1, len(rows)) * width, *shape), np.nan)
    for r, (_, images) in enumerate(rows):
        tiles[r * width:r * width + len(images)] = images
    tiled = mosaic(tiles, width)
    cmap = plt.get_cmap("gray").with_extremes(bad=SEPARATOR_HEX)
    with plt.rc_context({**_STYLE, "axes.grid": False}):
        tile = min(0.6, 7.4 / width)  # inches per image: at most 0.6, the row within 7.4
        label_inches = 0.075 * max([len(label) for label, _ in rows] or [4]) + 0.4
        fig, ax = plt.subplots(figsize=(tile * width + label_inches + 0.4,
                                        min(16.0, tile * len(rows) * shape[0] / shape[1] + 0.9)))
        ax.imshow(np.ma.masked_invalid(tiled), cmap=cmap, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        h = (tiled.shape[0] - 1) / max(1, len(rows))
        ax.set_yticks([h * (i + 0.5) for i in range(len(rows))])
        ax.set_yticklabels([label for label, _ in rows], fontsize=8)
        ax.tick_params(axis="y", length=0)
        ax.set_xticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(title, fontsize=11)
        return _save(fig, path)


def per_seed_panels(data: pd.DataFrame, path: str | Path, *, title: str,
                    xlabel: str = "variant") -> Path:
    """One panel per metric: every seed's value as a dot, the mean over seeds as a bar with
    a std error bar, one category per variant on the x axis (in the data's order).

    `data`: columns panel, category, seed, value.
    """
    panels = list(dict.fromkeys(data["panel"]))
    categories = list(dict.fromkeys(data["category"]))
    columns = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // columns)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, columns, figsize=(6.0 * columns, 3.6 * rows),
                                 squeeze=False)
        for ax, panel in zip(axes.flat, panels, strict=False):
            group = data[data["panel"] == panel]
            stats = group.groupby("category", sort=False)["value"].agg(["mean", "std"])
            stats = stats.reindex(categories)
            x = np.arange(len(categories))
            ax.bar(x, stats["mean"], 0.6, yerr=stats["std"].fillna(0.0), capsize=3,
                   color="#4C72B0", alpha=0.35, label="mean ± std over seeds")
            seeds = sorted(group["seed"].unique())
            for i, seed in enumerate(seeds):
                at = group[group["seed"] == seed]
                offset = 0.16 * (i - (len(seeds) - 1) / 2)
                ax.plot([categories.index(c) + offset for c in at["category"]], at["value"],
                        "o", markersize=4, label=f"seed {seed}")
            ax.set_xticks(x)
            ax.set_xticklabels([str(c) for c in categories])
            ax.set_xlabel(xlabel)
            ax.set_title(str(panel), fontsize=10)
            ax.grid(axis="x", visible=False)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8,
                   frameon=False)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        return _save(fig, path)


def profile_lines(data: pd.DataFrame, path: str | Path, *, title: str, xlabel: str,
                  ylabel: str) -> Path:
    """Lines of `mean` (error bar = std) against integer `x`, one per `line`.

    `data`: columns line, x, mean, std.
    """
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.8, 4.2))
        for line, group in data.groupby("line", sort=False):
            group = group.sort_values("x")
            ax.errorbar(group["x"], group["mean"], yerr=group["std"].fillna(0.0), marker="o",
                        markersize=4, capsize=2, linewidth=1.3, label=str(line))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="best", fontsize=8)
        return _save(fig, path)


def is_png(path: str | Path) -> bool:
    """Whether the file starts with the PNG signature."""
    with open(path, "rb") as handle:
        return handle.read(len(PNG_MAGIC)) == PNG_MAGIC


def bimodal_fits(z: np.ndarray, target: np.ndarray, fitted: dict[str, np.ndarray],
                 path: str | Path, *, title: str) -> Path:
    """The bimodal target density with each fitted q drawn over it."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        ax.fill_between(z, target, color="0.85", label="target p(z)")
        for name, density in fitted.items():
            ax.plot(z, density, lw=2, label=name)
        ax.set_xlabel("z")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(loc="upper left")
        return _save(fig, path)
