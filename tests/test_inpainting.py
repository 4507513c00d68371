"""Inpainting: masks, leak-free imputation, exact scores, and input-dropout training.

The exact answer: a decoder whose last layer ignores z (zero weights, bias b) has
p(x_m | z) = prod_{d missing} Bernoulli(x_d; sigmoid(b_d)) for every z, so the imputation nll
must equal that cross-entropy exactly, and the error the share of missing pixels where
[sigmoid(b_d) > 0.5] differs from x_d.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import bench.families.lvm
import bench.loop
from bench.config import RunConfig
from bench.data import binarize_dynamic, load_dataset
from bench.errors import BenchError
from bench.families.lvm import train
from bench.loop import make_generator
from bench.metrics.catalog import MACHINE_METRICS
from bench.metrics.imputation import (
    MASK_LABELS,
    MASKS,
    METHOD_LABELS,
    METHODS,
    N_SAMPLE_IMAGES,
    SAMPLE_MASKS,
    evaluate_inpainting,
    hide,
    impute,
    make_mask,
    score,
)
from bench.models import build_model
from bench.objectives import objective_for
from bench.optim import make_optimizer

QUICK = dict(dataset="digits", train_size=300, test_size=100, epochs=2, k_eval=20,
             hidden=((32,),), latent=(8,))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=300, test_size=100)


@pytest.fixture(scope="module")
def model(digits):
    """An untrained small model: imputation's contracts hold for any weights."""
    return build_model(RunConfig(**QUICK), digits.dim).eval()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("shape", [(8, 8), (5, 7), (28, 28)])
def test_random_masks_hide_exactly_round_f_d_pixels_per_image_deterministically(shape):
    d = shape[0] * shape[1]
    for name, fraction in (("rand25", 0.25), ("rand50", 0.5), ("rand75", 0.75)):
        mask = make_mask(name, 30, shape)
        assert mask.shape == (30, d) and mask.dtype == torch.bool
        assert mask.sum(1).tolist() == [round(fraction * d)] * 30
        assert len({tuple(row.tolist()) for row in mask}) == 30  # each image its own mask
        assert torch.equal(mask, make_mask(name, 30, shape))  # same seed, same masks
        assert torch.equal(mask[:7], make_mask(name, 7, shape))  # a prefix keeps its masks
        assert not torch.equal(mask, make_mask(name, 30, shape, seed=1))


def test_top_half_and_quadrant_masks_have_their_geometry():
    top = make_mask("top_half", 3, (8, 8)).reshape(3, 8, 8)
    assert top[:, :4].all() and not top[:, 4:].any()
    quad = make_mask("quadrant", 3, (8, 8)).reshape(3, 8, 8)
    assert quad[:, :4, :4].all() and quad.sum().item() == 3 * 16
    # odd sides: rows r < h/2 and columns c < w/2
    top = make_mask("top_half", 2, (5, 7)).reshape(2, 5, 7)
    assert top[:, :3].all() and not top[:, 3:].any()
    quad = make_mask("quadrant", 2, (5, 7)).reshape(2, 5, 7)
    assert quad[:, :3, :4].all() and quad.sum().item() == 2 * 12
    assert make_mask("quadrant", 1, (28, 28)).sum().item() == 14 * 14
    with pytest.raises(ValueError, match="unknown mask"):
        make_mask("bottom_half", 2, (8, 8))


# ------------------------------------------------------------------------- no leaks
def test_the_encoder_sees_zeros_at_hidden_pixels_and_observed_pixels_unchanged(model, digits):
    x = digits.test[:20]
    mask = make_mask("rand50", 20, digits.image_shape)
    assert x[mask].sum() > 0  # some hidden pixels are 1: a leak would show
    seen: list[torch.Tensor] = []
    handle = model.encoders[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        impute(model, x, mask, "onepass", generator=gen())
        impute(model, x, mask, "iterative", rounds=4, generator=gen())
        impute(model, x, mask, "matched", rounds=3, generator=gen(), dropout=0.5)
    finally:
        handle.remove()
    assert len(seen) == 1 + 4 + 3
    matched = seen[5:]
    seen = seen[:5]
    for h in (seen[0], seen[1], matched[0]):  # one-pass and each chain's first round
        assert torch.equal(h, hide(x, mask))
        assert (h[mask] == 0).all() and torch.equal(h[~mask], x[~mask])
    for h in seen[2:]:  # later rounds: S chains of (B, D) states
        states = h.reshape(-1, *x.shape)
        assert torch.equal(states[:, ~mask], x[~mask].expand(states.shape[0], -1))
        assert ((states == 0) | (states == 1)).all()
    for h in matched[1:]:  # matched, later rounds: observed pixels kept or dropped, never 1 - x
        states = h.reshape(-1, *x.shape)
        observed = x[~mask].expand(states.shape[0], -1)
        assert ((states[:, ~mask] == observed) | (states[:, ~mask] == 0)).all()
        assert ((states == 0) | (states == 1)).all()


@pytest.mark.parametrize("method", METHODS)
def test_imputation_and_scores_are_identical_whatever_the_hidden_pixels_hold(
    model, digits, method
):
    x = digits.test[:25]
    for name in MASKS:
        mask = make_mask(name, 25, digits.image_shape)
        changed = torch.where(mask, 1.0 - x, x)  # every hidden pixel flipped
        logits = impute(model, x, mask, method, rounds=3, generator=gen(4), dropout=0.5)
        logits_changed = impute(model, changed, mask, method, rounds=3, generator=gen(4),
                                dropout=0.5)
        assert torch.equal(logits, logits_changed)
        for a, b in zip(score(logits, x, mask), score(logits_changed, x, mask), strict=True):
            assert torch.equal(a, b)
    # control: changing an OBSERVED pixel does change the result
    mask = make_mask("top_half", 25, digits.image_shape)
    observed = x.clone()
    observed[:, -1] = 1.0 - observed[:, -1]
    assert not torch.equal(impute(model, x, mask, method, generator=gen(4), dropout=0.5),
                           impute(model, observed, mask, method, generator=gen(4), dropout=0.5))


# ------------------------------------------------------------------------- methods
def test_iterative_with_one_round_is_one_pass_and_more_rounds_differ(model, digits):
    x = digits.test[:30]
    mask = make_mask("rand75", 30, digits.image_shape)
    one_pass = impute(model, x, mask, "onepass", generator=gen(7))
    assert one_pass.shape == (10, 30, digits.dim)
    assert torch.equal(impute(model, x, mask, "iterative", rounds=1, generator=gen(7)), one_pass)
    assert not torch.equal(impute(model, x, mask, "iterative", rounds=3, generator=gen(7)),
                           one_pass)
    with pytest.raises(ValueError, match="rounds"):
        impute(model, x, mask, "iterative", rounds=0)


def test_matched_chain_drops_about_p_of_the_encoders_input_in_every_later_round(model, digits):
    """The realistic bug is a matched chain that forgets the dropout and so IS the iterative
    chain: with p > 0 every round after the first must show the encoder about p of the chain's
    pixels zeroed (observed ones included), and the result must differ from iterative."""
    x = digits.test[:40]
    mask = make_mask("rand50", 40, digits.image_shape)
    seen: list[torch.Tensor] = []
    handle = model.encoders[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        matched = impute(model, x, mask, "matched", rounds=5, generator=gen(9), dropout=0.5)
        seen_matched, seen[:] = list(seen), []
        iterative = impute(model, x, mask, "iterative", rounds=5, generator=gen(9))
        seen_iterative = list(seen)
    finally:
        handle.remove()
    assert len(seen_matched) == len(seen_iterative) == 5
    assert torch.equal(seen_matched[0], hide(x, mask))  # round 1: the shared one-pass start
    ones = (x == 1) & ~mask  # observed ink: 1 in every chain's state
    for t, (h_m, h_i) in enumerate(zip(seen_matched[1:], seen_iterative[1:], strict=True)):
        states_m = h_m.reshape(-1, *x.shape)
        states_i = h_i.reshape(-1, *x.shape)
        assert (states_i[:, ones] == 1).all(), t  # iterative: no dropout
        dropped = (states_m[:, ones] == 0).double().mean().item()
        assert dropped == pytest.approx(0.5, abs=0.05), t  # matched: about p, each round
    assert not torch.equal(matched, iterative)
    # a different p drops a different share
    seen.clear()
    handle = model.encoders[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        impute(model, x, mask, "matched", rounds=2, generator=gen(9), dropout=0.2)
    finally:
        handle.remove()
    states = seen[1].reshape(-1, *x.shape)
    assert (states[:, ones] == 0).double().mean().item() == pytest.approx(0.2, abs=0.05)


def test_matched_chain_with_p_zero_is_the_iterative_chain_and_one_round_is_one_pass(
    model, digits
):
    x = digits.test[:30]
    mask = make_mask("top_half", 30, digits.image_shape)
    iterative = impute(model, x, mask, "iterative", rounds=4, generator=gen(2))
    assert torch.equal(impute(model, x, mask, "matched", rounds=4, generator=gen(2)), iterative)
    assert torch.equal(
        impute(model, x, mask, "matched", rounds=4, generator=gen(2), dropout=0.0), iterative)
    # the other methods ignore dropout
    assert torch.equal(
        impute(model, x, mask, "iterative", rounds=4, generator=gen(2), dropout=0.5), iterative)
    one_pass = impute(model, x, mask, "onepass", generator=gen(2))
    assert torch.equal(
        impute(model, x, mask, "matched", rounds=1, generator=gen(2), dropout=0.5), one_pass)
    with pytest.raises(ValueError, match="dropout"):
        impute(model, x, mask, "matched", dropout=1.0)


# The one-pass and iterative scores of the untrained QUICK model with generator seed 0 and 4
# chunks of 30 images, as computed before the matched chain existed: adding a method must not
# move them. Refresh only for a change that is MEANT to move them (masks, draws, model init).
PINNED_NLL = {
    "rand25": (11.164209661191173, 11.183383825227251),
    "rand50": (22.39173173925949, 22.405374874975383),
    "rand75": (33.483642341198376, 33.632247930240865),
    "top_half": (22.116423789093634, 22.388595881958985),
    "quadrant": (11.174731090829232, 11.186182296435723),
}
PINNED_ERROR = {
    "rand25": (49.3125, 49.6875),
    "rand50": (48.4375, 49.5),
    "rand75": (50.4375, 50.791666666666664),
    "top_half": (47.78125, 52.28125),
    "quadrant": (48.3125, 51.1875),
}


def test_the_matched_chain_moves_no_number_of_the_other_two_chains(model, digits):
    by_p = {p: evaluate_inpainting(model, digits, generator=gen(0), input_dropout=p,
                                   rows_per_chunk=300)[0] for p in (0.0, 0.5)}
    for name in MASKS:
        for i, method in enumerate(("onepass", "iterative")):
            key = f"inpaint_{name}_{method}"
            for metrics in by_p.values():
                assert metrics[f"{key}_nll"] == pytest.approx(PINNED_NLL[name][i], rel=1e-9)
                assert metrics[f"{key}_error"] == pytest.approx(PINNED_ERROR[name][i],
                                                                rel=1e-9)
            assert by_p[0.0][f"{key}_nll"] == by_p[0.5][f"{key}_nll"]  # bit for bit
        # p = 0: the matched scores are the iterative chain's; p > 0: its own
        for s in ("nll", "error"):
            assert (by_p[0.0][f"inpaint_{name}_matched_{s}"]
                    == by_p[0.0][f"inpaint_{name}_iterative_{s}"])
        assert (by_p[0.5][f"inpaint_{name}_matched_nll"]
                != by_p[0.5][f"inpaint_{name}_iterative_nll"])
    # control: the pins can fail (another generator seed moves every one of them)
    other = evaluate_inpainting(model, digits, generator=gen(1), rows_per_chunk=300)[0]
    for name in MASKS:
        assert other[f"inpaint_{name}_onepass_nll"] != pytest.approx(PINNED_NLL[name][0],
                                                                      rel=1e-6)


def test_score_is_the_log_mean_exp_over_samples_of_the_missing_pixels_likelihood():
    g = gen(3)
    logits = 3 * torch.randn(4, 5, 6, generator=g, dtype=torch.float64)  # S=4, B=5, D=6
    x = (torch.rand(5, 6, generator=g) < 0.5).double()
    mask = torch.rand(5, 6, generator=g) < 0.5
    nll, wrong = score(logits, x, mask)
    p = torch.sigmoid(logits)
    for b in range(5):
        likelihoods = []
        for s in range(4):
            terms = [p[s, b, d] if x[b, d] == 1 else 1 - p[s, b, d]
                     for d in range(6) if mask[b, d]]
            likelihoods.append(math.prod(float(t) for t in terms))
        assert nll[b].item() == pytest.approx(-math.log(sum(likelihoods) / 4), rel=1e-9)
        mean = p[:, b].mean(0)
        assert wrong[b].item() == sum(
            int((mean[d] > 0.5) != (x[b, d] == 1)) for d in range(6) if mask[b, d]
        )


def test_nll_of_a_decoder_that_ignores_z_is_the_exact_bernoulli_cross_entropy(digits):
    model = build_model(RunConfig(**QUICK), digits.dim).eval()
    bias = 2.0 * torch.randn(digits.dim, generator=gen(11))
    with torch.no_grad():
        model.decoder.net[-1].weight.zero_()
        model.decoder.net[-1].bias.copy_(bias)
    b = bias.double()
    log_p1, log_p0 = torch.nn.functional.logsigmoid(b), torch.nn.functional.logsigmoid(-b)
    x = digits.test.double()
    n = x.shape[0]
    # rows_per_chunk = 10 samples x 7 images: 15 chunks, so aggregation over chunks counts
    metrics, rows = evaluate_inpainting(model, digits, generator=gen(), rows_per_chunk=70,
                                        input_dropout=0.5)
    for name in MASKS:
        mask = make_mask(name, n, digits.image_shape)
        cross_entropy = -torch.where(mask, x * log_p1 + (1 - x) * log_p0, 0.0).sum(1)
        wrong = (((b > 0) != (x == 1)) & mask).sum()
        for method in METHODS:
            key = f"inpaint_{name}_{method}"
            assert metrics[f"{key}_nll"] == pytest.approx(cross_entropy.mean().item(), rel=1e-6)
            assert metrics[f"{key}_error"] == pytest.approx(100 * wrong.item() / mask.sum().item())
    # the shown images (8, gathered over two chunks) are the composites of sigmoid(b)
    mask = make_mask("quadrant", N_SAMPLE_IMAGES, digits.image_shape)
    expected = torch.where(mask, torch.sigmoid(bias), digits.test[:N_SAMPLE_IMAGES])
    for what in METHOD_LABELS.values():
        shown = [r["pixels"] for r in rows if r["kind"] == f"{what}: quadrant"]
        assert torch.allclose(torch.tensor(shown), expected, atol=1e-6)


def test_inpainting_needs_binarized_images(model, digits):
    with pytest.raises(BenchError, match="eval_inpainting"):
        evaluate_inpainting(model, dataclasses.replace(digits, binarized=False))


# ------------------------------------------------------------------ input dropout
def _plain_training(cfg: RunConfig, data) -> torch.nn.Module:
    """The trainer's loop before input dropout existed, written out: same draws, same ops."""
    model = build_model(cfg, data.dim, pixel_mean=data.pixel_mean)  # as the trainer
    optimizer, bound = make_optimizer(model, cfg), objective_for(cfg)
    generator = make_generator(cfg.seed + bench.loop.TRAIN_STREAM, "cpu")
    n = data.train.shape[0]
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for lo in range(0, n, cfg.batch_size):
            xb = binarize_dynamic(data.train[order[lo : lo + cfg.batch_size]], generator)
            loss = -bound(model(xb, cfg.k, generator=generator)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("objective, k", [("vae", 1), ("iwae", 3)])
def test_input_dropout_zero_trains_bit_identically_to_the_plain_loop(digits, objective, k):
    cfg = RunConfig(**QUICK, objective=objective, k=k, input_dropout=0.0)
    trained = train(cfg, digits).model
    reference = _plain_training(cfg, digits)
    for a, b in zip(trained.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    dropped = train(cfg.replace(input_dropout=0.5), digits).model
    assert not torch.equal(next(dropped.parameters()), next(reference.parameters()))


def _spy_on_training(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(encoder input, decoder target) of every training step of the next `train` call."""
    pairs: list[list[torch.Tensor]] = []
    real_build = bench.families.lvm.build_model

    def spying_build(cfg, n_data, *args, **kwargs):
        model = real_build(cfg, n_data, *args, **kwargs)
        decoder_log_prob = model.decoder.log_prob

        def encoder_input(module, args):
            if torch.is_grad_enabled():  # training steps, not the no-grad evaluation
                pairs.append([args[0].detach().clone()])

        def log_prob(x, z):
            if torch.is_grad_enabled():
                pairs[-1].append(x.detach().clone())
            return decoder_log_prob(x, z)

        model.encoders[0].register_forward_pre_hook(encoder_input)
        model.decoder.log_prob = log_prob
        return model

    monkeypatch.setattr(bench.families.lvm, "build_model", spying_build)
    return pairs


def test_input_dropout_zeroes_about_p_of_the_pixels_the_encoder_sees_not_the_decoder(
    digits, monkeypatch
):
    pairs = _spy_on_training(monkeypatch)
    train(RunConfig(**QUICK, input_dropout=0.5), digits)
    assert len(pairs) == 2 * 3  # 2 epochs x 3 minibatches
    ones = dropped = 0
    for h, x in pairs:
        assert ((h == 0) | (h == x)).all()  # the encoder sees x with some pixels zeroed
        ones += int((x == 1).sum())
        dropped += int(((x == 1) & (h == 0)).sum())
    assert ones > 5000
    assert dropped / ones == pytest.approx(0.5, abs=0.03)

    pairs.clear()
    train(RunConfig(**QUICK), digits)
    assert len(pairs) == 6 and all(torch.equal(h, x) for h, x in pairs)


def test_dropout_training_with_inpainting_gives_every_metric_finite_and_deterministic(digits):
    cfg = RunConfig(**QUICK, input_dropout=0.5, eval_inpainting=True)
    a, b = train(cfg, digits), train(cfg, digits)
    metrics = a.metrics()
    for name in MASKS:
        for method in METHODS:
            nll, error = (metrics[f"inpaint_{name}_{method}_{s}"] for s in ("nll", "error"))
            assert math.isfinite(nll) and nll > 0
            assert 0 <= error <= 100
    assert metrics["inpaint_seconds"] > 0 and "inpaint_seconds" in MACHINE_METRICS
    # the trainer hands its p to the matched chain: it is not the iterative chain here
    assert all(metrics[f"inpaint_{name}_matched_nll"] != metrics[f"inpaint_{name}_iterative_nll"]
               for name in MASKS)
    strip = lambda m: {key: v for key, v in m.items() if key not in MACHINE_METRICS}
    assert strip(metrics) == strip(b.metrics())
    assert a.samples == b.samples

    # the inpainting rows follow the usual ones: truth, then per shown mask its three kinds
    plain = train(cfg.replace(eval_inpainting=False), digits)
    assert strip(plain.metrics()) == {
        key: v for key, v in strip(metrics).items() if not key.startswith("inpaint_")
    }
    assert a.samples[: len(plain.samples)] == plain.samples
    rows = a.samples[len(plain.samples) :]
    kinds = list(dict.fromkeys(row["kind"] for row in rows))
    assert kinds == ["truth"] + [
        f"{what}: {MASK_LABELS[name]}" for name in SAMPLE_MASKS
        for what in ("masked", *METHOD_LABELS.values())
    ]
    by_kind = {kind: [r for r in rows if r["kind"] == kind] for kind in kinds}
    assert all(len(images) == N_SAMPLE_IMAGES for images in by_kind.values())
    mask = make_mask("top_half", N_SAMPLE_IMAGES, digits.image_shape)
    truth = torch.tensor([r["pixels"] for r in by_kind["truth"]])
    assert torch.equal(truth, digits.test[:N_SAMPLE_IMAGES])
    masked = torch.tensor([r["pixels"] for r in by_kind["masked: top half"]])
    assert (masked[mask] == 0.5).all() and torch.equal(masked[~mask], truth[~mask])
    for what in METHOD_LABELS.values():
        filled = torch.tensor([r["pixels"] for r in by_kind[f"{what}: top half"]])
        assert torch.equal(filled[~mask], truth[~mask])
        assert ((filled[mask] > 0) & (filled[mask] < 1)).all()  # predictive means
