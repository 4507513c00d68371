"""Exact (or hand-computed) values of stored metrics, each checked where the runner produces it
(issue 14): blurriness and sharpness, FLOPs, peak memory, throughput, active units, ESS and
provenance. Each test's docstring names the realistic bug it guards against; the mutations
that stand for those bugs are in tools/mutations.toml (`make mutants`)."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bench.loop
from bench import provenance, store
from bench.config import RunConfig
from bench.data import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE, Dataset, load_dataset
from bench.families.lvm import train
from bench.loop import EpochRecord, train_epochs, training_record
from bench.metrics.blur import blur_metrics
from bench.metrics.cost import PeakMemory, training_flops_per_example
from bench.metrics.likelihood import evaluate
from bench.models import ModelSample, build_model
from bench.runner import RunTask, execute
from bench.suite import Variant

pytestmark = pytest.mark.usefixtures("one_thread")

MIB = 2**20


# ----------------------------------------------------------------------------- helpers
def laplacian_variance(image: list[list[float]]) -> float:
    """Blurriness by hand: the 4-neighbour Laplacian at every interior pixel (no padding),
    then the population variance of those responses, in float64 Python arithmetic."""
    h, w = len(image), len(image[0])
    responses = [
        image[i - 1][j] + image[i + 1][j] + image[i][j - 1] + image[i][j + 1] - 4 * image[i][j]
        for i in range(1, h - 1) for j in range(1, w - 1)
    ]
    mean = sum(responses) / len(responses)
    return sum((r - mean) ** 2 for r in responses) / len(responses)


def rss_bytes() -> int:
    """This process's resident set size now, read from /proc (kB there, bytes here)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or
                                not Path("/proc/self/status").exists(),
                                reason="peak memory on CPU is read from Linux's /proc")

TINY = dict(dataset="digits", hidden=((4,),), latent=(2,), train_size=100, test_size=20,
            epochs=2, batch_size=50, k=5, k_eval=5)


@pytest.fixture(scope="module")
def tiny_run(one_thread):
    """One real `bench.families.lvm.train` run (digits, 2 epochs, k=5) shared by the tests that
    check what train stores; with the process's RSS just before it started."""
    cfg = RunConfig(**TINY)
    data = load_dataset("digits", train_size=cfg.train_size, test_size=cfg.test_size)
    before = rss_bytes() if Path("/proc/self/status").exists() else None
    result = train(cfg, data)
    assert result.status == "finished"
    return cfg, data, result, before


# ----------------------------------------------------------------------------- 1. blur
class FixedImages(nn.Module):
    """A model whose prior samples and reconstructions are fixed images (n, H*W)."""

    def __init__(self, prior: torch.Tensor, recon: torch.Tensor):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # blur_metrics reads the device from it
        self.prior, self.recon = prior, recon

    def sample_prior(self, n, generator=None):
        return self.prior[:n]

    def reconstruct(self, x, generator=None):
        return self.recon[: x.shape[0]]


# 3x4 images: the Laplacian has two interior responses, r at (1,1) and s at (1,2), and the
# blurriness is ((r - s) / 2)^2.
GREY = [[0.0, 0.5, 0.5, 0.0],
        [0.5, 1.0, 0.25, 0.5],
        [0.0, 0.5, 0.5, 0.0]]  # r = 1.75 - 4 = -2.25, s = 2.5 - 1 = 1.5: (3.75/2)^2 = 3.515625
GREY_BINARISED = [[0.0, 1.0, 1.0, 0.0],
                  [1.0, 1.0, 0.0, 1.0],
                  [0.0, 1.0, 1.0, 0.0]]  # r = 3 - 4 = -1, s = 4 - 0 = 4: (5/2)^2 = 6.25
SPIKE = [[0.0, 0.0, 0.0, 0.0],
         [0.0, 0.0, 1.0, 0.0],
         [0.0, 0.0, 0.0, 0.0]]  # r = 1, s = -4: (5/2)^2 = 6.25 (already 0/1)


def _flat(*images) -> torch.Tensor:
    return torch.tensor([sum(img, []) for img in images])


def _image_dataset(intensities: torch.Tensor, binarised: torch.Tensor) -> Dataset:
    n = binarised.shape[0]
    return Dataset(name="tiny", train=intensities, test=binarised,
                   train_labels=torch.zeros(n, dtype=torch.int64),
                   test_labels=torch.zeros(n, dtype=torch.int64), image_shape=(3, 4),
                   binarized=True, test_intensities=intensities)


def test_blur_of_the_data_is_that_of_the_grey_level_test_images_by_hand():
    """Bug: the data reference blur_data_* measured on the binarised test images (what the
    model is scored on) instead of their grey levels: 0/1 edges are much sharper, so every
    sharpness ratio would read too low. Hand values: GREY 3.515625, SPIKE 6.25 (its binarised
    GREY would give 6.25 too)."""
    assert laplacian_variance(GREY) == 3.515625
    assert laplacian_variance(GREY_BINARISED) == laplacian_variance(SPIKE) == 6.25
    data = _image_dataset(_flat(GREY, SPIKE), _flat(GREY_BINARISED, SPIKE))
    model = FixedImages(prior=_flat(SPIKE, SPIKE), recon=_flat(SPIKE, SPIKE))
    out = blur_metrics(model, data)
    assert out["blur_reason"] is None
    assert out["blur_data_mean"] == (3.515625 + 6.25) / 2 == 4.8828125
    assert out["blur_data_min"] == 3.515625


def test_sharpness_ratios_are_model_mean_blur_over_data_mean_blur():
    """Bug: a sharpness ratio with the wrong denominator (the data's min blur, or the other
    model blur) or the wrong numerator (prior and reconstructions swapped). Documented:
    sharpness_prior = blur_prior_mean / blur_data_mean, sharpness_recon = blur_recon_mean /
    blur_data_mean. Halving an image halves its Laplacian, quartering its blurriness."""
    half, quarter = [[v / 2 for v in row] for row in SPIKE], [[v / 4 for v in row] for row in SPIKE]
    assert laplacian_variance(half) == 6.25 / 4 and laplacian_variance(quarter) == 6.25 / 16
    data = _image_dataset(_flat(GREY, SPIKE), _flat(GREY_BINARISED, SPIKE))
    model = FixedImages(prior=_flat(SPIKE, half), recon=_flat(half, quarter))
    out = blur_metrics(model, data)
    data_mean = (3.515625 + 6.25) / 2
    prior_mean, recon_mean = (6.25 + 6.25 / 4) / 2, (6.25 / 4 + 6.25 / 16) / 2
    assert out["blur_prior_mean"] == prior_mean and out["blur_prior_min"] == 6.25 / 4
    assert out["blur_recon_mean"] == recon_mean and out["blur_recon_min"] == 6.25 / 16
    assert out["sharpness_prior"] == pytest.approx(prior_mean / data_mean, rel=1e-12)
    assert out["sharpness_recon"] == pytest.approx(recon_mean / data_mean, rel=1e-12)
    assert out["sharpness_prior"] == pytest.approx(0.8, rel=1e-12)
    assert out["sharpness_recon"] == pytest.approx(0.2, rel=1e-12)


def test_train_stores_the_blur_of_the_digits_grey_levels(tiny_run):
    """Bug: the data reference taken from binarised test digits, either in blur_metrics or by
    load_dataset handing over the binarised images as `test_intensities`. The reference is
    rebuilt here from scikit-learn's digits by the documented split (permutation by
    default_rng(0), the last 297 are the test set, values / 16), by hand."""
    from sklearn.datasets import load_digits

    cfg, data, result, _ = tiny_run
    metrics = result.metrics()
    digits = load_digits().data
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(digits))
    test = digits[perm[len(perm) - DIGITS_TEST_SIZE:]][: cfg.test_size] / 16.0
    blur = [laplacian_variance(img.reshape(8, 8).tolist()) for img in test]
    binarised = [laplacian_variance(img.reshape(8, 8).tolist()) for img in data.test.numpy()]
    assert abs(sum(binarised) / len(binarised) - sum(blur) / len(blur)) > 0.5  # they differ
    assert metrics["blur_data_mean"] == pytest.approx(sum(blur) / len(blur), rel=1e-5)
    assert metrics["blur_data_min"] == pytest.approx(min(blur), rel=1e-5)


# ----------------------------------------------------------------------------- 2. FLOPs
def test_flops_of_a_small_mlp_counted_by_hand():
    """Bug: FLOPs without the factor k on the networks that run per sample (the decoder), or
    without the 2 FLOPs per multiply-add or the forward + backward factor 3. Hand count for
    hidden [[4]], latent [2] on D = 64: encoder 64x4 + 4x(2*2) = 272 MACs (once per example),
    decoder 2x4 + 4x64 = 264 MACs (k times); FLOPs = 3 * 2 * (272 + k * 264)."""
    model = build_model(RunConfig(hidden=((4,),), latent=(2,)), 64, image_shape=(8, 8))
    encoder, decoder = 64 * 4 + 4 * 4, 2 * 4 + 4 * 64
    assert training_flops_per_example(model, 1) == 3 * 2 * (encoder + decoder) == 3216
    assert training_flops_per_example(model, 5) == 3 * 2 * (encoder + 5 * decoder) == 9552
    # an estimator's split view (DReG, PIWAE): the decoder forward once more per sample and
    # its input gradients propagated twice
    assert training_flops_per_example(model, 5, split=True) == 9552 + 2 * 2 * 5 * decoder


def test_flops_of_a_small_conv_net_counted_by_hand():
    """Bug: a convolution miscounted: a conv's products per output value taken as
    out_channels x kernel instead of in_channels x kernel, or a transposed conv counted like a
    conv over its outputs (4x too much at stride 2). Hand count for the conv architecture on
    8x8 digits (zero-padded to 16x16), latent 2: each conv output value costs in_channels x
    4x4 products, each transposed-conv input value out_channels x 4x4."""
    model = build_model(RunConfig(hidden=((4,),), latent=(2,), architecture="conv"), 64,
                        image_shape=(8, 8))
    convs = (32 * 8 * 8 * 1 * 16  # 1 -> 32 channels, 16x16 -> 8x8
             + 32 * 4 * 4 * 32 * 16  # 8x8 -> 4x4
             + 32 * 2 * 2 * 32 * 16  # 4x4 -> 2x2
             + 32 * 1 * 1 * 32 * 16)  # 2x2 -> 1x1
    encoder = convs + 32 * 256 + 256 * 256 + 256 * (2 * 2)  # fc, fc, head [mean | logvar]
    deconvs = (32 * 1 * 1 * 32 * 16  # input 32x1x1 -> 32x2x2
               + 32 * 2 * 2 * 32 * 16  # -> 32x4x4
               + 32 * 4 * 4 * 32 * 16  # -> 32x8x8
               + 32 * 8 * 8 * 1 * 16)  # -> 1x16x16
    decoder = 2 * 256 + 256 * 256 + 256 * 32 + deconvs
    assert (encoder, decoder) == (451584, 451072)
    assert training_flops_per_example(model, 1) == 6 * (encoder + decoder)
    assert training_flops_per_example(model, 3) == 6 * (encoder + 3 * decoder) == 10828800


def test_train_stores_the_flops_of_its_k(tiny_run):
    """Bug: train costing its model at k = 1 (or k_eval) instead of the config's k, or
    train_flops_per_s not FLOPs per example x training examples per second."""
    cfg, _, result, _ = tiny_run
    metrics = result.metrics()
    assert cfg.k == 5 and metrics["flops_per_example"] == 9552.0
    assert metrics["train_flops_per_s"] == 9552.0 * metrics["train_samples_per_s"]


# ----------------------------------------------------------------------------- 3. memory
@linux_only
def test_cpu_peak_memory_is_in_bytes_and_sees_an_allocation():
    """Bug: peak memory in the wrong unit (/proc's kB taken as bytes, 1000 instead of 1024,
    or a MB figure): after allocating and touching N = 64 MiB inside the window, the peak is
    at least the RSS at the start + N and at most the RSS now (both read from /proc here), to
    a few MiB of page-counter slack."""
    tracker = PeakMemory("cpu")
    tracker.start()
    before = rss_bytes()
    block = torch.ones(64 * MIB // 4, dtype=torch.float32)  # 64 MiB, every page written
    after = rss_bytes()
    peak = tracker.peak_bytes()
    assert block.nbytes == 64 * MIB
    del block
    assert after - before >= 64 * MIB - 4 * MIB  # the allocation is resident
    assert before + 64 * MIB - 4 * MIB <= peak <= after + 4 * MIB


@linux_only
def test_train_stores_peak_memory_in_bytes(tiny_run):
    """Bug: train storing peak_memory_bytes in kB or MB: the peak of the run is at least the
    RSS the process had when the run started (hundreds of MB with torch loaded, in bytes)."""
    *_, result, before = tiny_run
    peak = result.metrics()["peak_memory_bytes"]
    assert isinstance(peak, int) and before > 50 * MIB
    assert before - 4 * MIB <= peak <= before + 512 * MIB


# ----------------------------------------------------------------------------- 4. throughput
def _curves(rates: list[float]) -> list[EpochRecord]:
    return [EpochRecord(epoch=i + 1, lr=1e-3, train_bound=-90.0, samples_per_s=r,
                        wall_seconds=float(i + 1)) for i, r in enumerate(rates)]


def test_throughput_is_the_median_rate_of_the_epochs_after_the_first():
    """Bug: the warm-up epoch counted in the throughput (median 1500 here), or the mean of the
    steady epochs (3000) instead of their median (2000). Even counts take the middle pair's
    mean; a single epoch is its own throughput."""
    record = training_record("finished", _curves([10.0, 1000.0, 2000.0, 6000.0]), 1.0, None)
    assert record["train_samples_per_s"] == 2000.0
    assert training_record("finished", _curves([5.0, 100.0, 300.0]), 1.0,
                           None)["train_samples_per_s"] == 200.0
    assert training_record("finished", _curves([7.0]), 1.0, None)["train_samples_per_s"] == 7.0
    assert math.isnan(training_record("diverged", [], 0.0, 1)["train_samples_per_s"])


def test_each_epochs_rate_is_its_examples_over_its_own_seconds(monkeypatch):
    """Bug: an epoch's samples_per_s measured from the start of training (or of the first
    epoch) instead of its own start, so later epochs look ever slower. A fake clock: epoch 1
    runs from t=1 to t=3, epoch 2 from t=3 to t=3.5, on n = 100 examples."""
    ticks = iter([1.0, 3.0, 3.0, 3.5])
    monkeypatch.setattr(bench.loop.time, "perf_counter", lambda: next(ticks))
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    curves: list[EpochRecord] = []
    diverged = train_epochs([0.1, 0.1], lambda rows: torch.zeros(()), n=100, batch_size=50,
                            optimizer=optimizer, generator=torch.Generator().manual_seed(0),
                            curves=curves, start=0.0)
    assert diverged is None
    assert [r.samples_per_s for r in curves] == [50.0, 200.0]
    assert [r.wall_seconds for r in curves] == [3.0, 3.5]
    assert training_record("finished", curves, 3.5, None)["train_samples_per_s"] == 200.0


def test_train_stores_the_second_epochs_rate_of_a_two_epoch_run(tiny_run):
    """Bug: the stored throughput of a real run includes its first (warm-up) epoch: with two
    epochs it must be exactly the second epoch's rate."""
    *_, result, _ = tiny_run
    assert len(result.curves) == 2
    assert result.metrics()["train_samples_per_s"] == result.curves[1].samples_per_s


# ----------------------------------------------------------------------------- 5. active units
N_UNITS = 100  # examples; x_0 alternates 0, 1: variance 1/4 (1/4 * 100/99 unbiased)


def _units_data() -> torch.Tensor:
    x = torch.zeros(N_UNITS, 4)
    x[1::2, 0] = 1.0
    return x


def _set_gaussian_head(posterior, mean_weights: list[list[float]], logvar: float) -> None:
    """q(z | h) = N(W h, exp(logvar) I): a linear head with no trunk."""
    head = posterior.net.head
    d = len(mean_weights)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:d, : len(mean_weights[0])] = torch.tensor(mean_weights)
        head.bias[d:] = logvar


def test_active_units_count_posterior_mean_variances_above_001():
    """Bug: the active-unit threshold wrong (0.1 or 0.001 instead of Burda et al.'s 0.01), or
    the variance taken of the samples z rather than of the posterior means E_q[z|x]. Units
    with Var_x E_q[z_u|x] = 0.0102, 0.0098 and 0.5 (1% either side of 0.01, whichever of the
    biased or unbiased variance is used), posterior variance 1: exactly 2 are active."""
    model = build_model(RunConfig(hidden=((),), latent=(3,), likelihood="gaussian"), 4)
    scales = [2 * math.sqrt(v) for v in (0.0102, 0.0098, 0.5)]  # Var(a x_0) = a^2 / 4
    _set_gaussian_head(model.encoders[0], [[a, 0, 0, 0] for a in scales], logvar=0.0)
    out = evaluate(model, _units_data(), 4, generator=torch.Generator().manual_seed(0))
    assert out.active_units_by_layer == [2] and out.active_units == 2


def test_active_units_by_layer_of_a_two_layer_model():
    """Bug: the active units of a 2-layer model split between layers in the wrong order or
    counted from the samples. Layer 1 as in the one-layer test (2 active of 3, posterior std
    ~1e-7 so z_1 = its mean); layer 2's means are c * z_1[2] with Var = 0.0102 and 0.0098:
    1 active of 2."""
    cfg = RunConfig(hidden=((), ()), latent=(3, 2), likelihood="gaussian")
    model = build_model(cfg, 4)
    scales = [2 * math.sqrt(v) for v in (0.0102, 0.0098, 0.5)]
    _set_gaussian_head(model.encoders[0], [[a, 0, 0, 0] for a in scales], logvar=-30.0)
    upper = [[0, 0, math.sqrt(v / 0.5)] for v in (0.0102, 0.0098)]  # Var z_1[2] = 0.5
    _set_gaussian_head(model.encoders[1], upper, logvar=0.0)
    out = evaluate(model, _units_data(), 4, generator=torch.Generator().manual_seed(0))
    assert out.active_units_by_layer == [2, 1] and out.active_units == 3


# ----------------------------------------------------------------------------- 6. ESS
class FixedWeights(nn.Module):
    """A model whose k-th importance weight for example i is exp(log_w[i, k]) (x[:, 0] = i),
    served in order across evaluate's chunks."""

    def __init__(self, log_w: torch.Tensor):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.latent = (1,)
        self.log_w = log_w.double()
        self.drawn = [0] * log_w.shape[0]

    def draw_noise(self, batch, k, generator, device):
        return [torch.zeros(k, batch, 1, device=device)]

    def forward(self, x, k, generator=None, **_):
        rows = x[:, 0].long().tolist()
        columns = []
        for i in rows:
            columns.append(self.log_w[i, self.drawn[i] : self.drawn[i] + k])
            self.drawn[i] += k
        log_w = torch.stack(columns, dim=1)  # (k, B)
        zero = torch.zeros_like(log_w)
        return ModelSample(log_px_given_z=log_w, log_pz=zero, log_qz=zero, kl_analytic=None,
                           z=[zero.unsqueeze(-1)], z_means=[zero.unsqueeze(-1)])


@pytest.mark.parametrize("rows_per_chunk", [32768, 2], ids=["one-chunk", "chunks-of-2"])
def test_ess_is_sum_w_squared_over_k_sum_w2_averaged_over_examples(rows_per_chunk):
    """Bug: the ESS normalisation wrong (not divided by k_eval, so in [1, k] rather than
    (0, 1]) or the sums not accumulated over chunks. Weights (1, 2, 3, 4): 10^2 / (4 * 30) =
    5/6; (1, 1, 1, 1): 1; (1, 0, 0, 0): 1/4; mean 25/36. Also test_ll = mean log(sum w / k)."""
    log_w = torch.tensor([[0.0, math.log(2), math.log(3), math.log(4)],
                          [0.0, 0.0, 0.0, 0.0],
                          [0.0, -1000.0, -1000.0, -1000.0]], dtype=torch.float64)
    x = torch.arange(3, dtype=torch.float32).unsqueeze(1)
    model = FixedWeights(log_w)
    out = evaluate(model, x, 4, rows_per_chunk=rows_per_chunk)
    assert model.drawn == [4, 4, 4]
    assert out.ess == pytest.approx(25 / 36, abs=1e-12)
    assert out.test_ll == pytest.approx((math.log(10 / 4) + 0.0 + math.log(1 / 4)) / 3,
                                        abs=1e-12)


# ----------------------------------------------------------------------------- 7. provenance
def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def temp_repo(monkeypatch):
    """A fresh git repository with one committed file, made the checkout provenance reads."""
    with tempfile.TemporaryDirectory(prefix="vaebench-prov-") as tmp:
        repo = Path(tmp)
        _git(repo, "init", "-q")
        (repo / "tracked.txt").write_text("one\n")
        _git(repo, "add", "tracked.txt")
        _git(repo, "commit", "-q", "-m", "first")
        monkeypatch.setattr(provenance, "REPO_ROOT", repo)
        provenance._git.cache_clear()
        try:
            yield repo
        finally:
            provenance._git.cache_clear()  # later callers see the real checkout again


def test_git_dirty_is_false_when_clean_and_true_with_a_modified_tracked_file(temp_repo):
    """Bug: git_dirty always False (or always True), e.g. from a status command whose output
    or exit code is misread, so results of uncommitted code pass as the commit's."""
    head = _git(temp_repo, "rev-parse", "HEAD")
    assert provenance.code_version() == {"git_commit": head, "git_dirty": False}
    (temp_repo / "tracked.txt").write_text("two\n")
    provenance._git.cache_clear()  # code_version caches git's answers for the process
    assert provenance.code_version() == {"git_commit": head, "git_dirty": True}


def test_the_stored_row_records_commit_dirty_versions_device_and_config(temp_repo, tmp_path):
    """Bug: the runner's stored row losing or misreporting provenance: git commit and dirty
    flag of the checkout, library versions, the device, seed and config hash, through the
    parquet store and back."""
    head = _git(temp_repo, "rev-parse", "HEAD")
    (temp_repo / "tracked.txt").write_text("two\n")
    cfg = RunConfig(dataset="bimodal", objective="iwae", iterations=3, k=2, seed=7)
    [landed] = execute(RunTask("prov", None, Variant("v", cfg), tmp_path, 1, 1), device="cpu")
    assert landed.row["status"] == "finished", landed.row["error"]
    store.write_run(tmp_path, landed.row, landed.curves, samples=landed.samples)
    row = store.load_runs(tmp_path).set_index("run_id").loc[cfg.run_id]
    assert row["sys_git_commit"] == head and bool(row["sys_git_dirty"]) is True
    assert row["sys_torch"] == torch.__version__ and row["sys_numpy"] == np.__version__
    assert row["sys_python"] == ".".join(map(str, sys.version_info[:3]))
    assert row["sys_device"] == "cpu" and row["sys_torch_threads"] == 1
    assert row["config_hash"] == cfg.config_hash and row["cfg_seed"] == 7
