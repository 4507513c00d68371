"""Inpainting: fill in the missing pixels of masked test images with a trained Bernoulli VAE.

Masks (True = missing) over an image of shape (h, w), D = h * w pixels:

    rand25, rand50, rand75  each image its own uniformly random set of exactly round(f * D)
                            missing pixels (f = 0.25, 0.5, 0.75; Python's round), drawn from
                            a CPU generator seeded with the fixed MASK_SEED, so every run,
                            seed and device scores the same masks; row i of the (N, D) draw is
                            image i's mask, so a test-set prefix keeps its masks
    top_half                rows r < h / 2
    quadrant                the top-left quadrant, rows r < h / 2 and columns c < w / 2

The encoder never sees a hidden pixel: its input is x_filled, x with the missing pixels set
to 0 (the convention of input dropout in training, `bench.data.drop_pixels`). Only the
bottom stochastic layer matters for p(x | z_1), so only q(z_1 | .) is sampled.

Methods, each with S = N_SAMPLES posterior draws per image:

    onepass    z_s ~ q(z_1 | x_filled), s = 1..S, and p(x_m | x_o) ~ (1/S) sum_s p(x_m | z_s)
    iterative  pseudo-Gibbs imputation (Rezende, Mohamed & Wierstra 2014, "Stochastic
               backpropagation and approximate inference in deep generative models", their
               missing-data imputation experiment): S independent chains per image start at
               x^0 = x_filled; round t = 1..T draws z^t ~ q(z_1 | x^{t-1}) and, if t < T,
               x_m^t ~ p(x_m | z^t) (a Bernoulli sample; the observed pixels are always kept).
               The final round's S draws z^T (one per chain) are scored exactly like one-pass,
               so T = 1 IS one-pass (same draws from the generator, same numbers). Rezende et
               al. show the chain approaches the model's p(x_m | x_o) when q is close to the
               true posterior; with a q trained on complete images only, the first round's
               input (zeros at the hidden pixels) is off-distribution, which the later
               rounds repair. Conversely a q trained with input dropout expects zeroed
               pixels and is off-distribution on the chain's completed images (the chain
               then drifts; see suites/inpainting.toml). T = N_ROUNDS = 20.
    matched    the iterative chain with the encoder's input matched to what a dropout-trained
               encoder (config input_dropout = p) saw in training: rounds t = 2..T draw
               z^t ~ q(z_1 | drop(x^{t-1})), drop = `bench.data.drop_pixels` with the run's
               p (each pixel of the completed image, observed or imputed, zeroed with
               probability p, a fresh draw per round and chain). Round 1 is the same one-pass
               draw as in the other chains: its input already has its missing pixels zeroed,
               and dropping more would hide more than training did. The chain's states and
               the decoder are untouched; only the encoder's view is dropped. With p = 0 the
               matched chain IS the iterative chain (`impute` draws nothing extra then: same
               draws, same numbers), so `evaluate_inpainting` does not run it again for a
               p = 0 model and stores the iterative chain's scores under the matched keys.

Scores per mask and method (`inpaint_<mask>_<method>_nll` / `_error` in the run's metrics):

    nll    -log (1/S) sum_s prod_{d missing} p(x_d | z_s), nats per test image (summed over
           its missing pixels), mean over the test images. A log-mean-exp of S = 10 terms
           estimates -log of the method's predictive probability from above (Jensen), the same
           way for every run.
    error  % of all missing pixels whose predictive mean (1/S) sum_s p(x_d = 1 | z_s),
           thresholded (1 if > 0.5), differs from the true 0/1 pixel.

Evaluation is batched (ROWS_PER_CHUNK image x sample rows per pass) and draws its noise from
the caller's generator (the trainer's evaluation stream) in a fixed order: masks in MASKS
order, one-pass then iterative, chunks in test-set order; then, after ALL of those, the
matched chain for every mask in the same order. Adding the matched chain therefore moved no
number of the other two (tests/test_inpainting.py pins them).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from bench.data import Dataset, drop_pixels
from bench.errors import BenchError
from bench.metrics.blur import image_rows
from bench.models.lvm import BernoulliDecoder, LatentVariableModel

MASKS: tuple[str, ...] = ("rand25", "rand50", "rand75", "top_half", "quadrant")
METHODS: tuple[str, ...] = ("onepass", "iterative", "matched")
METHOD_LABELS = {"onepass": "one-pass", "iterative": "iterative", "matched": "matched"}
RANDOM_FRACTIONS = {"rand25": 0.25, "rand50": 0.5, "rand75": 0.75}
MASK_LABELS = {"rand25": "25% random", "rand50": "50% random", "rand75": "75% random",
               "top_half": "top half", "quadrant": "quadrant"}
MASK_SEED = 20140127  # fixed: every run is scored on the same random masks
N_SAMPLES = 10  # S posterior draws (chains) per test image
N_ROUNDS = 20  # T rounds of the iterative (pseudo-Gibbs) method
ROWS_PER_CHUNK = 8192  # S x images per forward pass: ~25 MB of logits for MNIST
SAMPLE_MASKS = ("top_half", "rand50", "quadrant")  # shown in the report
N_SAMPLE_IMAGES = 8


def make_mask(name: str, n: int, image_shape: tuple[int, int], *, seed: int = MASK_SEED
              ) -> torch.Tensor:
    """(n, h * w) bool mask on the CPU, True where a pixel is missing (see module docstring)."""
    h, w = image_shape
    d = h * w
    if name in RANDOM_FRACTIONS:
        missing = round(RANDOM_FRACTIONS[name] * d)
        scores = torch.rand((n, d), generator=torch.Generator().manual_seed(seed))
        mask = torch.zeros((n, d), dtype=torch.bool)
        return mask.scatter_(1, scores.topk(missing, dim=1).indices, True)
    top = torch.arange(h)[:, None] < h / 2
    if name == "top_half":
        region = top.expand(h, w)
    elif name == "quadrant":
        region = top & (torch.arange(w)[None, :] < w / 2)
    else:
        raise ValueError(f"unknown mask {name!r} (known: {', '.join(MASKS)})")
    return region.reshape(1, d).expand(n, d).clone()


def hide(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The encoder's view of x: missing pixels (mask True) set to 0."""
    return x.masked_fill(mask, 0.0)


@torch.no_grad()
def impute(
    model: LatentVariableModel,
    x: torch.Tensor,
    mask: torch.Tensor,
    method: str = "onepass",
    *,
    n_samples: int = N_SAMPLES,
    rounds: int = N_ROUNDS,
    generator: torch.Generator | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Decoder logits (S, B, D) at the S scored draws of z_1 for images x (B, D) with missing
    pixels `mask` (B, D). Depends on x only through its observed pixels. `dropout` is the p
    of the matched chain (ignored by the other methods; with p = 0 matched = iterative)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout:g}")
    if not isinstance(model.decoder, BernoulliDecoder):
        raise ValueError("inpainting needs a Bernoulli decoder (likelihood 'bernoulli')")
    encoder: nn.Module = model.encoders[0]
    decode: nn.Module = model.decoder.net
    x_filled = hide(x, mask)
    logits = decode(encoder(x_filled, n_samples, generator=generator).z)  # round 1: (S, B, D)
    if method == "onepass":
        return logits
    batch, dim = x.shape
    drop = dropout if method == "matched" else 0.0
    for _ in range(rounds - 1):
        draw = torch.bernoulli(torch.sigmoid(logits), generator=generator)
        state = torch.where(mask, draw, x_filled)  # (S, B, D): one chain per sample
        seen = state.reshape(n_samples * batch, dim)
        if drop:  # the matched chain: the encoder's view as in dropout training
            seen = drop_pixels(seen, drop, generator)
        z = encoder(seen, 1, generator=generator).z
        logits = decode(z.reshape(n_samples, batch, -1))
    return logits


def predictive_mean(logits: torch.Tensor) -> torch.Tensor:
    """(B, D) mean over the S draws of p(x_d = 1 | z_s)."""
    return torch.sigmoid(logits).mean(0)


def score(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (B,): -log (1/S) sum_s p(x_missing | z_s) in nats (float64), and the number
    of missing pixels whose thresholded predictive mean differs from the 0/1 truth x."""
    log_p = -nn.functional.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none"
    )
    log_p_missing = torch.where(mask, log_p, 0.0).double().sum(-1)  # (S, B)
    nll = math.log(logits.shape[0]) - torch.logsumexp(log_p_missing, dim=0)
    wrong = ((predictive_mean(logits) > 0.5) != (x > 0.5)) & mask
    return nll, wrong.sum(-1)


@torch.no_grad()
def evaluate_inpainting(
    model: LatentVariableModel,
    dataset: Dataset,
    *,
    generator: torch.Generator | None = None,
    input_dropout: float = 0.0,
    n_samples: int = N_SAMPLES,
    rounds: int = N_ROUNDS,
    rows_per_chunk: int = ROWS_PER_CHUNK,
    n_images: int = N_SAMPLE_IMAGES,
) -> tuple[dict, list[dict]]:
    """Score every mask and method on the test set: (metrics, sample rows for the report).
    Metrics: `inpaint_<mask>_<method>_nll` (nats per image), `..._error` (%), and
    `inpaint_seconds`. `input_dropout` is the p the model was trained with, the matched
    chain's dropout (p = 0: the matched scores are the iterative chain's, not rerun)."""
    if dataset.image_shape is None or not dataset.binarized:
        raise BenchError(f"key 'eval_inpainting' needs binarized image data; dataset "
                         f"'{dataset.name}' is not")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    device = next(model.parameters()).device
    x = dataset.test.to(device)
    n = x.shape[0]
    batch = max(1, rows_per_chunk // n_samples)
    shown = min(n_images, n)
    metrics: dict = {}
    means: dict[tuple[str, str], torch.Tensor] = {}  # of the first `shown` images
    masks = {name: make_mask(name, n, dataset.image_shape).to(device) for name in MASKS}

    def run(name: str, method: str) -> None:
        mask = masks[name]
        nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        wrong = torch.zeros((), dtype=torch.int64, device=device)
        shown_means = []
        for lo in range(0, n, batch):
            xb, mb = x[lo : lo + batch], mask[lo : lo + batch]
            logits = impute(model, xb, mb, method, n_samples=n_samples, rounds=rounds,
                            generator=generator, dropout=input_dropout)
            nll, wrong_b = score(logits, xb, mb)
            nll_sum += nll.sum()
            wrong += wrong_b.sum()
            if lo < shown:
                shown_means.append(predictive_mean(logits[:, : shown - lo]))
        means[name, method] = torch.cat(shown_means)
        n_missing = int(mask.sum())
        key = f"inpaint_{name}_{method}"
        metrics[f"{key}_nll"] = float(nll_sum) / n
        metrics[f"{key}_error"] = 100.0 * float(wrong) / n_missing if n_missing else math.nan

    for name in MASKS:  # the draws of the first two methods, in their original order
        for method in METHODS[:2]:
            run(name, method)
    for name in MASKS:  # then the matched chain: it moves none of the numbers above
        if input_dropout:
            run(name, "matched")
        else:  # p = 0: the matched chain is the iterative chain (module docstring)
            for score_name in ("nll", "error"):
                metrics[f"inpaint_{name}_matched_{score_name}"] = \
                    metrics[f"inpaint_{name}_iterative_{score_name}"]
    metrics["inpaint_seconds"] = time.perf_counter() - start
    model.train(was_training)

    truth = x[:shown]
    # p = 0: a matched row would repeat the iterative one
    shown_methods = METHODS if input_dropout else METHODS[:2]
    kinds: dict[str, torch.Tensor] = {"truth": truth}
    for name in SAMPLE_MASKS:
        label, mask = MASK_LABELS[name], masks[name][:shown]
        kinds[f"masked: {label}"] = truth.masked_fill(mask, 0.5)  # missing drawn grey
        for method in shown_methods:
            mean = means[name, method]
            kinds[f"{METHOD_LABELS[method]}: {label}"] = torch.where(mask, mean, truth)
    return metrics, image_rows(kinds, dataset.image_shape)
