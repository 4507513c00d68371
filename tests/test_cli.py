"""The command line as a user meets it: help, bad input as one-line errors, reproducible output."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from bench.cli import main
from bench.config import RunConfig, config_from_dict
from bench.metrics.catalog import MACHINE_METRICS

BAD_DEVICE = ["--device", "tpu"] if torch.cuda.is_available() else ["--device", "cuda:0"]

QUICK = ["--dataset", "digits", "--train-size", "200", "--test-size", "50", "--epochs", "2",
         "--k-eval", "10", "--hidden", "16", "--latent", "4", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--objective", "wake-sleep"], "unknown objective 'wake-sleep'"),
        (["--k", "-1"], "'k' must be >= 1"),
        (["--k", "0"], "'k' must be >= 1"),
        (["--beta", "-0.5"], "'beta' must be >= 0"),
        (["--epochs", "0"], "'epochs' must be >= 1"),
        (["--objective", "iwae", "--beta", "2"],
         "'beta' applies to objective 'vae' and 'ciwae' only"),
        (["--hidden", "200,200", "100,100", "--latent", "50"], "one entry per stochastic layer"),
        (["--train-size", "100000"], "train_size"),
        (BAD_DEVICE, "device"),
        (["--dataset", "gmm", "--objective", "iwae", "--iterations", "5"], "is a toy"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = run_cli(capsys, "train", *QUICK, *argv)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("vaebench: error: ")
    assert out == ""


def test_corrupt_mnist_cache_is_an_error_not_silently_used(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBENCH_DATA", str(tmp_path))
    cache = tmp_path / "mnist.npz"
    cache.write_bytes(b"PK\x03\x04 this is not a complete zip archive")
    before = cache.read_bytes()
    code, out, err = run_cli(capsys, "train", "--dataset", "mnist", "--epochs", "1", "--quiet")
    assert code == 2
    assert str(cache) in err and "corrupt" in err and len(err.strip().splitlines()) == 1
    assert cache.read_bytes() == before  # nothing overwritten behind the user's back


def test_same_seed_prints_identical_metrics(capsys):
    runs = []
    for _ in range(2):
        code, out, _ = run_cli(capsys, "train", *QUICK, "--objective", "iwae", "--k", "3",
                               "--json")
        assert code == 0
        payload = json.loads(out)
        runs.append({k: v for k, v in payload["metrics"].items() if k not in MACHINE_METRICS})
    assert runs[0] == runs[1]
    assert payload["run_id"] == config_from_dict(payload["config"]).run_id


def test_text_output_lists_the_metrics(capsys):
    code, out, _ = run_cli(capsys, "train", *QUICK)
    assert code == 0
    for key in ("test_ll", "test_elbo", "rate", "distortion", "active_units",
                "train_samples_per_s", "eval_samples_per_s"):
        assert any(line.split()[0] == key for line in out.splitlines()), key


def test_help_documents_every_config_field():
    text = subprocess.run([sys.executable, "-m", "bench.cli", "train", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for field in dataclasses.fields(RunConfig):
        flag = "--param" if field.name == "params" else "--" + field.name.replace("_", "-")
        assert flag in text, field.name
    top = subprocess.run([sys.executable, "-m", "bench.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "train" in top and "data" in top


def test_model_families_train_from_the_command_line(capsys):
    code, out, _ = run_cli(capsys, "train", "--model", "mixture", "--components", "5",
                           "--iterations", "3", "--dataset", "digits", "--quiet", "--json")
    metrics = json.loads(out)["metrics"]
    assert code == 0 and metrics["status"] == "finished" and metrics["epochs_done"] == 3
    assert metrics["test_ll"] < 0 and "prior_iwae_k1000" in metrics
    code, _, err = run_cli(capsys, "train", "--model", "m2", "--labelled", "15", "--quiet")
    assert code == 2 and "multiple of 10" in err and len(err.strip().splitlines()) == 1


def test_data_fetch_generates_the_shapes_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBENCH_DATA", str(tmp_path))
    code, out, _ = run_cli(capsys, "data", "fetch", "shapes_small")
    assert code == 0 and out.strip().startswith(str(tmp_path)) and out.strip().endswith(".npz")
    code, _, err = run_cli(capsys, "data", "fetch", "shapes_small", "--source", "x.whl")
    assert code == 2 and "--source applies to mnist only" in err


def test_bad_values_for_run_and_train_are_one_line_errors(capsys, tmp_path):
    a_file = tmp_path / "baseline.parquet"
    a_file.write_text("")
    code, _, err = run_cli(capsys, "run", "smoke", "--results", str(a_file), "--dry-run")
    assert code == 2 and "not a directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "--capacity-max", "nan", "--quiet")
    assert code == 2 and "must be a finite number" in err
    # a boolean key is a --flag / --no-flag pair on the command line
    code, out, _ = run_cli(capsys, "train", *QUICK, "--eval-inpainting", "--epochs", "1",
                           "--json")
    assert code == 0 and "inpaint_top_half_onepass_nll" in json.loads(out)["metrics"]


def test_the_program_freezes_its_heap_before_exit_but_main_with_argv_does_not(capsys):
    # Guards against: the interpreter's shutdown collecting torch's whole heap again (1.2 s
    # of a 5 s `vaebench run smoke` on 2 cores: the freeze before exit dropped), and a
    # caller that goes on after main(argv) (tests, a notebook) getting its objects frozen
    # out of the garbage collector for good.
    import gc

    argv = ["compare", "/nonexistent/a.parquet", "/nonexistent/b.parquet"]
    before = gc.get_freeze_count()
    assert main(argv) == 2 and gc.get_freeze_count() == before
    code = ("import gc, sys; from bench.cli import main; "
            f"sys.argv = ['vaebench', *{argv!r}]; print(main(), gc.get_freeze_count() > 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "True"], done.stderr
