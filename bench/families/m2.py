"""M2, the semi-supervised VAE of Kingma, Rezende, Mohamed & Welling (2014), "Semi-Supervised
Learning with Deep Generative Models" (NIPS; arXiv:1406.5298), section 3.1.2.

Generative model, with y a class (10 of them) that is observed for a few training images only:

    p(y) = 1/10,   p(z) = N(0, I),   p(x | y, z) = Bernoulli(x; decoder([z, onehot(y)]))

Inference model: a classifier q(y | x) = softmax(classifier(x)) and a Gaussian
q(z | x, y) = N(mu, diag sigma^2) with (mu, log sigma^2) = encoder([x, onehot(y)]). Every
network is an MLP with the hidden layers cfg.hidden[0] and softplus units (the authors' code).

Labelled bound (eq. 6), per image with its label:

    -L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]
             = E_q(z|x,y)[log p(x|y,z)] + log(1/10) - KL(q(z|x,y) || N(0, I))

with the expectation a mean over k reparameterised samples (k = 1 in the paper) and the KL in
closed form (cfg.analytic_kl; otherwise the Monte Carlo log p(z) - log q(z|x,y)).

Unlabelled bound (eq. 7), y summed out EXPLICITLY over the 10 classes (one batched tensor of
shape (classes, batch, ...), independent noise per class):

    -U(x) = sum_y q(y|x) (-L(x, y)) + H(q(y|x))

Objective (eq. 9), minimised:

    J^alpha = sum_{labelled} L(x, y) + sum_{unlabelled} U(x) + alpha_paper * E_labelled[-log q(y|x)]

What N is. The paper sets alpha_paper = 0.1 * N, and its section 2 calls N the number of
observations in the data set (x_1..x_N, some labelled), not the number of labels (which Table 1
also calls N). The authors' code (dpkingma/nips14-ssl, learn_yz_x_ss.py) confirms it: each
labelled example's -log q(y|x) is weighted by 0.1 * n_total / n_labelled, i.e. 0.1 * N times the
MEAN over the labelled set. Here N = the training set size (all of it is the unlabelled set, as
in the paper; the authors' code leaves the labelled images out of it, at most 3000 of 50,000),
cfg.alpha = 0.1 is the factor in front of N, and the classification term of J^alpha is

    alpha * N * mean_{labelled}[-log q(y|x)]   (= alpha * N / N_l per labelled example).

Divided by N (the loss below), that is alpha * mean_{labelled}[-log q(y|x)] beside the MEAN
per-image bound: the paper's rule fixes the classification term at 0.1 relative to the mean
bound, whatever the data set size. A budget that trains on fewer images (train_size) keeps
alpha = 0.1; raising alpha so that alpha * N stays at 0.1 * 50,000 (the paper's absolute
weight) is not the paper's rule but a 50,000 / N times stronger classifier term.

Minibatch loss. Each step takes B_u unlabelled images (an epoch is one pass over the training
set in a fresh random order) and B_l = min(batch_size, N_l) labelled images cycled from the
labelled set (a fresh permutation whenever it runs out). Scaling each sum up to its data set
gives an unbiased estimate of J^alpha; the loss is that estimate divided by N:

    loss = mean_{B_u} U(x) + (N_l / N) * mean_{B_l} L(x, y) + alpha * mean_{B_l}[-log q(y|x)]

so the labelled and unlabelled terms keep the paper's relative weight whatever the batch sizes
(the authors' code, with n_minibatches batches of both sets, computes the same estimate).
The reported train bound is the epoch's mean of -loss (nats per training image).
Inputs are binarized per minibatch (`binarize_dynamic`); the test set is binarized once.

Supervised-only baseline (config model = "classifier"): what M2 would score without the
unlabelled images. The SAME network q(y|x) (the classifier of the M2 that `build_m2` builds
for the config, so the same initial weights), the same class-balanced labelled subset (the
same seed stream), the same optimiser (`make_optimizer`, `loss_scale`; over the classifier's
parameters only), the same labelled minibatch size B_l = min(batch_size, N_l) drawn the same
way (cycled, dynamically binarized), and the same number of optimisation steps as the M2 run
of the config: one per unlabelled minibatch, i.e. cfg.epochs * ceil(N / batch_size), with the
same learning-rate schedule. Its loss is mean_{B_l}[-log q(y|x)] alone (the sum, times B_l,
for burda_adam). Metrics: test_error and train_labelled_error as M2's, and train_steps (also
stored by M2); no unlabelled bound and no analogies (it has no generative model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.compiler import compile_fresh, compile_options
from bench.config import RunConfig
from bench.data import Dataset, binarize_dynamic
from bench.errors import BenchError
from bench.families import FamilyResult
from bench.families.compiling import should_compile
from bench.loop import EVAL_STREAM, TRAIN_STREAM, EpochRecord, make_generator, train_epochs
from bench.metrics.blur import image_rows
from bench.models.fastmath import bernoulli_log_prob
from bench.models.init import init_authors
from bench.models.posteriors import LOG_2PI, mlp
from bench.optim import loss_scale, make_optimizer

N_CLASSES = 10
N_ANALOGIES = 10  # test images shown (columns), each decoded under every class (rows)
_LABELLED_STREAM = 2_000_029  # seed offset of the labelled-subset draw (independent of device)
# samples x classes x examples in one evaluation pass: bounds memory whatever k_eval is
_EVAL_ROWS_PER_CHUNK = 40_000


# --------------------------------------------------------------------------- the model
def _softplus_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with softplus between them (none after the last)."""
    return mlp(sizes, nn.Softplus)


class _ConcatInput(nn.Module):
    """The first layer of an MLP on [v, onehot(y)]: one Linear(n_v + classes, width).

    Computed as W_v v + b + W_y[:, y] (the same numbers as the matmul with the concatenation),
    so that the part that depends on v is computed once and shared by all 10 classes."""

    def __init__(self, n_v: int, n_classes: int, width: int):
        super().__init__()
        self.n_v = n_v
        self.linear = nn.Linear(n_v + n_classes, width)

    def forward(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """v (..., n_v) and integer labels y broadcastable to v's batch shape -> (..., width)."""
        weight = self.linear.weight
        by_class = weight[:, self.n_v :].t()  # (classes, width): W_y onehot(c) for each c
        return F.linear(v, weight[:, : self.n_v], self.linear.bias) + by_class[y]


class M2(nn.Module):
    """Classifier q(y|x), Gaussian encoder q(z|x,y), Bernoulli decoder p(x|y,z)."""

    def __init__(self, n_data: int, hidden: tuple[int, ...], latent: int,
                 n_classes: int = N_CLASSES, analytic_kl: bool = True):
        super().__init__()
        if not hidden:
            raise ValueError("M2 needs at least one hidden layer")
        self.n_data, self.latent, self.n_classes = n_data, latent, n_classes
        self.analytic_kl = analytic_kl
        self.classifier = _softplus_mlp([n_data, *hidden, n_classes])
        self.encoder_in = _ConcatInput(n_data, n_classes, hidden[0])
        self.encoder_out = _softplus_mlp([*hidden, 2 * latent])  # -> [mean | log variance]
        self.decoder_in = _ConcatInput(latent, n_classes, hidden[0])
        self.decoder_out = _softplus_mlp([*hidden, n_data])  # -> Bernoulli logits

    # ----------------------------------------------------------------- pieces
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y|x), (B, classes); log q(y|x) = log_softmax of them."""
        return self.classifier(x)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log variance) of q(z|x,y), shape (*y.shape, latent) for x (B, D) and labels
        y of shape (B,) or (classes, B)."""
        h = F.softplus(self.encoder_in(x, y))
        return self.encoder_out(h).chunk(2, dim=-1)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x|y,z) for z (..., latent) and labels y broadcastable to it."""
        return self.decoder_out(F.softplus(self.decoder_in(z, y)))

    def noise(self, shape: tuple[int, ...], k: int, generator: torch.Generator | None,
              like: torch.Tensor) -> torch.Tensor:
        """Standard normal reparameterisation noise of shape (k, *shape, latent)."""
        return torch.randn((k, *shape, self.latent), generator=generator, device=like.device,
                           dtype=like.dtype)

    def _bound_given(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """-L(x, y) for labels y of shape (B,) or (classes, B) and noise eps (k, *y.shape, d)."""
        mean, logvar = self.encode(x, y)
        std = torch.exp(0.5 * logvar)
        z = mean + std * eps  # (k, *y.shape, d)
        logits = self.decode(z, y)
        log_px = bernoulli_log_prob(logits, x).mean(0)
        if self.analytic_kl:
            kl = 0.5 * (mean**2 + std**2 - 1.0 - logvar).sum(-1)
        else:  # E_q[log q(z|x,y) - log p(z)], the same k samples
            log_q = -0.5 * (eps**2 + logvar + LOG_2PI).sum(-1)
            log_p = -0.5 * (z**2 + LOG_2PI).sum(-1)
            kl = (log_q - log_p).mean(0)
        return log_px - math.log(self.n_classes) - kl

    # ----------------------------------------------------------------- bounds
    def labelled_bound(self, x: torch.Tensor, y: torch.Tensor, *, k: int = 1,
                       generator: torch.Generator | None = None,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        """-L(x, y) per example, (B,) nats: the ELBO of log p(x, y). eps (k, B, latent) fixes
        the noise; otherwise k samples are drawn from `generator`."""
        if eps is None:
            eps = self.noise(tuple(y.shape), k, generator, x)
        return self._bound_given(x, y, eps)

    def unlabelled_bound(self, x: torch.Tensor, *, k: int = 1,
                         generator: torch.Generator | None = None,
                         eps: torch.Tensor | None = None,
                         logits: torch.Tensor | None = None) -> torch.Tensor:
        """-U(x) = sum_y q(y|x) (-L(x,y)) + H(q(y|x)) per example, (B,) nats, the 10 classes
        as one batched tensor. eps (k, classes, B, latent): the noise of class c is eps[:, c].
        `logits` of q(y|x), if the caller already has them."""
        n = x.shape[0]
        y = torch.arange(self.n_classes, device=x.device).unsqueeze(1).expand(-1, n)
        if eps is None:
            eps = self.noise((self.n_classes, n), k, generator, x)
        bounds = self._bound_given(x, y, eps)  # (classes, B)
        log_q = torch.log_softmax(self.classify(x) if logits is None else logits, dim=-1).t()
        q = log_q.exp()
        return (q * (bounds - log_q)).sum(0)  # sum_y q (-L) + H(q)


def build_m2(cfg: RunConfig, n_data: int, pixel_mean: torch.Tensor | None = None) -> M2:
    """The M2 a config describes, weights initialised from cfg.seed by cfg.init without
    touching the caller's global RNG (authors: the decoder's output bias is the logit of
    `pixel_mean`, the training pixel means, when given)."""
    if len(cfg.latent) != 1 or len(cfg.hidden) != 1:
        raise BenchError(f"model 'm2' has one stochastic layer: keys 'hidden' and 'latent' need "
                         f"one entry each, got {len(cfg.hidden)} and {len(cfg.latent)}")
    if not cfg.hidden[0]:
        raise BenchError("model 'm2' needs key 'hidden' = [[sizes]] with at least one size")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = M2(n_data, cfg.hidden[0], cfg.latent[0], analytic_kl=cfg.analytic_kl)
        if cfg.init == "authors":
            init_authors(model, model.decoder_out[-1], pixel_mean)
        return model


# --------------------------------------------------------------------------- the objective
@dataclass
class M2Loss:
    """One minibatch's loss = J^alpha-estimate / N, and its parts (means over the batches)."""

    loss: torch.Tensor  # 0-d: unlabelled + (N_l / N) * labelled + alpha * classification
    unlabelled: torch.Tensor  # 0-d: mean U(x) over the unlabelled batch, nats
    labelled: torch.Tensor  # 0-d: mean L(x, y) over the labelled batch, nats
    classification: torch.Tensor  # 0-d: mean -log q(y|x) over the labelled batch, nats


def semi_supervised_loss(model: M2, x_u: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor, *,
                         n_total: int, n_labelled: int, alpha: float, k: int = 1,
                         generator: torch.Generator | None = None,
                         noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> M2Loss:
    """The minibatch estimate of J^alpha / N (module docstring) for an unlabelled batch x_u
    from the N = n_total training images and a labelled batch (x_l, y_l) from the n_labelled
    labelled ones. The noise of the unlabelled batch is drawn first, then the labelled one's;
    `noise` (`draw_loss_noise`'s, as the trainer's step passes it) replaces those draws."""
    eps_u, eps_l = (None, None) if noise is None else noise
    unlabelled = -model.unlabelled_bound(x_u, k=k, generator=generator, eps=eps_u).mean()
    labelled = -model.labelled_bound(x_l, y_l, k=k, generator=generator, eps=eps_l).mean()
    classification = F.cross_entropy(model.classify(x_l), y_l)
    loss = unlabelled + (n_labelled / n_total) * labelled + alpha * classification
    return M2Loss(loss, unlabelled, labelled, classification)


# --------------------------------------------------------------------------- data
def draw_loss_noise(model: M2, x_u: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor,
                    k: int, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise `semi_supervised_loss` would draw from `generator`, drawn now in its order:
    the unlabelled batch's (k, classes, B_u, latent), then the labelled one's (k, B_l, latent)."""
    eps_u = model.noise((model.n_classes, x_u.shape[0]), k, generator, x_u)
    return eps_u, model.noise(tuple(y_l.shape), k, generator, x_l)


def balanced_labelled_subset(labels: torch.Tensor, n: int,
                             generator: torch.Generator) -> torch.Tensor:
    """Indices (sorted, int64, on labels' device) of n training examples, n / 10 of each class,
    drawn without replacement with `generator` (a CPU generator). A class with fewer than
    n / 10 examples is a BenchError naming `labelled`."""
    if n < N_CLASSES or n % N_CLASSES:
        raise BenchError(f"key 'labelled' must be a positive multiple of {N_CLASSES} "
                         f"(class-balanced), got {n}")
    labels_cpu = labels.detach().to("cpu", torch.int64)
    if labels_cpu.numel() and not 0 <= int(labels_cpu.min()) <= int(labels_cpu.max()) < N_CLASSES:
        raise BenchError(f"model 'm2' needs labels 0..{N_CLASSES - 1}")
    per_class = n // N_CLASSES
    counts = torch.bincount(labels_cpu, minlength=N_CLASSES)
    short = [c for c in range(N_CLASSES) if counts[c] < per_class]
    if short:
        c = short[0]
        raise BenchError(f"key 'labelled' = {n} needs {per_class} examples of each class, but "
                         f"class {c} has {int(counts[c])} in the {labels_cpu.numel()} training "
                         f"examples")
    chosen = []
    for c in range(N_CLASSES):
        members = torch.nonzero(labels_cpu == c).squeeze(1)
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:per_class]])
    return torch.sort(torch.cat(chosen)).values.to(labels.device)


class _Cycler:
    """Batches of positions 0..n-1 in random order, a fresh permutation whenever one runs out;
    on the device, with no host synchronisation."""

    def __init__(self, n: int, batch: int, generator: torch.Generator, device: torch.device):
        self.n, self.batch, self.generator, self.device = n, batch, generator, device
        self.order = torch.empty(0, dtype=torch.int64, device=device)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.order.numel() - self.pos < self.batch:
            fresh = torch.randperm(self.n, generator=self.generator, device=self.device)
            self.order, self.pos = torch.cat([self.order[self.pos :], fresh]), 0
        out = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return out


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def error_percent(model: M2, x: torch.Tensor, labels: torch.Tensor, batch: int = 10_000) -> float:
    """% of x misclassified by argmax q(y|x)."""
    wrong = torch.zeros((), dtype=torch.int64, device=x.device)
    for lo in range(0, x.shape[0], batch):
        pred = model.classify(x[lo : lo + batch]).argmax(-1)
        wrong += (pred != labels[lo : lo + batch]).sum()
    return 100.0 * float(wrong) / x.shape[0]


@torch.no_grad()
def mean_unlabelled_bound(model: M2, x: torch.Tensor, k: int,
                          generator: torch.Generator | None = None,
                          rows_per_chunk: int = _EVAL_ROWS_PER_CHUNK) -> float:
    """Mean over x of -U(x) with k samples of z per class term, nats. -U is linear in each
    class's sample mean of log p(x|y,z), so chunks of k_c samples combine as weights k_c / k;
    the sum is taken in float64."""
    batch = max(1, min(x.shape[0], rows_per_chunk // (N_CLASSES * min(k, rows_per_chunk))))
    k_chunk = max(1, rows_per_chunk // (N_CLASSES * batch))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for lo in range(0, x.shape[0], batch):
        xb = x[lo : lo + batch]
        logits = model.classify(xb)
        done = 0
        while done < k:
            kc = min(k_chunk, k - done)
            bound = model.unlabelled_bound(xb, k=kc, generator=generator, logits=logits)
            total += bound.double().sum() * (kc / k)
            done += kc
    return float(total) / x.shape[0]


@torch.no_grad()
def analogy_records(model: M2, dataset: Dataset, device: torch.device,
                    n: int = N_ANALOGIES) -> list[dict]:
    """The paper's analogies (its Figure 1): the first n test images, then for each class c
    the decoder mean of p(x | y = c, z) with z = the mean of q(z | x, argmax q(y|x)), the same
    z in every row of a column."""
    if dataset.image_shape is None:
        return []
    x = dataset.test[:n].to(device)
    y_pred = model.classify(x).argmax(-1)
    z, _ = model.encode(x, y_pred)  # (n, d)
    classes = torch.arange(N_CLASSES, device=device).unsqueeze(1).expand(-1, x.shape[0])
    means = torch.sigmoid(model.decode(z.unsqueeze(0).expand(N_CLASSES, -1, -1), classes))
    kinds = {"test image": x, **{f"y = {c}": means[c] for c in range(N_CLASSES)}}
    return image_rows(kinds, dataset.image_shape)


# --------------------------------------------------------------------------- training
def _check(cfg: RunConfig) -> None:
    if cfg.objective != "vae" or cfg.beta != 1.0:
        raise BenchError("model 'm2' trains the paper's bounds: it needs objective 'vae' and "
                         f"beta 1 (got objective '{cfg.objective}', beta {cfg.beta:g})")


def _labelled_data(cfg: RunConfig, dataset: Dataset, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(training images, labelled images, their labels) on `device`: the cfg.labelled
    class-balanced images drawn from the seed's own stream, the same for M2 and the
    supervised-only classifier of one config."""
    labelled_idx = balanced_labelled_subset(
        dataset.train_labels, cfg.labelled, make_generator(cfg.seed + _LABELLED_STREAM, "cpu"))
    x_train = dataset.train.to(device)
    x_lab = x_train[labelled_idx.to(device)]
    y_lab = dataset.train_labels[labelled_idx].to(device)
    return x_train, x_lab, y_lab


def run(cfg: RunConfig, dataset: Dataset, *, device: torch.device | str = "cpu",
        on_epoch: Callable[[EpochRecord, int], None] | None = None,
        checkpointing: object = None, compile: str = "off") -> FamilyResult:
    """Train M2 on `dataset` (labels of cfg.labelled balanced training images, the rest used
    unlabelled), then evaluate: test error of argmax q(y|x), mean test -U(x) at cfg.k_eval,
    error on the labelled subset, and the analogy images. Model "classifier": the
    supervised-only baseline instead (`run_classifier`). `checkpointing` is accepted and
    unused: these runs are short and restart when retried. `compile` (auto, on, off;
    bench.families.compiling): the loss and its backward as one torch.compile'd graph, Adam
    fused; eager or compiled, the step draws its noise beforehand, in the order the loss
    would draw it (`draw_loss_noise`)."""
    if cfg.model == "classifier":
        return run_classifier(cfg, dataset, device=device, on_epoch=on_epoch)
    _check(cfg)
    device = torch.device(device)
    x_train, x_lab, y_lab = _labelled_data(cfg, dataset, device)
    n = x_train.shape[0]
    n_lab = x_lab.shape[0]
    model = build_m2(cfg, dataset.dim, dataset.pixel_mean).to(device)
    compiled = should_compile(cfg, n, device, compile)
    optimizer = make_optimizer(model, cfg, fused=compiled)
    generator = make_generator(cfg.seed + TRAIN_STREAM, device)
    labelled_batches = _Cycler(n_lab, min(cfg.batch_size, n_lab), generator, device)
    epoch_lrs = cfg.epoch_lrs()

    curves: list[EpochRecord] = []
    start = time.perf_counter()
    steps = 0

    def loss_of(x_u, x_l, y_l, noise) -> torch.Tensor:
        return semi_supervised_loss(model, x_u, x_l, y_l, n_total=n, n_labelled=n_lab,
                                    alpha=cfg.alpha, noise=noise).loss  # k: the noise's axis 0

    if compiled:
        loss_of = compile_fresh(loss_of, compile_options(device))

    def step(rows: torch.Tensor) -> torch.Tensor:
        nonlocal steps
        x_u = x_train[rows]
        pick = labelled_batches.next()
        x_l, y_l = x_lab[pick], y_lab[pick]
        if dataset.binarized:
            x_u, x_l = binarize_dynamic(x_u, generator), binarize_dynamic(x_l, generator)
        noise = draw_loss_noise(model, x_u, x_l, y_l, cfg.k, generator)  # the eager order
        if compiled and device.type == "cuda":  # a new iteration of the CUDA graph
            torch.compiler.cudagraph_mark_step_begin()
        loss = loss_of(x_u, x_l, y_l, noise)
        optimizer.zero_grad(set_to_none=True)
        (loss * loss_scale(cfg, rows.shape[0])).backward()
        optimizer.step()
        steps += 1
        return loss.detach()

    diverged_epoch = train_epochs(epoch_lrs, step, n=n, batch_size=cfg.batch_size,
                                  optimizer=optimizer, generator=generator, curves=curves,
                                  start=start, on_epoch=on_epoch)
    status = "finished" if diverged_epoch is None else "diverged"
    train_seconds = time.perf_counter() - start

    metrics: dict = {}
    samples: list[dict] = []
    if status == "finished":
        eval_start = time.perf_counter()
        model.eval()
        eval_generator = make_generator(cfg.seed + EVAL_STREAM, device)
        x_test = dataset.test.to(device)
        y_test = dataset.test_labels.to(device)
        x_lab_eval = binarize_dynamic(x_lab, eval_generator) if dataset.binarized else x_lab
        metrics = {
            "test_error": error_percent(model, x_test, y_test),
            "test_unlabelled_bound": mean_unlabelled_bound(model, x_test, cfg.k_eval,
                                                           generator=eval_generator),
            "train_labelled_error": error_percent(model, x_lab_eval, y_lab),
            "train_steps": steps,
        }
        samples = analogy_records(model, dataset, device)
        metrics["eval_seconds"] = time.perf_counter() - eval_start
    return FamilyResult(status=status, curves=curves, train_seconds=train_seconds,
                        family_metrics=metrics, samples=samples, diverged_epoch=diverged_epoch,
                        compiled=compiled)


def run_classifier(cfg: RunConfig, dataset: Dataset, *, device: torch.device | str = "cpu",
                   on_epoch: Callable[[EpochRecord, int], None] | None = None) -> FamilyResult:
    """The supervised-only baseline of the M2 run of the same config (module docstring):
    M2's classifier trained on the labelled cross-entropy alone, with the same initial
    weights, labelled subset, optimiser, labelled batch size and number of steps. An epoch is
    M2's epoch: ceil(N / batch_size) steps (the unlabelled images only set the count)."""
    device = torch.device(device)
    x_train, x_lab, y_lab = _labelled_data(cfg, dataset, device)
    n = x_train.shape[0]
    n_lab = x_lab.shape[0]
    model = build_m2(cfg, dataset.dim, dataset.pixel_mean).to(device)  # M2's initial weights
    optimizer = make_optimizer(model.classifier, cfg)  # only q(y|x) is trained
    generator = make_generator(cfg.seed + TRAIN_STREAM, device)
    batch_l = min(cfg.batch_size, n_lab)
    labelled_batches = _Cycler(n_lab, batch_l, generator, device)
    epoch_lrs = cfg.epoch_lrs()

    curves: list[EpochRecord] = []
    start = time.perf_counter()
    steps = 0

    def step(rows: torch.Tensor) -> torch.Tensor:  # one step per M2 unlabelled minibatch
        nonlocal steps
        pick = labelled_batches.next()
        x_l, y_l = x_lab[pick], y_lab[pick]
        if dataset.binarized:
            x_l = binarize_dynamic(x_l, generator)
        loss = F.cross_entropy(model.classify(x_l), y_l)
        optimizer.zero_grad(set_to_none=True)
        (loss * loss_scale(cfg, batch_l)).backward()
        optimizer.step()
        steps += 1
        return loss.detach()

    diverged_epoch = train_epochs(epoch_lrs, step, n=n, batch_size=cfg.batch_size,
                                  optimizer=optimizer, generator=generator, curves=curves,
                                  start=start, on_epoch=on_epoch)
    status = "finished" if diverged_epoch is None else "diverged"
    train_seconds = time.perf_counter() - start

    metrics: dict = {}
    if status == "finished":
        eval_start = time.perf_counter()
        model.eval()
        eval_generator = make_generator(cfg.seed + EVAL_STREAM, device)
        # the same binarized labelled images as M2's evaluation (the first draw of the stream)
        x_lab_eval = binarize_dynamic(x_lab, eval_generator) if dataset.binarized else x_lab
        metrics = {
            "test_error": error_percent(model, dataset.test.to(device),
                                        dataset.test_labels.to(device)),
            "train_labelled_error": error_percent(model, x_lab_eval, y_lab),
            "train_steps": steps,
            "eval_seconds": time.perf_counter() - eval_start,
        }
    return FamilyResult(status=status, curves=curves, train_seconds=train_seconds,
                        family_metrics=metrics, diverged_epoch=diverged_epoch)
