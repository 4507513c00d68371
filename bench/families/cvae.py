"""Conditional VAEs: class-conditional generation, and the MNIST quadrant-completion task.

condition = "label" (model "cvae")
    q(z | x, y) = N(mu(x, y), diag(sigma^2(x, y))),  p(z) = N(0, I),
    p(x | y, z) = prod_d Bernoulli(x_d; sigmoid(f(z, y)_d)),   y the one-hot class,
    trained on the conditional ELBO  E_q log p(x|y,z) - beta KL(q(z|x,y) || p(z))  (objective
    "vae", mean of k terms) or the k-sample IWAE bound (objective "iwae"); tanh MLPs (the
    bench's VAE units), hidden sizes hidden[0], latent size latent[0].
    Metrics (nats per test image, mean over the test set):
        test_ll    log p(x | y) ~= log (1/K) sum_k p(x|y,z_k) p(z_k) / q(z_k|x,y), z_k ~ q,
                   K = k_eval, in chunks with a float64 log-sum-exp (Burda et al. 2015)
        test_elbo  E_q log p(x|y,z) - KL(q(z|x,y) || p(z)) (K-sample mean, closed-form KL)
        rate       KL(q(z|x,y) || p(z)), closed form
    Samples: rows "class 0" .. "class 9", 10 decoder means each; column j decodes the SAME
    z_j ~ N(0, I) under every class, so a column shows one style written as every digit.

condition = "quadrants" (models "cvae" and "conditional_nn"): Sohn, Lee & Yan 2015,
"Learning Structured Output Representation using Deep Conditional Generative Models",
Sec. 5.1, as reproduced by Pyro's CVAE example (pyro-ppl/pyro examples/cvae, tutorial
"Conditional Variational Auto-encoder"). The image is cut into four equal quadrants (any even
image_shape: 14x14 quadrants for MNIST, 4x4 for the 8x8 digits). The input x is the given
quadrants, the output y the missing pixels; the given quadrants are Pyro's:
    1 given: bottom-left;  2 given: top-left, bottom-left;  3 given: all but bottom-right.
    conditional_nn  the deterministic baseline: y_hat = sigmoid(g(x)), a ReLU MLP from the
                    given pixels to Bernoulli logits of the missing ones, trained by the
                    summed cross-entropy on the missing pixels (Pyro's MaskedBCELoss).
    cvae            prior network p(z | x) = N(mu_p, sigma_p^2) fed [x, y_hat(x)], the
                    baseline's guess (Sohn et al.: the CVAE is built on top of the NN; in
                    Pyro a pre-trained baseline, frozen while the CVAE trains); recognition
                    network q(z | x, y) fed [x, y]; generation network
                    p(y | x, z) = prod Bernoulli(sigmoid(h(x, z))). Trained on the
                    conditional ELBO  E_q log p(y|x,z) - beta KL(q(z|x,y) || p(z|x)) (closed
                    form between diagonal Gaussians) or the IWAE bound with weights
                    p(y|x,z) p(z|x) / q(z|x,y). ReLU MLPs as in Pyro (hidden[0], latent[0]).
    A cvae run first trains its baseline (exactly the conditional_nn run of the same config
    and seed), then the CVAE, each stage for at most `epochs` epochs (the lr schedule's);
    its curves hold the baseline's records first (nn_epochs_run of them: minus the
    cross-entropy), then the CVAE's (cvae_epochs_run: its bound), both nats per image,
    higher is better.
    Hidden pixels never reach the prior or generation networks: the networks read the given
    pixels by index (and the prior the baseline's guess, itself a function of them).
    Metrics (nats per test image; lower is better for every *_cll):
        test_cll    conditional_nn: the exact negative CLL -log p(y|x), the summed
                    cross-entropy over the missing pixels. cvae: estimated the way Pyro's
                    table ("CVAE (Monte Carlo)", util.generate_table) is: Trace_ELBO's loss,
                    i.e. the negative conditional ELBO with z ~ q(z|x,y) and the Monte Carlo
                    KL, -(1/K) sum_k log [p(y|x,z_k) p(z_k|x) / q(z_k|x,y)], K = k_eval
                    (Pyro: num_particles = 10). It upper-bounds -log p(y|x) in expectation,
                    and its expectation does not depend on K.
        test_cll_is (cvae) the importance-sampling estimate -log (1/K) sum_k w_k from the same
                    K = k_eval samples: tighter (never above test_cll, equal at K = 1) and
                    consistent as K grows (Sohn et al.'s importance-sampling estimate).
        rate        (cvae) KL(q(z|x,y) || p(z|x)), closed form.
        nn_test_cll (cvae) the exact test_cll of the cvae's own baseline network.
        test_cll_marginal  a floor every model must beat: independent Bernoulli pixels with
                    the mean intensity of the images trained on (add-one smoothed), exact.
    Samples (10 test images each): "input (given quadrants)" with the hidden area at 0.5 grey,
    "prediction" (cvae: the decoder mean at one z from the prior network; conditional_nn: its
    probabilities; given pixels composited in), "truth".
    Architecture differences from Pyro: its baseline reads the 784-pixel image with the
    hidden pixels set to -1, and its baseline and generation network emit 784 outputs of
    which the hidden ones are used; ours read and emit only the pixels that carry
    information (the constant -1 inputs only shift biases). Pyro's prior and recognition
    networks read all 784 pixels with the hidden ones filled by the baseline's guess or the
    target (examples/cvae/cvae.py, Encoder.forward): the same values ours read, concatenated.
    Pyro's generation network reads z alone; ours reads (x, z) as in Sohn et al.'s p(y|x,z).
    Pyro's Gaussian heads emit log sigma; ours emit log sigma^2 (the same family).

Data: what the numbers mean (both conditions).
    binarize = true (the default): training images are binarized afresh per minibatch
        (binarize_dynamic), the test set once (bench.data); inputs and targets are 0/1, the
        Bernoulli likelihood is a proper probability mass function, and every *_ll / *_cll
        is a (bound on a) log-likelihood of binary pixels, in nats.
    binarize = false (Pyro's protocol): inputs AND targets are the grey intensities in
        [0, 1] (as stored by bench.data: byte / 256; Pyro's torchvision tensors are
        byte / 255), never binarized, and the "Bernoulli log-likelihood" of a grey target t
        under probability p is minus the cross-entropy t log p + (1 - t) log(1 - p) (binary
        cross-entropy with soft targets, Pyro's MaskedBCELoss and Bernoulli(validate_args =
        False)). That is NOT a likelihood: exp(-cross-entropy) is not normalised over grey
        values, and even a perfect model pays the entropy of the targets (for MNIST's test
        set ~35 / 26 / 13 nats over the missing pixels with 1 / 2 / 3 quadrants given). So
        test_cll is Pyro's quantity (cross-entropy, or its ELBO-style Monte Carlo estimate),
        comparable with Pyro's table and with other grey-level runs only, never with
        binarized runs; test_cll_is is the same log-mean-exp of the unnormalised weights
        exp(-cross-entropy) p(z|x) / q(z|x,y), still never above test_cll; rate is a proper
        KL; test_cll_marginal the cross-entropy of the grey targets against the smoothed mean
        intensities; the label cvae's test_ll / test_elbo are likewise minus cross-entropies.
        Samples show grey truths and the predicted intensities.

Validation and early stopping (both conditions).
    validation_size = n > 0 holds out the LAST n training images: they are never trained on
    (nor used for the authors' output-bias initialisation or test_cll_marginal). After every
    epoch each training stage (the baseline, then the CVAE) computes its validation loss: the
    same estimator as its training loss (the baseline's exact cross-entropy; the CVAE's or
    label CVAE's negative bound with cfg.k samples), mean per image, with binarization and
    latent noise drawn from a generator re-seeded identically for every evaluation, so the
    curve is reproducible and epochs are compared on common random numbers. It is stored
    in the curves as valid_bound (minus the loss). patience = P > 0 applies Pyro's rule
    (examples/cvae baseline.py and cvae.py): an epoch improves when its validation loss is
    strictly below the best so far; otherwise a counter of epochs without improvement goes
    up by one (an improvement resets it), and the stage stops once the counter reaches P,
    i.e. P epochs after its best epoch. The best epoch's weights are then restored, so
    every test metric is that of the best epoch (epochs_done and final_train_bound describe
    the last epoch run). patience = 0 trains every epoch and keeps the
    last weights. Pyro selects on the MNIST test split (its "val" loader); we never do.
    Metrics per stage (prefix nn_ for the baseline, cvae_ for the CVAE): *_epochs_run (always;
    epochs run, at most `epochs`), and with a validation split *_best_epoch (1-based within
    the stage; for a cvae's CVAE stage its curve record is nn_epochs_run + cvae_best_epoch)
    and *_valid_loss (the best validation loss, nats per image).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from bench.compiler import compile_fresh, compile_options
from bench.config import RunConfig
from bench.data import Dataset, binarize_dynamic
from bench.errors import BenchError
from bench.families import FamilyResult, OnEpoch
from bench.families.compiling import should_compile
from bench.loop import EVAL_STREAM, TRAIN_STREAM, EpochRecord, make_generator, train_epochs
from bench.metrics.blur import image_rows
from bench.metrics.likelihood import DEFAULT_ROWS_PER_CHUNK
from bench.models.fastmath import Tanh, bernoulli_log_prob
from bench.models.init import init_authors
from bench.models.lvm import ModelSample
from bench.models.posteriors import (
    LOG_2PI,
    ConditionalGaussian,
    draw_eps,
    gaussian_log_prob,
    mlp,
)
from bench.objectives import objective_for
from bench.optim import loss_scale, make_optimizer

# quadrants given as input for each value of given_quadrants (Pyro's MaskImages)
GIVEN_QUADRANTS: dict[int, tuple[str, ...]] = {
    1: ("bottom-left",),
    2: ("top-left", "bottom-left"),
    3: ("top-left", "top-right", "bottom-left"),
}
N_SAMPLE_IMAGES = 10
HIDDEN_GREY = 0.5  # how the hidden area is drawn in the "input" sample row


# ----------------------------------------------------------------------------- geometry
def quadrant_masks(
    image_shape: tuple[int, int] | None, given_quadrants: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(given, missing): boolean (H*W,) masks, row-major, that partition the image. `given`
    covers the quadrants GIVEN_QUADRANTS[given_quadrants]; H and W must be even."""
    if given_quadrants not in GIVEN_QUADRANTS:
        raise BenchError(f"key 'given_quadrants' must be 1, 2 or 3, got {given_quadrants}")
    if image_shape is None or image_shape[0] % 2 or image_shape[1] % 2:
        raise BenchError(f"key 'given_quadrants' = {given_quadrants} needs images of even "
                         f"height and width, got image_shape {image_shape}")
    h, w = image_shape
    given = torch.zeros(h, w, dtype=torch.bool)
    rows = {"top": slice(0, h // 2), "bottom": slice(h // 2, h)}
    cols = {"left": slice(0, w // 2), "right": slice(w // 2, w)}
    for name in GIVEN_QUADRANTS[given_quadrants]:
        row, col = name.split("-")
        given[rows[row], cols[col]] = True
    return given.flatten(), ~given.flatten()


# ----------------------------------------------------------------------------- networks
class ReluGaussian(ConditionalGaussian):
    """N(mu(h), diag(exp(logvar(h)))) from a ReLU MLP trunk (Pyro's Encoder: loc, exp(.) scale;
    our head emits the log-variance, i.e. twice Pyro's log-scale)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int):
        super().__init__(n_in, hidden, n_out, activation=nn.ReLU)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar, _ = self.params(h)
        return mean, logvar


class SplitInputMLP(nn.Module):
    """f(a, b) = MLP([a, b]) with the first layer split as W_a a + W_b b, so that `a` (B, n_a),
    shared by the k samples of b (k, B, n_b), is multiplied once, not k times."""

    def __init__(self, n_a: int, n_b: int, hidden: tuple[int, ...], n_out: int,
                 activation: type[nn.Module]):
        super().__init__()
        width = hidden[0] if hidden else n_out
        self.from_a = nn.Linear(n_a, width)
        self.from_b = nn.Linear(n_b, width, bias=False)
        self.rest = (nn.Sequential(activation(), mlp(list(hidden) + [n_out], activation))
                     if hidden else nn.Identity())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.rest(self.from_a(a) + self.from_b(b))


def _sample_gaussian(
    mean: torch.Tensor, logvar: torch.Tensor, k: int, generator: torch.Generator | None,
    eps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k reparameterised draws (k, B, d) and log q at them (k, B); the standard normal noise
    `eps` (k, B, d) drawn here from `generator` unless given (`draw_noise`: the same draw)."""
    if eps is None:
        eps = draw_eps(mean, k, generator)
    z = mean + torch.exp(0.5 * logvar) * eps
    return z, -0.5 * (eps**2 + logvar + LOG_2PI).sum(-1)


def gaussian_kl(
    q_mean: torch.Tensor, q_logvar: torch.Tensor, p_mean: torch.Tensor, p_logvar: torch.Tensor
) -> torch.Tensor:
    """KL(N(q_mean, e^q_logvar) || N(p_mean, e^p_logvar)) of diagonal Gaussians, summed over
    the last dimension, nats."""
    return 0.5 * (p_logvar - q_logvar
                  + (torch.exp(q_logvar) + (q_mean - p_mean) ** 2) * torch.exp(-p_logvar)
                  - 1.0).sum(-1)


class LabelCVAE(nn.Module):
    """q(z|x,y), p(z) = N(0, I), p(x|y,z) Bernoulli; y a one-hot class (tanh MLPs)."""

    def __init__(self, n_data: int, n_classes: int, hidden: tuple[int, ...], latent: int):
        super().__init__()
        self.n_classes, self.latent = n_classes, latent
        self.encoder = ConditionalGaussian(n_data + n_classes, hidden, latent)
        # decoder reads (y, z): `from_a` sees the one-hot class, `from_b` the latent
        self.decoder = SplitInputMLP(n_classes, latent, tuple(reversed(hidden)), n_data, Tanh)

    def forward(self, x: torch.Tensor, y: torch.Tensor, k: int,
                generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> ModelSample:
        """k samples z ~ q(z|x,y) per example of x (B, D) with one-hot y (B, C); `eps`
        (`draw_noise`) replaces the draw from `generator`."""
        mean, logvar, _ = self.encoder.params(torch.cat([x, y], dim=-1))
        z, log_q = _sample_gaussian(mean, logvar, k, generator, eps)
        log_px = bernoulli_log_prob(self.decoder(y, z), x)
        return ModelSample(
            log_px_given_z=log_px,
            log_pz=-0.5 * (z**2 + LOG_2PI).sum(-1),
            log_qz=log_q,
            kl_analytic=0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1),
            z=[z],
            z_means=[mean.unsqueeze(0)],
        )

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | y, z]: pixel probabilities (B, D) for latents z (B, d), one-hot y (B, C)."""
        return torch.sigmoid(self.decoder(y, z))

    @torch.no_grad()
    def class_grid(self, n_columns: int, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
        """(C, n_columns, D) decoder means: one z_j ~ N(0, I) per column, decoded under every
        class c, so row c shows class c and column j one style."""
        device = next(self.parameters()).device
        z = torch.randn((n_columns, self.latent), generator=generator, device=device)
        eye = torch.eye(self.n_classes, device=device)
        return torch.stack([self.decode_mean(z, eye[c].expand(n_columns, -1))
                            for c in range(self.n_classes)])


class _QuadrantModel(nn.Module):
    """Holds the quadrant geometry: index buffers for the given and the missing pixels."""

    def __init__(self, given: torch.Tensor):
        super().__init__()
        self.register_buffer("given_index", torch.nonzero(given).flatten())
        self.register_buffer("missing_index", torch.nonzero(~given).flatten())

    @property
    def n_given(self) -> int:
        return int(self.given_index.numel())

    @property
    def n_missing(self) -> int:
        return int(self.missing_index.numel())

    def given(self, x: torch.Tensor) -> torch.Tensor:
        """The given pixels (..., n_given) of full images x (..., D): nothing else is read."""
        return x.index_select(-1, self.given_index)

    def missing(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.missing_index)

    def composite(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Full images: the given pixels of x with y (B, n_missing) in the missing area."""
        return x.index_copy(-1, self.missing_index, y.to(x.dtype))


class ConditionalNN(_QuadrantModel):
    """The deterministic baseline: Bernoulli logits of the missing pixels from the given ones
    (Pyro's BaselineNet; Sohn et al.'s NN)."""

    def __init__(self, given: torch.Tensor, hidden: tuple[int, ...]):
        super().__init__(given)
        self.net = mlp([self.n_given, *hidden, self.n_missing], nn.ReLU)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.given(x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) log p(y | x): minus the summed cross-entropy over the missing pixels."""
        return bernoulli_log_prob(self.logits(x), self.missing(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """(B, n_missing) pixel probabilities (deterministic: `generator` is unused)."""
        return torch.sigmoid(self.logits(x))


class QuadrantCVAE(_QuadrantModel):
    """Sohn et al.'s CVAE for quadrant completion, built on a frozen baseline `ConditionalNN`:
    prior p(z|x) fed [x, y_hat(x)], recognition q(z|x,y) fed [x, y], generation p(y|x,z)."""

    def __init__(self, baseline: ConditionalNN, hidden: tuple[int, ...], latent: int):
        given = torch.zeros(baseline.n_given + baseline.n_missing, dtype=torch.bool)
        given[baseline.given_index.cpu()] = True
        super().__init__(given)
        self.latent = latent
        self.baseline = baseline.requires_grad_(False)
        n_io = self.n_given + self.n_missing
        self.prior_net = ReluGaussian(n_io, hidden, latent)
        self.recognition_net = ReluGaussian(n_io, hidden, latent)
        self.generation_net = SplitInputMLP(self.n_given, latent, tuple(reversed(hidden)),
                                            self.n_missing, nn.ReLU)

    def prior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of p(z | x): reads the given pixels and the baseline's guess."""
        given = self.given(x)
        with torch.no_grad():
            y_hat = torch.sigmoid(self.baseline.net(given))
        return self.prior_net(torch.cat([given, y_hat], dim=-1))

    def recognition(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z | x, y): reads the whole image (training and scoring only)."""
        return self.recognition_net(torch.cat([self.given(x), self.missing(x)], dim=-1))

    def generation_logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits (k, B, n_missing) of p(y | x, z) for z (k, B, d): reads the given pixels."""
        return self.generation_net(self.given(x), z)

    def forward(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> ModelSample:
        """k samples z ~ q(z|x,y) per full image of x (B, D) and the log-densities at them:
        log p(y|x,z), log p(z|x) (as `log_pz`) and log q(z|x,y); `eps` (`draw_noise`)
        replaces the draw from `generator`."""
        p_mean, p_logvar = self.prior(x)
        q_mean, q_logvar = self.recognition(x)
        z, log_q = _sample_gaussian(q_mean, q_logvar, k, generator, eps)
        return ModelSample(
            log_px_given_z=bernoulli_log_prob(self.generation_logits(x, z), self.missing(x)),
            log_pz=gaussian_log_prob(z, p_mean, p_logvar),
            log_qz=log_q,
            kl_analytic=gaussian_kl(q_mean, q_logvar, p_mean, p_logvar),
            z=[z],
            z_means=[q_mean.unsqueeze(0)],
        )

    @torch.no_grad()
    def predict(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """(B, n_missing) decoder means at one z per image drawn from the prior network."""
        mean, logvar = self.prior(x)
        z, _ = _sample_gaussian(mean, logvar, 1, generator)
        return torch.sigmoid(self.generation_logits(x, z))[0]


Model = LabelCVAE | ConditionalNN | QuadrantCVAE


def draw_noise(model: LabelCVAE | QuadrantCVAE, batch: int, k: int,
               generator: torch.Generator | None) -> torch.Tensor:
    """The noise (k, batch, latent) the model's forward would draw for `batch` examples:
    drawn beforehand (the forward draws nothing else), a compiled loss holds no generator."""
    like = next(model.parameters())
    return torch.randn((k, batch, model.latent), generator=generator, device=like.device,
                       dtype=like.dtype)


# ----------------------------------------------------------------------------- estimators
@dataclass
class ConditionalEstimates:
    """Per-example estimates (float64, (N,), nats) from K samples z_k ~ q of each example,
    with w_k = p(y|x,z_k) p(z_k|x) / q(z_k|x,y) (label: x and y swap roles, p(z) = N(0, I))."""

    log_likelihood: torch.Tensor  # log (1/K) sum_k w_k: importance sampling
    elbo_mc: torch.Tensor  # (1/K) sum_k log w_k: the ELBO with the Monte Carlo KL (Pyro)
    elbo: torch.Tensor  # (1/K) sum_k log p(y|x,z_k) - KL(q || p), closed-form KL
    kl: torch.Tensor  # KL(q || p), closed form


@torch.no_grad()
def conditional_estimates(
    sample: Callable[[slice, int], ModelSample],
    n: int,
    k_eval: int,
    *,
    device: torch.device | str = "cpu",
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
) -> ConditionalEstimates:
    """Estimates for examples 0..n-1, where `sample(rows, k)` draws k samples for the examples
    `rows` and returns their ModelSample. Chunked over examples and samples so memory stays
    bounded for any k_eval; chunks are combined by a float64 log-sum-exp."""
    if k_eval < 1:
        raise ValueError(f"k_eval must be >= 1, got {k_eval}")
    batch = max(1, min(n, rows_per_chunk // min(k_eval, rows_per_chunk)))
    k_chunk = max(1, rows_per_chunk // batch)
    out = {name: torch.empty(n, dtype=torch.float64, device=device)
           for name in ("log_likelihood", "elbo_mc", "elbo", "kl")}
    for lo in range(0, n, batch):
        rows = slice(lo, min(n, lo + batch))
        size = rows.stop - rows.start
        lse = torch.full((size,), -math.inf, dtype=torch.float64, device=device)
        sum_log_w = torch.zeros(size, dtype=torch.float64, device=device)
        sum_log_lik = torch.zeros_like(sum_log_w)
        kl = torch.zeros_like(sum_log_w)
        done = 0
        while done < k_eval:
            k = min(k_chunk, k_eval - done)
            s = sample(rows, k)
            log_w = s.log_weights.double()
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
            sum_log_w += log_w.sum(0)
            sum_log_lik += s.log_px_given_z.double().sum(0)
            kl = s.kl_analytic.double()
            done += k
        out["log_likelihood"][rows] = lse - math.log(k_eval)
        out["elbo_mc"][rows] = sum_log_w / k_eval
        out["elbo"][rows] = sum_log_lik / k_eval - kl
        out["kl"][rows] = kl
    return ConditionalEstimates(**out)


@torch.no_grad()
def nn_cross_entropy(model: ConditionalNN, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """(N,) float64: exact -log p(y|x) of the baseline, summed over the missing pixels."""
    return torch.cat([-model.log_prob(x[lo:lo + batch]).double()
                      for lo in range(0, x.shape[0], batch)])


def pixel_marginal_cll(train: torch.Tensor, test: torch.Tensor, missing: torch.Tensor
                       ) -> torch.Tensor:
    """(N,) float64 exact -log p(y) of the test images' missing pixels under independent
    Bernoullis with the training mean intensity, add-one smoothed (p = (s + 1) / (n + 2));
    with grey-level images the cross-entropy of the grey targets against those p."""
    p = (train.sum(0, dtype=torch.float64)[missing] + 1.0) / (train.shape[0] + 2.0)
    y = test[:, missing].double()
    return -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum(-1)


# ----------------------------------------------------------------------------- training
#: offset of the validation estimator's stream from cfg.seed (bench.loop's streams are 0
#: and 1_000_003); the generator is re-seeded with it for every evaluation
_VALID_STREAM = 2_000_029
VALID_CHUNK = 1000  # validation images per forward pass

# a stage's loss: (minibatch (B, D), its one-hot labels (B, C) or None, its latent noise
# (k, B, d) or None) -> 0-d mean; and what draws that noise: (B, generator) -> (k, B, d)
StageLoss = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]
StageNoise = Callable[[int, torch.Generator], torch.Tensor]


@dataclass
class Fitted:
    """A trained model with its training record."""

    model: Model
    status: str  # "finished" or "diverged"
    curves: list[EpochRecord]
    train_seconds: float
    diverged_epoch: int | None = None
    # per stage (nn_, cvae_): epochs_run; with a validation split best_epoch, valid_loss
    stage_metrics: dict = field(default_factory=dict)
    compiled: bool = False  # whether its stages' steps ran torch.compile'd


@dataclass(frozen=True)
class Split:
    """A run's training data: what it trains on, and the held-out validation images."""

    fit: Dataset  # the data set with train / train_labels cut to the images trained on
    valid: torch.Tensor | None  # (validation_size, D) the LAST training images; None if 0
    valid_labels: torch.Tensor | None


def split_validation(cfg: RunConfig, dataset: Dataset) -> Split:
    """Hold out the last cfg.validation_size training images (nothing when it is 0)."""
    n_valid, n = cfg.validation_size, dataset.train.shape[0]
    if n_valid == 0:
        return Split(dataset, None, None)
    if n_valid >= n:
        raise BenchError(f"key 'validation_size' = {n_valid} leaves no image to train on "
                         f"(the training set has {n})")
    cut = n - n_valid
    factors = dataset.train_factors
    fit_data = dataclasses.replace(dataset, train=dataset.train[:cut],
                                   train_labels=dataset.train_labels[:cut],
                                   train_factors=None if factors is None else factors[:cut])
    return Split(fit_data, dataset.train[cut:], dataset.train_labels[cut:])


def build(cfg: RunConfig, dataset: Dataset) -> Model:
    """The untrained model of `cfg`, weights drawn from cfg.seed with the global RNG left
    untouched (on the CPU; move it to a device afterwards), initialised by cfg.init (authors:
    every Bernoulli output bias is the logit of the training pixel means it predicts).
    `dataset` is the data trained on (fit() passes split_validation's `fit`)."""
    hidden, latent = tuple(cfg.hidden[0]), cfg.latent[0]
    init = cfg.init == "authors"
    pixel_mean = dataset.pixel_mean
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.condition == "label":
            model = LabelCVAE(dataset.dim, _n_classes(dataset), hidden, latent)
            if init:
                init_authors(model, _output_linear(model.decoder), pixel_mean)
            return model
        given, missing = quadrant_masks(dataset.image_shape, cfg.given_quadrants)
        # the baseline is built (and initialised) first, from the same seed: a cvae's
        # baseline is identical to the conditional_nn of the same config and seed
        baseline = ConditionalNN(given, hidden)
        if init:
            init_authors(baseline, baseline.net[-1], pixel_mean[missing])
        if cfg.model == "conditional_nn":
            return baseline
        model = QuadrantCVAE(baseline, hidden, latent)
        if init:
            for network in (model.prior_net, model.recognition_net):
                init_authors(network, None, None)
            init_authors(model.generation_net, _output_linear(model.generation_net),
                         pixel_mean[missing])
        return model


def _output_linear(network: nn.Module) -> nn.Linear:
    """The last linear layer with a bias: a SplitInputMLP's output layer."""
    return [m for m in network.modules() if isinstance(m, nn.Linear) and m.bias is not None][-1]


def fit(
    cfg: RunConfig,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    on_epoch: OnEpoch | None = None,
    compile: str = "off",
) -> Fitted:
    """Build and train `cfg`'s model (a quadrant cvae: baseline first, then the CVAE) on
    the training images left after split_validation, early-stopping on the held-out ones.
    `compile` (auto, on, off; bench.families.compiling): each stage's loss and backward as
    one torch.compile'd graph, its latent noise drawn beforehand in the eager order."""
    _check(cfg, dataset)
    device = torch.device(device)
    split = split_validation(cfg, dataset)
    data = split.fit
    model = build(cfg, data).to(device)
    generator = make_generator(cfg.seed + TRAIN_STREAM, device)
    bound = objective_for(cfg)
    compiled = should_compile(cfg, data.train.shape[0], device, compile)
    loop = _Loop(cfg, data, split, device, generator, on_epoch, compiled)

    def noise(batch: int, gen: torch.Generator) -> torch.Tensor:
        return draw_noise(model, batch, cfg.k, gen)

    if isinstance(model, LabelCVAE):
        loop.labels(model.n_classes)
        loop.stage("cvae", model.parameters(),
                   lambda xb, yb, eps: -bound(model(xb, yb, cfg.k, eps=eps)).mean(), noise)
    else:
        baseline = model if isinstance(model, ConditionalNN) else model.baseline
        loop.total *= 1 if model is baseline else 2
        baseline.requires_grad_(True)
        loop.stage("nn", baseline.parameters(),
                   lambda xb, yb, eps: -baseline.log_prob(xb).mean())
        baseline.requires_grad_(False)
        if isinstance(model, QuadrantCVAE) and loop.diverged_epoch is None:
            trainable = [p for name, p in model.named_parameters()
                         if not name.startswith("baseline.")]
            loop.stage("cvae", trainable,
                       lambda xb, yb, eps: -bound(model(xb, cfg.k, eps=eps)).mean(), noise)
    model.eval()
    return Fitted(
        model=model,
        status="finished" if loop.diverged_epoch is None else "diverged",
        curves=loop.curves,
        train_seconds=time.perf_counter() - loop.start,
        diverged_epoch=loop.diverged_epoch,
        stage_metrics=loop.metrics,
        compiled=compiled,
    )


class EarlyStopping:
    """Pyro's early-stopping rule (examples/cvae: baseline.train and cvae.train). Feed it
    each epoch's validation loss with `update`: an epoch improves when its loss is strictly
    below the best so far (the first finite loss always is); otherwise the count of epochs
    without improvement goes up by one, and an improvement resets it to 0. `stop` is true
    once that count reaches `patience` (never for patience 0), i.e. `patience` epochs after
    the best one. NaN never improves."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch: int | None = None  # 1-based, among the updates
        self.epochs = 0
        self.without_improvement = 0

    def update(self, loss: float) -> bool:
        """Record the next epoch's loss; True when it is the new best."""
        self.epochs += 1
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, self.epochs
            self.without_improvement = 0
            return True
        self.without_improvement += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.without_improvement >= self.patience


@torch.no_grad()
def validation_loss(loss: StageLoss, noise: StageNoise | None, x: torch.Tensor,
                    y: torch.Tensor | None, *, binarized: bool, seed: int,
                    chunk: int = VALID_CHUNK) -> float:
    """Mean of `loss` over the validation images x (and one-hot labels y), in chunks, with a
    generator seeded afresh from `seed` (binarization, then the loss's `noise`, per chunk):
    the same value for the same weights, whenever it is called."""
    generator = make_generator(seed, x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for lo in range(0, x.shape[0], chunk):
        xb = x[lo:lo + chunk]
        if binarized:
            xb = binarize_dynamic(xb, generator)
        yb = None if y is None else y[lo:lo + chunk]
        eps = None if noise is None else noise(xb.shape[0], generator)
        total += loss(xb, yb, eps).double() * xb.shape[0]
    return float(total) / x.shape[0]


class _Loop:
    """Training stages sharing one record: curves and on_epoch span all stages, and a stage
    after a diverged one does not run. With a validation split each stage early-stops on it
    (see the module doc) and leaves its metrics in `metrics`. `compiled`: each stage's
    training loss runs torch.compile'd (its validation loss eagerly, another shape and no
    gradient, so no more graphs), with a fused Adam."""

    def __init__(self, cfg: RunConfig, data: Dataset, split: Split, device: torch.device,
                 generator: torch.Generator, on_epoch: OnEpoch | None, compiled: bool):
        self.cfg, self.binarized, self.generator = cfg, data.binarized, generator
        self.device, self.compiled = device, compiled
        self.x = data.train.to(device)
        self.x_valid = None if split.valid is None else split.valid.to(device)
        self.y: torch.Tensor | None = None  # one-hot labels (label cvae only)
        self.y_valid: torch.Tensor | None = None
        self._labels = (data.train_labels, split.valid_labels)
        self.on_epoch, self.total = on_epoch, cfg.epochs  # total: the most epochs, all stages
        self.curves: list[EpochRecord] = []
        self.metrics: dict[str, float | None] = {}
        self.diverged_epoch: int | None = None
        self.start = time.perf_counter()

    def labels(self, n_classes: int) -> None:
        """Pass each minibatch's one-hot class labels to the loss (the label cvae)."""
        train, valid = self._labels
        self.y = F.one_hot(train, n_classes).float().to(self.x.device)
        if self.x_valid is not None:
            self.y_valid = F.one_hot(valid, n_classes).float().to(self.x.device)

    def stage(self, name: str, parameters, loss: StageLoss,
              noise: StageNoise | None = None) -> None:
        """cfg.optimizer on `parameters` for the config's epochs and learning-rate schedule
        (at most: early stopping may end it sooner and restore its best epoch's weights).
        `noise` draws the loss's latent noise after each minibatch's binarization (None:
        the loss takes none)."""
        cfg = self.cfg
        parameters = list(parameters)
        optimizer = make_optimizer(parameters, cfg, fused=self.compiled)
        train_loss = (compile_fresh(loss, compile_options(self.device)) if self.compiled
                      else loss)

        def step(rows: torch.Tensor) -> torch.Tensor:
            xb = self.x[rows]
            if self.binarized:
                xb = binarize_dynamic(xb, self.generator)
            eps = None if noise is None else noise(xb.shape[0], self.generator)
            if self.compiled and self.device.type == "cuda":  # a new CUDA graph iteration
                torch.compiler.cudagraph_mark_step_begin()
            batch_loss = train_loss(xb, None if self.y is None else self.y[rows], eps)
            optimizer.zero_grad(set_to_none=True)
            (batch_loss * loss_scale(cfg, rows.shape[0])).backward()
            optimizer.step()
            return batch_loss.detach()

        first = len(self.curves)
        stopper = EarlyStopping(cfg.patience)
        best_weights: list[torch.Tensor] | None = None
        for lr in cfg.epoch_lrs():
            # one epoch per call: the same permutations and draws as one call for all epochs
            self.diverged_epoch = train_epochs(
                [lr], step, n=self.x.shape[0], batch_size=cfg.batch_size, optimizer=optimizer,
                generator=self.generator, curves=self.curves, start=self.start,
                on_epoch=self.on_epoch, total=self.total)
            if self.diverged_epoch is not None:
                return
            if self.x_valid is None:
                continue
            valid = validation_loss(loss, noise, self.x_valid, self.y_valid,
                                    binarized=self.binarized, seed=cfg.seed + _VALID_STREAM)
            self.curves[-1].valid_bound = -valid
            if stopper.update(valid) and cfg.patience:
                best_weights = [p.detach().clone() for p in parameters]
            if stopper.stop:
                break
        if best_weights is not None:  # patience > 0: the best epoch's weights
            with torch.no_grad():
                for p, best in zip(parameters, best_weights, strict=True):
                    p.copy_(best)
        self.metrics[f"{name}_epochs_run"] = len(self.curves) - first
        if self.x_valid is not None:
            self.metrics[f"{name}_best_epoch"] = stopper.best_epoch
            self.metrics[f"{name}_valid_loss"] = stopper.best_loss


# ----------------------------------------------------------------------------- evaluation
def evaluate(
    model: Model,
    cfg: RunConfig,
    dataset: Dataset,
    *,
    generator: torch.Generator | None = None,
    rows_per_chunk: int = DEFAULT_ROWS_PER_CHUNK,
) -> tuple[dict[str, float], list[dict]]:
    """(metrics, sample rows) of a trained model on dataset.test; see the module docstring."""
    device = next(model.parameters()).device
    x = dataset.test.to(device)
    n = x.shape[0]
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    if isinstance(model, LabelCVAE):
        y = F.one_hot(dataset.test_labels, model.n_classes).float().to(device)
        est = conditional_estimates(lambda rows, k: model(x[rows], y[rows], k, generator), n,
                                    cfg.k_eval, device=device, rows_per_chunk=rows_per_chunk)
        metrics.update(test_ll=float(est.log_likelihood.mean()), test_elbo=float(est.elbo.mean()),
                       rate=float(est.kl.mean()))
    elif isinstance(model, QuadrantCVAE):
        est = conditional_estimates(lambda rows, k: model(x[rows], k, generator), n, cfg.k_eval,
                                    device=device, rows_per_chunk=rows_per_chunk)
        metrics.update(test_cll=float(-est.elbo_mc.mean()),
                       test_cll_is=float(-est.log_likelihood.mean()),
                       rate=float(est.kl.mean()),
                       nn_test_cll=float(nn_cross_entropy(model.baseline, x).mean()))
    else:
        metrics["test_cll"] = float(nn_cross_entropy(model, x).mean())
    if not isinstance(model, LabelCVAE):
        missing = torch.zeros(dataset.dim, dtype=torch.bool)
        missing[model.missing_index.cpu()] = True
        trained_on = split_validation(cfg, dataset).fit.train  # never the held-out images
        metrics["test_cll_marginal"] = float(
            pixel_marginal_cll(trained_on, dataset.test, missing).mean())
    metrics["eval_seconds"] = time.perf_counter() - start
    return metrics, _samples(model, dataset, x, generator)


def _samples(model: Model, dataset: Dataset, x: torch.Tensor,
             generator: torch.Generator | None) -> list[dict]:
    if dataset.image_shape is None:
        return []
    if isinstance(model, LabelCVAE):
        grid = model.class_grid(N_SAMPLE_IMAGES, generator=generator)
        kinds = {f"class {c}": grid[c] for c in range(model.n_classes)}
    else:
        truth = x[:N_SAMPLE_IMAGES]
        grey = torch.full((truth.shape[0], model.n_missing), HIDDEN_GREY, device=x.device)
        kinds = {
            "input (given quadrants)": model.composite(truth, grey),
            "prediction": model.composite(truth, model.predict(truth, generator)),
            "truth": truth,
        }
    return image_rows(kinds, dataset.image_shape)


# ----------------------------------------------------------------------------- entry point
def run(
    cfg: RunConfig,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    on_epoch: OnEpoch | None = None,
    checkpointing: object = None,
    compile: str = "off",
) -> FamilyResult:
    """Train and evaluate a cvae / conditional_nn config (bench.families.train_model).
    `checkpointing` is accepted and unused: these runs are short and restart when retried.
    `compile`: `fit`'s (the evaluation runs eagerly)."""
    fitted = fit(cfg, dataset, device=device, on_epoch=on_epoch, compile=compile)
    metrics, samples = {}, []
    if fitted.status == "finished":
        generator = make_generator(cfg.seed + EVAL_STREAM, torch.device(device))
        metrics, samples = evaluate(fitted.model, cfg, dataset, generator=generator)
        metrics.update(fitted.stage_metrics)
    return FamilyResult(
        status=fitted.status,
        curves=fitted.curves,
        train_seconds=fitted.train_seconds,
        family_metrics=metrics,
        samples=samples,
        diverged_epoch=fitted.diverged_epoch,
        compiled=fitted.compiled,
    )


def _n_classes(dataset: Dataset) -> int:
    return int(torch.cat([dataset.train_labels, dataset.test_labels]).max()) + 1


def _check(cfg: RunConfig, dataset: Dataset) -> None:
    if cfg.model not in ("cvae", "conditional_nn"):
        raise BenchError(f"key 'model' = '{cfg.model}' is not a cvae family model")
    if cfg.condition not in ("label", "quadrants"):
        raise BenchError(f"key 'condition' = '{cfg.condition}' is not 'label' or 'quadrants'")
    if cfg.condition == "quadrants":
        quadrant_masks(dataset.image_shape, cfg.given_quadrants)
