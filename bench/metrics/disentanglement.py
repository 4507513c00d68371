"""Disentanglement metrics from an encoder's means on data with known generative factors.

All functions take plain arrays (or, for the beta-VAE metric, a callable from factor indices
to codes), never a model, so they can be checked on synthetic representations. Notation:
codes z (N, L) are the encoder means E_q[z | x_n] of N examples, factors v (N, F) the
integer ground-truth factor values of the same examples.

MIG, the mutual information gap (Chen et al. 2018, "Isolating Sources of Disentanglement in
Variational Autoencoders"), as defined in disentanglement_lib (Locatello et al. 2019,
"Challenging Common Assumptions in the Unsupervised Learning of Disentangled
Representations", and its disentanglement_lib code):

    MIG = 1/F sum_k (I(z_(1); v_k) - I(z_(2); v_k)) / H(v_k)

where z_(1), z_(2) are the units with the largest and second-largest mutual information with
factor k. Each unit's means are discretized into `bins` equal-width bins over their range and
I is the plug-in mutual information of the empirical joint distribution (nats). Chen et al.
instead estimated I(z_j; v_k) under the full posterior q(z_j | x) (a stochastic code, by
Monte Carlo over the whole data set, no binning); the discretized-means version is what
disentanglement_lib and most later papers report, and what this module computes.

DCI disentanglement (Eastwood and Williams 2018, "A Framework for the Quantitative
Evaluation of Disentangled Representations", sec. 3): one tree ensemble per factor predicts
v_k from z; its impurity feature importances give column k of R (L, F). With
P_jk = R_jk / sum_k' R_jk' and base-F entropy H_F,

    D_j = 1 - H_F(P_j.),    D = sum_j rho_j D_j,    rho_j = sum_k R_jk / sum_jk R_jk
    C_k = 1 - H_L(R_.k / sum_j R_jk),  C = sum_k (sum_j R_jk / sum_jk R_jk) C_k

(disentanglement, completeness); informativeness is the predictors' mean accuracy.

beta-VAE metric (Higgins et al. 2017, "beta-VAE: Learning Basic Visual Concepts with a
Constrained Variational Framework", sec. 3 and appendix): pick a factor k uniformly, draw B
pairs of factor combinations that agree on factor k and are otherwise independent, encode
both members of each pair, and form z_diff = 1/B sum_b |z_1b - z_2b| with label k. A linear
classifier trained on such points predicts k; the score is its accuracy on fresh points.
Defaults (B = 64 pairs, 10000 training and 5000 test points, logistic regression) are those
of disentanglement_lib's beta_vae_sklearn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench import eta
from bench.errors import BenchError
from bench.eta import ProgressLines

MIG_BINS = 20  # disentanglement_lib's histogram_discretize default
BETA_VAE_BATCH = 64  # pairs averaged into one z_diff point (disentanglement_lib, Higgins: L)
BETA_VAE_TRAIN = 10000  # z_diff points the classifier is trained on (disentanglement_lib)
BETA_VAE_TEST = 5000  # fresh z_diff points it is scored on (disentanglement_lib)
DCI_TEST_FRACTION = 1 / 3  # disentanglement_lib draws 10000 train and 5000 test points
# Smallest leaf of the DCI forest, as a fraction of the training rows: fully grown trees fit
# noise in the codes with every unit and spread importance (lower D); 1 % leaves make the
# forest's D track disentanglement_lib's boosted trees across N (see `dci`).
DCI_FOREST_MIN_LEAF = 0.01
DCI_FOREST_TREES = 20
# Rows handed to `encode` in one call by the beta-VAE metric (bounds the caller's memory).
BETA_VAE_ROWS_PER_CALL = 16384


def _check_codes_factors(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """codes as float64 (N, L) and factors as int64 (N, F), or a BenchError naming the array."""
    codes = np.asarray(codes)
    factors = np.asarray(factors)
    if codes.ndim != 2 or codes.shape[1] < 1:
        raise BenchError(f"codes must be a 2-D (N, L) array, got shape {codes.shape}")
    if factors.ndim != 2 or factors.shape[1] < 1:
        raise BenchError(f"factors must be a 2-D (N, F) array, got shape {factors.shape}")
    if codes.shape[0] != factors.shape[0]:
        raise BenchError(
            f"codes and factors must have the same number of rows N, got codes {codes.shape} "
            f"and factors {factors.shape}"
        )
    if codes.shape[0] < 2:
        raise BenchError(f"codes and factors need at least 2 rows, got {codes.shape[0]}")
    codes = codes.astype(np.float64)
    if not np.isfinite(codes).all():
        raise BenchError("codes contain non-finite values")
    if factors.dtype.kind not in "iub":
        if factors.dtype.kind != "f" or not np.array_equal(factors, np.round(factors)):
            raise BenchError(f"factors must hold integer values, got dtype {factors.dtype}")
    return codes, factors.astype(np.int64)


def histogram_discretize(codes: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """Bin index in [0, bins) of each entry of codes (N, L): per unit, `bins` equal-width
    bins over [min, max] of that unit (numpy's histogram edges; the maximum falls in the last
    bin, a constant unit all in one bin). Invariant to permuting units and to affine maps of
    a unit."""
    if bins < 2:
        raise BenchError(f"bins must be at least 2, got {bins}")
    codes = np.asarray(codes, dtype=np.float64)
    out = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=bins)
        out[:, j] = np.searchsorted(edges[1:-1], codes[:, j], side="right")
    return out


def _dense_labels(x: np.ndarray) -> tuple[np.ndarray, int]:
    values, inverse = np.unique(x, return_inverse=True)
    return inverse.reshape(-1), values.size


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information (nats) of the empirical joint of two label arrays (N,)."""
    ia, na = _dense_labels(np.asarray(a))
    ib, nb = _dense_labels(np.asarray(b))
    joint = np.bincount(ia * nb + ib, minlength=na * nb).reshape(na, nb) / ia.size
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    return float(max(0.0, np.sum(joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz]))))


def discrete_entropy(a: np.ndarray) -> float:
    """Plug-in entropy (nats) of the empirical distribution of a label array (N,)."""
    counts = np.unique(np.asarray(a), return_counts=True)[1]
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def mutual_info_matrix(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> np.ndarray:
    """I(z_j; v_k) in nats, (L, F), between each discretized unit and each factor."""
    codes, factors = _check_codes_factors(codes, factors)
    binned = histogram_discretize(codes, bins)
    return np.array(
        [
            [discrete_mutual_info(binned[:, j], factors[:, k]) for k in range(factors.shape[1])]
            for j in range(codes.shape[1])
        ]
    )


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = MIG_BINS) -> float:
    """Mutual information gap in [0, 1] (Chen et al. 2018; disentanglement_lib's
    discretized definition, see the module docstring).

    For each factor k, the gap between the largest and second-largest I(z_j; v_k) over units,
    divided by H(v_k), averaged over factors. Deviations from disentanglement_lib, both for
    cases where it returns NaN or fails: factors with a single value (H(v_k) = 0, no
    information to capture) are skipped and the mean is over the remaining factors; with a
    single unit the second-largest information is taken as 0. A BenchError if every factor
    is constant. Invariant to permuting units and to rescaling/shifting a unit.
    """
    codes, factors = _check_codes_factors(codes, factors)
    entropies = np.array([discrete_entropy(factors[:, k]) for k in range(factors.shape[1])])
    varying = entropies > 0
    if not varying.any():
        raise BenchError("factors: every factor has a single value, MIG is undefined")
    info = mutual_info_matrix(codes, factors[:, varying], bins)  # (L, F')
    top = np.sort(info, axis=0)[::-1]
    second = top[1] if top.shape[0] > 1 else np.zeros(top.shape[1])
    return float(np.mean((top[0] - second) / entropies[varying]))


@dataclass(frozen=True)
class DCIResult:
    disentanglement: float  # D in [0, 1]: importance-weighted mean over units of 1 - H_F(P_j.)
    completeness: float  # C in [0, 1]: importance-weighted mean over factors of 1 - H_L
    informativeness_train: float  # mean over factors of the predictors' training accuracy
    informativeness_test: float  # mean over factors of their accuracy on held-out points
    importance: np.ndarray  # R (L, F'): column k = feature importances of factor k's predictor
    factors_used: tuple[int, ...]  # indices of the non-constant factors (the columns of R)


def _one_minus_entropy(p: np.ndarray) -> np.ndarray:
    """1 - H(p_i) / log(n) for each row p_i (n entries, normalized here); 1 when n == 1.
    Zero rows give 0 (they carry zero weight wherever this is used)."""
    n = p.shape[1]
    total = p.sum(axis=1, keepdims=True)
    if n == 1:
        return np.ones(p.shape[0])
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    plogp = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    out = 1.0 + plogp.sum(axis=1) / np.log(n)
    return np.where(total[:, 0] > 0, out, 0.0)


def disentanglement_completeness(importance: np.ndarray) -> tuple[float, float]:
    """(D, C) of Eastwood and Williams (2018, sec. 3) from a non-negative importance
    matrix R (L, F): D = sum_j rho_j (1 - H_F(R_j. / sum_k R_jk)) with rho_j = sum_k R_jk /
    sum_jk R_jk, and C the same with units and factors exchanged (entropy base L). Units
    (factors) with zero importance get zero weight; an all-zero R gives (0, 0), a
    representation that explains nothing."""
    r = np.asarray(importance, dtype=np.float64)
    if r.ndim != 2 or r.size == 0 or (r < 0).any() or not np.isfinite(r).all():
        raise BenchError(f"importance must be a non-negative finite (L, F) array, got {r.shape}")
    total = r.sum()
    if total == 0:
        return 0.0, 0.0
    d = float(np.sum(_one_minus_entropy(r) * r.sum(axis=1) / total))
    c = float(np.sum(_one_minus_entropy(r.T) * r.sum(axis=0) / total))
    return d, c


def _make_predictor(estimator: str, n_estimators: int, seed: int):
    if estimator == "forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=n_estimators,
            max_features=None,  # every unit competes at every split: importances go to the
            # unit that explains the factor, not to whichever units a split happened to see
            min_samples_leaf=DCI_FOREST_MIN_LEAF,
            random_state=seed,
            n_jobs=1,
        )
    if estimator == "boosting":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(random_state=seed)  # disentanglement_lib's choice
    raise BenchError(f"estimator must be 'forest' or 'boosting', got {estimator!r}")


def dci(
    codes: np.ndarray,
    factors: np.ndarray,
    *,
    estimator: Literal["forest", "boosting"] = "forest",
    n_estimators: int = DCI_FOREST_TREES,
    test_fraction: float = DCI_TEST_FRACTION,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    progress: ProgressLines | None = None,
) -> DCIResult:
    """DCI disentanglement, completeness and informativeness (Eastwood and Williams 2018,
    sec. 3; see the module docstring for the equations).

    One classifier per factor predicts the factor's value from all units, trained on a random
    (1 - test_fraction) of the rows (numpy Generator seeded by `seed`) and scored on the rest.
    With `test` = (test codes, test factors), a separately drawn sample, the classifiers are
    trained on all of `codes`/`factors` and scored on `test` instead (`test_fraction`
    ignored): disentanglement_lib's protocol, which draws its 10000 training and 5000 test
    points independently (`compute_dci` calls `generate_batch_factor_code` twice on one
    random state). R[:, k] is its impurity feature importance (normalized to sum to 1, so
    every factor weighs the same, as in disentanglement_lib).

    estimator="forest" (default): a random forest of `n_estimators` trees, all units
    considered at every split (importance goes to the unit that explains the factor, not to
    whichever units a split happened to be offered), leaves of at least 1 % of the training
    rows. Eastwood and Williams used random forests (and lasso); disentanglement_lib uses
    scikit-learn's default gradient boosted trees (estimator="boosting", `n_estimators`
    ignored: 100 stages of depth-3 trees, one tree per class per stage), which take, on one
    core, 10,000 training / 5,000 test points x 10 units, 76 s of CPU for 5 factors of
    3, 4, 8, 8, 8 values (`shapes_small`) and 303 s for 3, 6, 40, 32, 32 (`shapes`, 113
    trees per stage), where the forest takes 3-4 s (measured on a shared 2-core machine).
    Impurity importances of any tree ensemble lower D when the codes are noisy
    (trees fit the noise with every unit); the leaf size sets how much, and 1 % was chosen
    because it tracks the boosted trees: on 5 factors x 8 units, N = 1500 / 3000 / 10000,
    forest vs boosting D = 0.92/0.95/0.99 vs 0.85/0.88/0.93 (factors + noise 0.05),
    0.31/0.46/0.73 vs 0.28/0.36/0.59 (noise 0.2), 0.40/0.48/0.52 vs 0.42/0.48/0.55 (random
    8-d rotation). Compare numbers only under the same estimator. Deviations from
    disentanglement_lib: factors with a single value are dropped (their predictor has zero
    importances and would make R's column degenerate), entropies are taken over the
    remaining F' factors; with F' = 1 (or L = 1) every unit (factor) trivially scores 1.
    `progress`: where lines with an ETA go, one predictor fitted per factor (bench.eta).
    """
    from sklearn.metrics import accuracy_score

    codes, factors = _check_codes_factors(codes, factors)
    if n_estimators < 1:
        raise BenchError(f"n_estimators must be at least 1, got {n_estimators}")
    used = tuple(k for k in range(factors.shape[1]) if np.unique(factors[:, k]).size > 1)
    if not used:
        raise BenchError("factors: every factor has a single value, DCI is undefined")
    rng = np.random.default_rng(seed)
    if test is None:  # one sample, split: a random 1 - test_fraction trains, the rest tests
        if not 0 < test_fraction < 1:
            raise BenchError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n = codes.shape[0]
        n_test = int(round(n * test_fraction))
        if n_test < 1 or n - n_test < 2:
            raise BenchError(
                f"codes: {n} rows are too few to split with test_fraction={test_fraction}")
        order = rng.permutation(n)
        test_idx, train_idx = order[:n_test], order[n_test:]
        x_train, f_train = codes[train_idx], factors[train_idx]
        x_test, f_test = codes[test_idx], factors[test_idx]
    else:  # two samples drawn independently: train on all of one, score on the other
        if not isinstance(test, tuple) or len(test) != 2:
            raise BenchError("test must be a (codes, factors) pair of the test points")
        x_test, f_test = _check_codes_factors(*test)
        if x_test.shape[1] != codes.shape[1] or f_test.shape[1] != factors.shape[1]:
            raise BenchError(
                f"test: codes {x_test.shape} and factors {f_test.shape} must have the units "
                f"and factors of the training points, codes {codes.shape} and factors "
                f"{factors.shape}")
        x_train, f_train = codes, factors
    importance = np.zeros((codes.shape[1], len(used)))
    acc_train, acc_test = [], []
    meter = eta.meter(progress, f"disentanglement: DCI {estimator}", len(used), "factors")
    for col, k in enumerate(used):
        model = _make_predictor(estimator, n_estimators, int(rng.integers(2**31 - 1)))
        y_train = f_train[:, k]
        model.fit(x_train, y_train)
        importance[:, col] = np.abs(model.feature_importances_)
        acc_train.append(accuracy_score(y_train, model.predict(x_train)))
        acc_test.append(accuracy_score(f_test[:, k], model.predict(x_test)))
        meter.update(col + 1)
    meter.finish()
    d, c = disentanglement_completeness(importance)
    return DCIResult(
        disentanglement=d,
        completeness=c,
        informativeness_train=float(np.mean(acc_train)),
        informativeness_test=float(np.mean(acc_test)),
        importance=importance,
        factors_used=used,
    )


def dci_disentanglement(codes: np.ndarray, factors: np.ndarray, **kwargs) -> float:
    """DCI disentanglement D in [0, 1]; `dci` with the same arguments gives C and I too."""
    return dci(codes, factors, **kwargs).disentanglement


def _beta_vae_points(
    encode: Callable[[np.ndarray], np.ndarray],
    sizes: np.ndarray,
    choices: np.ndarray,
    n_points: int,
    batch_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """n_points z_diff features (n_points, L) and their labels (indices into sizes)."""
    per_call = max(1, BETA_VAE_ROWS_PER_CALL // (2 * batch_size))
    features, labels = [], []
    for start in range(0, n_points, per_call):
        p = min(per_call, n_points - start)
        k = rng.choice(choices, size=p)
        first = rng.integers(0, sizes, size=(p, batch_size, sizes.size))
        second = rng.integers(0, sizes, size=(p, batch_size, sizes.size))
        rows = np.arange(p)
        second[rows, :, k] = first[rows, :, k]  # each pair agrees on its point's factor k
        both = np.concatenate([first, second]).reshape(-1, sizes.size)
        z = np.asarray(encode(both), dtype=np.float64)
        if z.ndim != 2 or z.shape[0] != both.shape[0]:
            raise BenchError(
                f"encode must map factor indices ({both.shape[0]}, {sizes.size}) to codes "
                f"({both.shape[0]}, L), got shape {z.shape}"
            )
        if not np.isfinite(z).all():
            raise BenchError("encode returned non-finite codes")
        z = z.reshape(2, p, batch_size, -1)
        features.append(np.abs(z[0] - z[1]).mean(axis=1))
        labels.append(k)
    return np.concatenate(features), np.concatenate(labels)


def beta_vae_score(
    encode: Callable[[np.ndarray], np.ndarray],
    factor_sizes: Sequence[int],
    *,
    batch_size: int = BETA_VAE_BATCH,
    n_train: int = BETA_VAE_TRAIN,
    n_test: int = BETA_VAE_TEST,
    seed: int = 0,
) -> float:
    """beta-VAE disentanglement metric: test accuracy in [0, 1] of a linear classifier that
    tells which factor was held fixed (Higgins et al. 2017, sec. 3).

    `encode` maps an int array of factor indices (B, F), factor k in [0, factor_sizes[k]),
    to codes (B, L), the encoder means of the images with those factors (the data set
    supplies the images, the caller composes). Each point: k uniform over the factors, B =
    `batch_size` pairs of uniformly drawn factor combinations with factor k shared, feature
    1/B sum_b |z_1b - z_2b|, label k. The classifier is logistic regression (as in
    disentanglement_lib; Higgins et al. trained a low-capacity linear softmax classifier)
    on standardized features; standardizing (absent in disentanglement_lib, whose fit with
    the default L2 penalty C=1 depends on the codes' units) makes the score invariant to
    rescaling units. Training and test points come from independent numpy Generator
    streams seeded by `seed`. Defaults are disentanglement_lib's (64, 10000, 5000); smaller
    n_train/n_test fit CPU budgets (the accuracy's standard error is about
    sqrt(a (1 - a) / n_test)). Factors of size 1 cannot be told apart from "nothing held
    fixed" and are never chosen as k, so chance level is 1 / (number of factors of size > 1).
    Known limitations: it reaches 100 % when all but one factor are disentangled (Kim and
    Mnih 2018, "Disentangling by Factorising"), and it stays high for rotations of
    the factors that are not maximally dense, since mean |z_1 - z_2| still depends linearly
    enough on which factor was fixed (0.90-1.0 for five uniformly random rotations of 4
    factors, where MIG is 0.11-0.39 and DCI disentanglement 0.18-0.37).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sizes = np.asarray(factor_sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size < 1 or (sizes < 1).any():
        raise BenchError(f"factor_sizes must be positive integers, got {list(factor_sizes)}")
    choices = np.flatnonzero(sizes > 1)
    if choices.size < 2:
        raise BenchError(
            f"factor_sizes: need at least 2 factors with more than one value, got "
            f"{list(factor_sizes)}"
        )
    for name, value in (("batch_size", batch_size), ("n_train", n_train), ("n_test", n_test)):
        if value < 1:
            raise BenchError(f"{name} must be at least 1, got {value}")
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    x_train, y_train = _beta_vae_points(encode, sizes, choices, n_train, batch_size, train_rng)
    if np.unique(y_train).size < 2:
        raise BenchError(f"n_train={n_train} points drew a single factor; use more points")
    x_test, y_test = _beta_vae_points(encode, sizes, choices, n_test, batch_size, test_rng)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(x_train, y_train)
    return float(np.mean(classifier.predict(x_test) == y_test))
