"""Progress lines with an ETA during long work (bench.eta): the test-set estimate, EM and the
disentanglement metrics write them where the run's progress goes, at most one every few
seconds, none for short work (issue 27, part 3). Clocks are injected: nothing sleeps."""

from __future__ import annotations

import numpy as np
import torch

from bench import eta
from bench.config import config_from_dict
from bench.eta import ProgressLines


class FakeClock:
    """A clock that moves `step` seconds at every reading."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def collect(step: float, **kw) -> tuple[ProgressLines, list[str]]:
    lines: list[str] = []
    return ProgressLines(lines.append, clock=FakeClock(step), **kw), lines


def test_meter_waits_then_writes_one_line_per_interval_with_the_eta():
    """Readings at 1, 2, 3, ... s; the meter starts at 1 s (quiet 5 s, every 5 s): lines at
    6 and 11 s, then a closing line. Guards the quiet start, the interval and the ETA
    (remaining units at the mean rate so far)."""
    lines_to, lines = collect(1.0, every_s=5.0, quiet_s=5.0)
    meter = eta.meter(lines_to, "eval test_ll", 10_000, "examples")
    for done in range(1000, 10_001, 1000):  # readings at 2..11 s
        meter.update(done)
    meter.finish()  # reading at 12 s
    assert lines == [
        "eval test_ll: 5,000/10,000 examples (50%), 0:00:05 elapsed, ETA 0:00:05",
        "eval test_ll: 10,000/10,000 examples (100%), 0:00:10 elapsed, ETA 0:00:00",
        "eval test_ll: 10,000/10,000 examples done, 0:00:11",
    ]


def test_short_work_writes_nothing():
    lines_to, lines = collect(0.1)
    meter = eta.meter(lines_to, "EM", 50, "iterations")
    for i in range(1, 51):  # 5 s in all: under the default quiet time
        meter.update(i)
    meter.finish()
    assert lines == []
    eta.meter(None, "EM", 50, "iterations").update(3)  # no destination: a no-op


def test_line_text():
    assert eta.line("eval test_ll", 4000, 10_000, "examples", 65.0) == (
        "eval test_ll: 4,000/10,000 examples (40%), 0:01:05 elapsed, ETA 0:01:38")
    assert eta.line("x", 0, 10, "units", 3.0).endswith("ETA unknown")


def tiny_model():
    from bench.models import build_model

    cfg = config_from_dict({"dataset": "digits", "hidden": [[8]], "latent": [2]})
    return build_model(cfg, 64)


def test_the_test_set_estimate_writes_progress_when_long():
    """20 examples at k_eval 100, 300 rows a chunk: chunks of 3 examples (7 of them) as at
    k_eval 10,000 with the default chunk (cheaper here). A clock moving 4 s a
    reading makes it long: lines with examples done; a still clock none, and the estimate
    is the same with or without lines."""
    from bench.metrics.likelihood import evaluate

    model = tiny_model()
    x = torch.bernoulli(torch.full((20, 64), 0.3), generator=torch.Generator().manual_seed(0))
    lines_to, lines = collect(4.0)
    with_lines = evaluate(model, x, 100, generator=torch.Generator().manual_seed(1),
                          rows_per_chunk=300, progress=lines_to)
    assert lines[0] == "eval test_ll (k_eval 100): 9/20 examples (45%), 0:00:12 elapsed, " \
        "ETA 0:00:15"
    assert lines[-1] == "eval test_ll (k_eval 100): 20/20 examples done, 0:00:32"
    assert len(lines) == 4
    still_to, still = collect(0.0)
    without = evaluate(model, x, 100, generator=torch.Generator().manual_seed(1),
                       rows_per_chunk=300, progress=still_to)
    assert still == [] and without.test_ll == with_lines.test_ll


def test_em_writes_progress_when_long():
    from bench.data import load_dataset
    from bench.families.mixture import run

    cfg = config_from_dict({"dataset": "digits", "model": "mixture", "components": 3,
                            "iterations": 4, "train_size": 50, "test_size": 10})
    lines_to, lines = collect(6.0)
    run(cfg, load_dataset("digits", train_size=50, test_size=10), device="cpu",
        progress=lines_to)
    assert lines[0] == "EM (3 components): 2/4 iterations (50%), 0:00:12 elapsed, ETA 0:00:12"
    assert lines[-1] == "EM (3 components): 4/4 iterations done, 0:00:30"


def test_dci_writes_a_line_per_fitted_factor_when_long():
    from bench.metrics.disentanglement import dci

    rng = np.random.default_rng(0)
    factors = rng.integers(0, 3, size=(200, 3))
    codes = factors + 0.1 * rng.standard_normal((200, 3))
    lines_to, lines = collect(20.0)
    plain = dci(codes, factors, n_estimators=5)
    logged = dci(codes, factors, n_estimators=5, progress=lines_to)
    assert lines[:3] == [
        f"disentanglement: DCI forest: {i}/3 factors ({i / 3:.0%}), "
        f"{eta.clock_text(20 * i)} elapsed, ETA {eta.clock_text(20 * (3 - i))}"
        for i in (1, 2, 3)]
    assert (logged.disentanglement, logged.completeness) == (plain.disentanglement,
                                                              plain.completeness)



def test_encoding_the_grid_writes_the_images_done(monkeypatch):
    """factor_metrics' encoding of the shapes_small grid (6,144 images) in chunks of 2,048
    (ENCODE_CHUNK 128 here): a line per chunk with the images encoded, the same progress
    handed on to DCI. DCI and the beta-VAE metric are stubbed (test_dci_... covers DCI's)."""
    import bench.metrics.factors as factors
    from bench.data import load_dataset
    from bench.models import build_model

    handed = []
    monkeypatch.setattr(factors, "ENCODE_CHUNK", 128)
    monkeypatch.setattr(factors, "dci", lambda *a, progress=None, **kw: _dci_stub(handed,
                                                                                progress))
    monkeypatch.setattr(factors, "beta_vae_score", lambda *a, **kw: 0.0)
    cfg = config_from_dict({"dataset": "shapes_small", "hidden": [[8]], "latent": [2]})
    shapes = load_dataset("shapes_small", train_size=16, test_size=16)
    model = build_model(cfg, shapes.test.shape[1], image_shape=shapes.image_shape)
    lines_to, lines = collect(20.0)
    factors.factor_metrics(model, shapes, seed=0, config=cfg, progress=lines_to)
    assert lines == [
        "disentanglement: encoding the grid: 2,048/6,144 images (33%), 0:00:20 elapsed, "
        "ETA 0:00:40",
        "disentanglement: encoding the grid: 4,096/6,144 images (67%), 0:00:40 elapsed, "
        "ETA 0:00:20",
        "disentanglement: encoding the grid: 6,144/6,144 images (100%), 0:01:00 elapsed, "
        "ETA 0:00:00",
        "disentanglement: encoding the grid: 6,144/6,144 images done, 0:01:20"]
    assert handed == [lines_to]


def _dci_stub(handed: list, progress):
    from bench.metrics.disentanglement import DCIResult

    handed.append(progress)
    return DCIResult(0.0, 0.0, 0.0, 0.0, np.zeros((2, 0)), ())

def every_line(monkeypatch, module) -> None:
    """ProgressLines in `module` without the quiet start and interval: every update writes."""
    import functools

    monkeypatch.setattr(module, "ProgressLines",
                        functools.partial(ProgressLines, every_s=0.0, quiet_s=0.0))


RUN = {"dataset": "digits", "hidden": [[8]], "latent": [2], "epochs": 1, "train_size": 50,
       "test_size": 20, "k_eval": 5000, "objective": "iwae", "k": 2}


def test_a_runs_progress_lines_go_to_its_log(tmp_path, monkeypatch):
    """The runner hands the run's log to the trainer: the estimate's lines land there."""
    import bench.runner
    from bench.runner import RunTask, execute, log_path
    from bench.suite import Variant

    every_line(monkeypatch, bench.runner)
    variant = Variant("tiny", config_from_dict(RUN))
    [landed] = execute(RunTask("eta", None, variant, tmp_path, 1, 1), device="cpu")
    assert landed.row["status"] == "finished"
    log = log_path(tmp_path, "eta", variant.run_id).read_text().splitlines()
    assert "eval test_ll (k_eval 5,000): 6/20 examples (30%)" in log[2]  # after its epoch
    assert log[-2].startswith("eval test_ll (k_eval 5,000): 20/20 examples done")


def test_vaebench_train_writes_progress_lines_to_stderr_unless_quiet(monkeypatch, capsys):
    import bench.eta
    from bench.cli import main

    every_line(monkeypatch, bench.eta)  # cmd_train imports it when it trains
    args = ["train", "--dataset", "digits", "--hidden", "8", "--latent", "2", "--epochs", "1",
            "--train-size", "50", "--test-size", "20", "--k-eval", "5000", "--json"]
    assert main(args) == 0
    assert "eval test_ll (k_eval 5,000): 20/20 examples done" in capsys.readouterr().err
    assert main([*args, "--quiet"]) == 0
    assert "eval test_ll" not in capsys.readouterr().err
