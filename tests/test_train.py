"""The trainer: reproducible, stops on divergence, and IWAE-k trains a tighter model."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.config import RunConfig
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.lvm import train
from bench.loop import Checkpointing
from bench.metrics.catalog import MACHINE_METRICS

QUICK = dict(dataset="digits", train_size=300, test_size=100, epochs=3, k_eval=20,
             hidden=((32,),), latent=(8,))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=300, test_size=100)


def test_same_seed_gives_identical_metrics_and_weights(digits):
    cfg = RunConfig(**QUICK, objective="iwae", k=3)
    a, b = train(cfg, digits), train(cfg, digits)
    strip = lambda m: {key: v for key, v in m.items() if key not in MACHINE_METRICS}
    assert strip(a.metrics()) == strip(b.metrics())
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = train(cfg.replace(seed=1), digits)
    assert c.metrics()["test_ll"] != a.metrics()["test_ll"]


def test_training_improves_the_bound_and_records_curves(digits):
    cfg = RunConfig(**{**QUICK, "epochs": 8})
    result = train(cfg, digits)
    assert result.status == "finished"
    assert [r.epoch for r in result.curves] == list(range(1, 9))
    assert result.curves[-1].train_bound > result.curves[0].train_bound + 1.0
    assert result.test is not None and result.test.n_test == 100
    assert result.test.test_ll >= result.test.test_elbo - 0.5  # IWAE-20 vs ELBO on test


def test_non_finite_loss_stops_the_run_as_diverged(digits):
    broken = dataclasses.replace(digits, train=digits.train.clone(), binarized=False)
    broken.train[5, 3] = math.nan
    result = train(RunConfig(**{**QUICK, "likelihood": "gaussian"}), broken)
    assert result.status == "diverged"
    assert result.diverged_epoch == 1 and len(result.curves) == 1
    assert result.test is None  # no metrics computed from a garbage model
    assert result.metrics()["status"] == "diverged"


def test_burda_schedule_stages_and_learning_rates():
    cfg = RunConfig(schedule="burda")
    stages = cfg.lr_stages()
    assert [e for e, _ in stages] == [3**i for i in range(8)]
    assert cfg.epochs == 3280 == sum(e for e, _ in stages)
    assert stages[0][1] == pytest.approx(1e-3) and stages[7][1] == pytest.approx(1e-4)


def test_iwae_k_trains_a_better_log_likelihood_than_the_vae():
    # Burda et al.'s central claim at the CLI's default digits budget (seconds; holds for
    # seeds 0-3 with margins of 0.19-0.59 nats)
    data = load_dataset("digits")
    base = dict(dataset="digits", epochs=20, k_eval=1000, seed=0)
    vae = train(RunConfig(**base, objective="vae"), data).test
    iwae = train(RunConfig(**base, objective="iwae", k=5), data).test
    assert iwae.test_ll > vae.test_ll


@pytest.mark.parametrize("optimizer", ["adam", "burda_adam"])  # burda_adam: v, t resume too
def test_interrupted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(
    digits, tmp_path, optimizer
):
    cfg = RunConfig(**{**QUICK, "epochs": 5, "objective": "iwae", "k": 2,
                       "optimizer": optimizer})
    reference = train(cfg, digits)

    checkpointing = Checkpointing(tmp_path / "run.pt", every_epochs=1)

    def interrupt_after_epoch_3(record, total):
        if record.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, digits, checkpointing=checkpointing, on_epoch=interrupt_after_epoch_3)
    assert checkpointing.path.exists()

    seen = []
    resumed = train(cfg, digits, checkpointing=checkpointing,
                    on_epoch=lambda record, total: seen.append(record.epoch))
    assert seen == [3, 4, 5]  # epochs 1-2 came from the checkpoint (saved after epoch 2)
    assert [r.epoch for r in resumed.curves] == [1, 2, 3, 4, 5]
    assert resumed.test.test_ll == reference.test.test_ll
    for pa, pb in zip(resumed.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_checkpoint_of_another_config_is_refused(digits, tmp_path):
    checkpointing = Checkpointing(tmp_path / "run.pt", every_epochs=1)
    cfg = RunConfig(**{**QUICK, "epochs": 2})
    train(cfg, digits, checkpointing=checkpointing)
    with pytest.raises(BenchError, match="another config"):
        train(cfg.replace(seed=7), digits, checkpointing=checkpointing)


def test_a_checkpoint_from_another_device_type_is_a_one_line_error(digits, tmp_path):
    # a generator's state cannot move between CPU and CUDA: say so instead of crashing
    checkpointing = Checkpointing(tmp_path / "run.pt", every_epochs=1)
    cfg = RunConfig(**{**QUICK, "epochs": 2})
    train(cfg, digits, checkpointing=checkpointing)
    state = torch.load(checkpointing.path, weights_only=True)
    assert state["device_type"] == "cpu"
    torch.save({**state, "device_type": "cuda"}, checkpointing.path)
    with pytest.raises(BenchError, match="written on cuda, this run is on cpu"):
        train(cfg, digits, checkpointing=checkpointing)
    torch.save(["not", "a", "checkpoint"], checkpointing.path)
    with pytest.raises(BenchError, match="another config"):
        train(cfg, digits, checkpointing=checkpointing)
