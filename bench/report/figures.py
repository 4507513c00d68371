"""The data of the report's figures, pure: a summary or runs table in, a DataFrame or records
out, None where a figure has nothing to show. Log-likelihood against k, the toys' and the
model families' plots, rate-distortion, sharpness, throughput, learning curves and the sample
images; `bench.plots` draws them."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.metrics.loglog import fit_slope
from bench.report.data import SAMPLE_KINDS, _family, _family_label, factor_metric_protocols
from bench.report.references import reference_matches, reference_value_column
from bench.report.values import _fmt_value, _key, _mean_std, _missing, _num, _numeric, _py
from bench.suite import Reference


def _line_labels(table: pd.DataFrame, exclude: Iterable[str]) -> list[str]:
    """A label per row from the settings that vary among the rows (bar those excluded)."""
    exclude = {f"cfg_{name}" for name in exclude} | {"cfg_seed", "cfg_latent", "cfg_hidden"}
    varying = [c for c in table.columns if c.startswith("cfg_") and c not in exclude
               and len({_key(v) for v in table[c]}) > 1]
    layers_vary = table["layers"].nunique() > 1
    labels = []
    for _, row in table.iterrows():
        parts = []
        if "cfg_objective" not in exclude and "cfg_objective" in table.columns:
            parts.append(str(row["cfg_objective"]).upper())
        if layers_vary:
            parts.append(f"{row['layers']} stochastic layer{'s' * (row['layers'] != 1)}")
        parts += [f"{c[len('cfg_'):]}={_fmt_value(row[c])}" for c in varying
                  if c != "cfg_objective"]
        labels.append(", ".join(parts) or "all variants")
    return labels


def ll_vs_k_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Test LL against k per objective (and number of stochastic layers, where it varies).

    Only variants with beta = 1 (the VAE and IWAE objectives proper) and at least one
    finished run. None unless the runs of some objective differ in k. Columns: line,
    objective, layers, k, mean, std, seeds, variant; `mean`/`std` are the summary's
    `metric_test_ll_mean`/`_std`.
    """
    needed = {"cfg_objective", "cfg_k", "metric_test_ll_mean"}
    if summary.empty or not needed <= set(summary.columns):
        return None
    table = _lvm_rows(summary)
    table = table[table["metric_test_ll_mean"].notna()]
    if "cfg_beta" in table.columns:
        table = table[table["cfg_beta"].astype(float) == 1.0]
    if table.empty or table.groupby("cfg_objective")["cfg_k"].nunique().max() < 2:
        return None
    return pd.DataFrame({
        "line": _line_labels(table, exclude=("k", "beta")),
        "objective": table["cfg_objective"].to_numpy(),
        "layers": table["layers"].to_numpy(),
        "k": table["cfg_k"].astype(int).to_numpy(),
        "mean": table["metric_test_ll_mean"].to_numpy(dtype=float),
        "std": table["metric_test_ll_std"].to_numpy(dtype=float),
        "seeds": table["metric_test_ll_n"].to_numpy(),
        "variant": table["variant"].to_numpy(),
    })


def posterior_kl_vs_k_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """The mixture toy: exact KL(p(c|x) || q(c|x)) against the particles K, one line per
    kl_direction. Columns: line, k, mean, std, seeds, variant; None without such runs."""
    needed = {"cfg_k", "cfg_kl_direction", "metric_posterior_kl_mean"}
    if summary.empty or not needed <= set(summary.columns):
        return None
    table = summary[summary["metric_posterior_kl_mean"].notna()]
    if table.empty or table["cfg_k"].nunique() < 2:
        return None
    return pd.DataFrame({
        "line": [f"{d} KL" for d in table["cfg_kl_direction"]],
        "k": table["cfg_k"].astype(int).to_numpy(),
        "mean": table["metric_posterior_kl_mean"].to_numpy(dtype=float),
        "std": table["metric_posterior_kl_std"].to_numpy(dtype=float),
        "seeds": table["metric_posterior_kl_n"].to_numpy(),
        "variant": table["variant"].to_numpy(),
    })


def snr_vs_k_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """The snr_gaussian toy: the gradient SNR of the encoder (b) and the decoder (mu) against
    k, one line per objective and part (mean and std over the finished seeds), each labelled
    with its log-log slope over k = 10..1000 (`bench.metrics.loglog.fit_slope`, points at
    least 3x the floor 1/sqrt(draws)); decoder lines that are the same numbers (IWAE, STL and
    DReG give the decoder IWAE's gradient) are drawn once. Columns: line, part, slope, k,
    mean, std, seeds, floor. None without such runs at two values of k."""
    needed = {"cfg_dataset", "cfg_k", "cfg_objective", "metric_snr_encoder",
              "metric_snr_decoder", "metric_snr_floor"}
    if runs.empty or not needed <= set(runs.columns):
        return None
    toy = runs[(runs["cfg_dataset"] == "snr_gaussian") & (runs["status"] == "finished")]
    if toy.empty or toy["cfg_k"].nunique() < 2:
        return None
    frames, drawn = [], {}
    for objective, rows in toy.groupby("cfg_objective", sort=False):
        points = rows.groupby("cfg_k").agg(
            encoder=("metric_snr_encoder", "mean"), encoder_std=("metric_snr_encoder", "std"),
            decoder=("metric_snr_decoder", "mean"), decoder_std=("metric_snr_decoder", "std"),
            seeds=("metric_snr_encoder", "size"), floor=("metric_snr_floor", "max"))
        ks = points.index.astype(int).tolist()
        for part in ("encoder", "decoder"):
            mean = points[part].to_numpy(dtype=float)
            values = (tuple(ks), tuple(np.round(mean, 12)))
            name = str(objective).upper()
            if part == "decoder" and values in drawn:  # the same line: name it, draw it once
                drawn[values].append(name)
                continue
            names = [name]
            if part == "decoder":
                drawn[values] = names
            floor = points["floor"].to_numpy(dtype=float)
            frames.append(pd.DataFrame({
                "names": [names] * len(ks), "part": part,
                "slope": fit_slope(ks, mean.tolist(), float(floor.max())), "k": ks,
                "mean": mean, "std": points[f"{part}_std"].to_numpy(dtype=float),
                "seeds": points["seeds"].to_numpy(), "floor": floor}))
    data = pd.concat(frames, ignore_index=True)
    slope_text = ["no fit" if v is None or not math.isfinite(v) else f"slope {v:+.2f}"
                  for v in data["slope"]]
    data["line"] = [f"{', '.join(n)} {p} ({t})" for n, p, t in
                    zip(data["names"], data["part"], slope_text, strict=True)]
    return data.drop(columns=["names"])


def bimodal_fit_data(runs: pd.DataFrame) -> dict[str, tuple[float, float]] | None:
    """The bimodal toy: {label: (mean, std)} of the fitted q per kl_direction, from the
    lowest-seed finished run; None without such runs."""
    needed = {"cfg_dataset", "cfg_kl_direction", "metric_q_mean", "metric_q_std"}
    if runs.empty or not needed <= set(runs.columns):
        return None
    toy = runs[(runs["cfg_dataset"] == "bimodal") & (runs["status"] == "finished")]
    if toy.empty:
        return None
    fits = {}
    for direction, group in toy.sort_values("cfg_seed").groupby("cfg_kl_direction", sort=False):
        row = group.iloc[0]
        fits[f"{direction} KL: N({row['metric_q_mean']:.2f}, {row['metric_q_std']:.2f}^2), "
             f"mass {row['metric_mass_left']:.0%} / {row['metric_mass_right']:.0%} "
             f"(seed {int(row['cfg_seed'])})"] = (float(row["metric_q_mean"]),
                                                  float(row["metric_q_std"]))
    return fits


_PRIOR_IWAE = re.compile(r"metric_prior_iwae_k(\d+)")


def prior_iwae_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Mixture models (exact log p(x)): the gap between the exact test log-likelihood and the
    IWAE estimate with q = p(z), against k, one line per number of components. Columns: line,
    components, k, mean, std, seeds, variant (mean/std over the finished seeds of
    gap = exact - estimate)."""
    columns = {int(m.group(1)): c for c in runs.columns if (m := _PRIOR_IWAE.fullmatch(c))}
    if len(columns) < 2 or "metric_test_ll" not in runs.columns:
        return None
    finished = runs[runs["status"] == "finished"]
    records = []
    for variant, group in finished.groupby("variant", sort=False):
        exact = _numeric(group, "metric_test_ll")
        components = _py(group.iloc[0].get("cfg_components"))
        for k, column in sorted(columns.items()):
            mean, std, n = _mean_std(exact - _numeric(group, column))
            if n:
                records.append({"line": f"K = {components}" if components else str(variant),
                                "components": _num(components), "k": k, "mean": mean,
                                "std": std, "seeds": n, "variant": variant})
    table = pd.DataFrame(records)
    if table.empty or table["k"].nunique() < 2:
        return None
    return table.sort_values(["components", "k"], kind="stable").reset_index(drop=True)


def axis_metric_data(summary: pd.DataFrame, metric: str, axis: str,
                     rows: pd.Series | None = None) -> pd.DataFrame | None:
    """`metric` (a runs column) against the config key `axis`, one line per model family:
    columns line, x, mean, std, variant. `rows` selects summary rows (default: all). None
    unless at least two values of `axis` have a value."""
    mean, column = f"{metric}_mean", f"cfg_{axis}"
    if summary.empty or mean not in summary.columns or column not in summary.columns:
        return None
    table = summary if rows is None else summary[rows]
    table = table[table[mean].notna()]
    if table.empty or table[column].nunique() < 2:
        return None
    return pd.DataFrame({
        "line": [_family_label(row) for _, row in table.iterrows()],
        "x": table[column].astype(float).to_numpy(),
        "mean": table[mean].to_numpy(dtype=float),
        "std": table[f"{metric}_std"].to_numpy(dtype=float),
        "variant": table["variant"].to_numpy(),
    })


def axis_reference_data(summary: pd.DataFrame, references: Sequence[Reference], metric: str,
                        axis: str) -> pd.DataFrame | None:
    """The published values of `metric` placed like `axis_metric_data`'s points: one per
    reference and summary row it matches. Columns line, x, value."""
    records = []
    for ref in references:
        column, _sign = reference_value_column(ref.metric)
        if column != metric:
            continue
        for _, row in summary.iterrows():
            if reference_matches(ref, row.to_dict()) and not _missing(row.get(f"cfg_{axis}")):
                records.append({"line": _family_label(row), "x": float(row[f"cfg_{axis}"]),
                                "value": ref.value})
    table = pd.DataFrame(records).drop_duplicates() if records else None
    return table if table is not None and not table.empty else None


DISENTANGLEMENT_PANELS = (
    ("metric_mig", "MIG (higher = more disentangled)"),
    ("metric_dci_disentanglement", "DCI disentanglement"),
    ("metric_beta_vae_accuracy", "beta-VAE metric: accuracy (%)"),
    ("metric_distortion", "reconstruction: -E log p(x|z) (nats, lower is better)"),
)
_KL_UNIT = re.compile(r"metric_kl_unit_(\d+)")


def _objective_category(row: Mapping[str, Any]) -> str:
    capacity = _num(row.get("cfg_capacity_max"))
    if math.isfinite(capacity) and capacity > 0:
        return f"C={capacity:g}"
    return f"β={_num(row.get('cfg_beta')):g}"


def _category_order(frame: pd.DataFrame) -> list[str]:
    """Categories sorted by beta, capacity variants last."""
    keys = {}
    for _, row in frame.iterrows():
        category = _objective_category(row)
        capacity = _num(row.get("cfg_capacity_max"))
        keys[category] = (1 if math.isfinite(capacity) and capacity > 0 else 0,
                          capacity if math.isfinite(capacity) and capacity > 0
                          else _num(row.get("cfg_beta")))
    return sorted(keys, key=keys.__getitem__)


def disentanglement_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Every finished run's disentanglement metrics and reconstruction, one row per (metric,
    run): columns panel, category (beta or capacity), seed, value; None without such runs."""
    if "metric_mig" not in runs.columns:
        return None
    finished = runs[(runs["status"] == "finished") & _numeric(runs, "metric_mig").notna()]
    if finished.empty:
        return None
    order = {c: i for i, c in enumerate(_category_order(finished))}
    protocols = factor_metric_protocols(finished)
    records = []
    for column, panel in DISENTANGLEMENT_PANELS:
        if column not in finished.columns:
            continue
        if protocols.get(column):  # name the estimator under the panel's title
            panel = f"{panel}\n({protocols[column]})"
        for _, row in finished.iterrows():
            value = _num(row.get(column))
            if math.isfinite(value):
                records.append({"panel": panel, "category": _objective_category(row),
                                "seed": _py(row.get("cfg_seed")), "value": value})
    table = pd.DataFrame(records)
    return table.sort_values("category", key=lambda c: c.map(order), kind="stable") \
        .reset_index(drop=True)


def unit_kl_data(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Per beta / capacity: the KL of the most, second most, ... informative latent unit
    (each run's units sorted by KL, then mean and std over seeds). Columns line, x (rank,
    1 = most informative), mean, std."""
    columns = sorted((int(m.group(1)), c) for c in runs.columns
                     if (m := _KL_UNIT.fullmatch(c)))
    if not columns:
        return None
    finished = runs[runs["status"] == "finished"]
    profiles: dict[str, list[np.ndarray]] = {}
    for _, row in finished.iterrows():
        values = np.array([_num(row.get(c)) for _, c in columns])
        values = np.sort(values[np.isfinite(values)])[::-1]
        if len(values):
            profiles.setdefault(_objective_category(row), []).append(values)
    records = []
    for category in _category_order(finished):
        stacked = profiles.get(category)
        if not stacked or len({len(v) for v in stacked}) != 1:
            continue
        matrix = np.stack(stacked)
        for rank in range(matrix.shape[1]):
            records.append({"line": category, "x": rank + 1, "mean": matrix[:, rank].mean(),
                            "std": matrix[:, rank].std(ddof=1) if len(matrix) > 1
                            else math.nan})
    return pd.DataFrame(records) if records else None


def _lvm_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the VAE family (model lvm; results from before model families existed
    have no cfg_model column and are all lvm): other families have no k, beta or posterior."""
    if "cfg_model" not in summary.columns:
        return summary
    return summary[[_missing(m) or m == "lvm" for m in summary["cfg_model"]]]


def _beta_table(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame | None:
    """VAE-objective variants with a value in one of `columns`, if beta varies among them."""
    summary = _lvm_rows(summary)
    needed = {"cfg_objective", "cfg_beta"}
    present = [c for c in columns if c in summary.columns]
    if summary.empty or not needed <= set(summary.columns) or not present:
        return None
    table = summary[(summary["cfg_objective"] == "vae")
                    & summary[present].notna().any(axis=1)]
    if table["cfg_beta"].nunique() < 2:
        return None
    return table


def rate_distortion_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Rate and distortion (mean, std over seeds) per beta, for the VAE-objective variants.

    None unless beta varies. Columns: line, beta, rate_mean, rate_std, distortion_mean,
    distortion_std, seeds, variant.
    """
    table = _beta_table(summary, ["metric_rate_mean"])
    if table is None or "metric_distortion_mean" not in table.columns:
        return None
    table = table[table["metric_rate_mean"].notna() & table["metric_distortion_mean"].notna()]
    if table["cfg_beta"].nunique() < 2:
        return None
    return pd.DataFrame({
        "line": _line_labels(table, exclude=("beta", "objective")),
        "beta": table["cfg_beta"].astype(float).to_numpy(),
        "rate_mean": table["metric_rate_mean"].to_numpy(dtype=float),
        "rate_std": table["metric_rate_std"].to_numpy(dtype=float),
        "distortion_mean": table["metric_distortion_mean"].to_numpy(dtype=float),
        "distortion_std": table["metric_distortion_std"].to_numpy(dtype=float),
        "seeds": table["metric_rate_n"].to_numpy(),
        "variant": table["variant"].to_numpy(),
    })


def sharpness_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Sharpness of prior samples and reconstructions per beta (VAE objective).

    None unless beta varies and some sharpness was recorded. Columns: line, beta,
    prior_mean, prior_std, recon_mean, recon_std, variant.
    """
    columns = ["metric_sharpness_prior_mean", "metric_sharpness_recon_mean"]
    table = _beta_table(summary, columns)
    if table is None:
        return None

    def get(name: str) -> np.ndarray:
        if name in table.columns:
            return table[name].to_numpy(dtype=float)
        return np.full(len(table), math.nan)

    return pd.DataFrame({
        "line": _line_labels(table, exclude=("beta", "objective")),
        "beta": table["cfg_beta"].astype(float).to_numpy(),
        "prior_mean": get("metric_sharpness_prior_mean"),
        "prior_std": get("metric_sharpness_prior_std"),
        "recon_mean": get("metric_sharpness_recon_mean"),
        "recon_std": get("metric_sharpness_recon_std"),
        "variant": table["variant"].to_numpy(),
    })


def throughput_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Training throughput per variant (summary order). Columns: variant, mean, std, seeds."""
    column = "metric_train_samples_per_s"
    if summary.empty or f"{column}_mean" not in summary.columns:
        return None
    table = summary[summary[f"{column}_mean"].notna()]
    if table.empty:
        return None
    return pd.DataFrame({
        "variant": table["variant"].to_numpy(),
        "mean": table[f"{column}_mean"].to_numpy(dtype=float),
        "std": table[f"{column}_std"].to_numpy(dtype=float),
        "seeds": table[f"{column}_n"].to_numpy(),
    })


def posterior_bounds_data(summary: pd.DataFrame) -> pd.DataFrame | None:
    """Test LL and ELBO per variant when the posterior family varies (what a flow buys).
    Columns: variant, ll_mean, ll_std, elbo_mean, elbo_std; None otherwise."""
    needed = {"cfg_posterior", "metric_test_ll_mean", "metric_test_elbo_mean"}
    if summary.empty or not needed <= set(summary.columns):
        return None
    table = _lvm_rows(summary)
    table = table[table["metric_test_ll_mean"].notna()]
    if table["cfg_posterior"].nunique() < 2:
        return None
    return pd.DataFrame({
        "variant": table["variant"].to_numpy(),
        "ll_mean": table["metric_test_ll_mean"].to_numpy(dtype=float),
        "ll_std": table["metric_test_ll_std"].to_numpy(dtype=float),
        "elbo_mean": table["metric_test_elbo_mean"].to_numpy(dtype=float),
        "elbo_std": table["metric_test_elbo_std"].to_numpy(dtype=float),
    })


def curve_data(runs: pd.DataFrame, curves: pd.DataFrame, order: Sequence[str] = (),
               unit: str = "epoch") -> pd.DataFrame | None:
    """Mean training bound over the finished seeds per variant and curve point, for the runs
    whose family counts its curve in `unit` (the registry's `curve_unit`: "epoch", or
    "EM iteration" for the mixture), so iterations are never drawn on an epoch axis.

    `runs` of one budget. Non-finite bounds (a diverging epoch) are left out. Columns:
    variant, epoch (the point's number in `unit`), mean, seeds. None without curves.
    """
    if curves is None or curves.empty or not {"run_id", "epoch", "train_bound"} <= set(
            curves.columns):
        return None
    units: dict[tuple[Any, Any], bool] = {}  # a family per (dataset, model), not per run
    flags = []
    for key in zip(runs["cfg_dataset"].tolist() if "cfg_dataset" in runs else [None] * len(runs),
                   runs["cfg_model"].tolist() if "cfg_model" in runs else [None] * len(runs),
                   strict=True):
        flag = units.get(key)
        if flag is None:
            family = _family({"cfg_dataset": key[0], "cfg_model": key[1]})
            flag = units[key] = (family.curve_unit if family is not None else "epoch") == unit
        flags.append(flag)
    in_unit = np.array(flags, dtype=bool)
    finished = runs[(runs["status"] == "finished").to_numpy() & in_unit]
    if finished.empty:  # (the EM call, in a suite without EM fits)
        return None
    # each curve row's variant through its run_id's code (a merge of 10^6 rows took 0.5 s)
    variant_of = dict(zip(finished["run_id"].tolist(), finished["variant"].tolist(),
                          strict=True))
    codes, ids = pd.factorize(curves["run_id"])
    variants = np.array([variant_of.get(i) for i in ids] + [None], dtype=object)[codes]
    mine = pd.notna(variants)  # (a missing run_id has code -1: the None appended)
    merged = pd.DataFrame({"variant": variants[mine],
                           "epoch": curves["epoch"].to_numpy()[mine],
                           "train_bound": pd.to_numeric(curves["train_bound"], errors="coerce")
                           .to_numpy(dtype=float)[mine]})
    merged = merged[np.isfinite(merged["train_bound"])]
    if merged.empty:
        return None
    table = (merged.groupby(["variant", "epoch"], sort=False)["train_bound"]
             .agg(mean="mean", seeds="count").reset_index())
    rank = {name: i for i, name in enumerate(order)}
    table["_rank"] = [rank.get(v, len(rank)) for v in table["variant"]]
    return table.sort_values(["_rank", "epoch"], kind="stable").drop(columns="_rank") \
        .reset_index(drop=True)


@dataclass
class SampleSet:
    """The images of one run: prior samples, test originals and their reconstructions."""

    variant: str
    run_id: str
    seed: int | None
    prior: np.ndarray  # (n, h, w) in [0, 1]
    original: np.ndarray
    reconstruction: np.ndarray


def _first_runs(runs: pd.DataFrame, run_ids: Iterable[str],
                order: Sequence[str]) -> list[tuple[str, pd.Series]]:
    """Per variant, its lowest-seed finished run among `run_ids`, variants in `order`."""
    candidates = runs[(runs["status"] == "finished") & runs["run_id"].isin(set(run_ids))]
    if "cfg_seed" in candidates.columns:
        candidates = candidates.sort_values("cfg_seed", kind="stable")
    rank = {name: i for i, name in enumerate(order)}
    firsts = [(str(variant), group.iloc[0])
              for variant, group in candidates.groupby("variant", sort=False)]
    return sorted(firsts, key=lambda vr: (rank.get(vr[0], len(rank)), vr[0]))


def _seed_of(run: pd.Series) -> int | None:
    seed = _py(run.get("cfg_seed"))
    return int(seed) if seed is not None else None


def sample_sets(runs: pd.DataFrame, samples: pd.DataFrame | None,
                order: Sequence[str] = ()) -> list[SampleSet]:
    """Per variant, the images of its lowest-seed finished run that has samples."""
    if samples is None or samples.empty:
        return []
    out = []
    for variant, run in _first_runs(runs, samples["run_id"], order):
        rows = samples[samples["run_id"] == run["run_id"]]
        images = {kind: _images(rows[rows["kind"] == kind]) for kind in SAMPLE_KINDS}
        if any(len(v) for v in images.values()):
            out.append(SampleSet(variant, str(run["run_id"]), _seed_of(run), images["prior"],
                                 images["original"], images["reconstruction"]))
    return out


@dataclass
class ImageRows:
    """A run's other images (conditional samples, completions, imputations): labelled rows."""

    variant: str
    run_id: str
    seed: int | None
    rows: list[tuple[str, np.ndarray]]  # (kind, (n, h, w) in [0, 1]) in stored order


def image_row_sets(runs: pd.DataFrame, samples: pd.DataFrame | None,
                   order: Sequence[str] = ()) -> list[ImageRows]:
    """Per variant, the image kinds beyond prior/original/reconstruction of its lowest-seed
    finished run, in the order the run stored them."""
    if samples is None or samples.empty:
        return []
    extra = samples[~samples["kind"].isin(SAMPLE_KINDS)]
    out = []
    for variant, run in _first_runs(runs, extra["run_id"], order):
        mine = extra[extra["run_id"] == run["run_id"]]
        rows = [(str(kind), _images(mine[mine["kind"] == kind]))
                for kind in dict.fromkeys(mine["kind"])]
        rows = [(kind, images) for kind, images in rows if len(images)]
        if rows:
            out.append(ImageRows(variant, str(run["run_id"]), _seed_of(run), rows))
    return out


def _images(rows: pd.DataFrame) -> np.ndarray:
    """(n, h, w) array from sample rows (sorted by index); malformed rows are left out."""
    images = []
    for _, row in rows.sort_values("index").iterrows():
        try:
            height, width = int(row["height"]), int(row["width"])
            pixels = np.asarray(row["pixels"], dtype=float)
        except (TypeError, ValueError):
            continue
        if height < 1 or width < 1 or pixels.size != height * width:
            continue
        images.append(np.clip(np.nan_to_num(pixels.reshape(height, width)), 0.0, 1.0))
    shapes = {im.shape for im in images}
    if not images or len(shapes) != 1:
        return np.zeros((0, 1, 1))
    return np.stack(images)
