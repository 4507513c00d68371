"""bench.profile: torch.profiler runs of one variant (smoke suite, digits, CPU; seconds)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bench.errors import BenchError
from bench.profile import (
    format_profile,
    measure_matmul_peak,
    profile_suite_variant,
    sync_device,
)


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    return profile_suite_variant("smoke", "vae", budget="smoke", steps=5, out_dir=out,
                                 device="cpu")


def test_files_written(cpu_profile):
    trace = json.loads(cpu_profile.trace_path.read_text())
    assert "traceEvents" in trace
    assert cpu_profile.table_path.is_file() and cpu_profile.table_path.read_text().strip()
    summary = json.loads(cpu_profile.summary_path.read_text())
    assert summary["steps"] == 5
    assert "aten" in summary["kernels_per_step_counts"]
    assert summary["top_ops"] == cpu_profile.top_ops


def test_top_ops_and_rates(cpu_profile):
    ops = cpu_profile.top_ops
    assert ops
    shares = [op["share"] for op in ops]
    assert sum(shares) <= 1.0 + 1e-9
    assert shares[0] == max(shares)
    assert all(op["self_device_time_us"] == 0 for op in ops)
    assert all(op["calls"] >= 1 for op in ops)
    assert cpu_profile.step_seconds_median > 0
    assert cpu_profile.kernels_per_step > 0
    assert cpu_profile.flops_per_step > 0
    assert cpu_profile.achieved_flops_per_s > 0
    assert cpu_profile.matmul_peak_flops_per_s > 0
    assert 0 < cpu_profile.peak_fraction < 1.5
    text = format_profile(cpu_profile)
    assert "GFLOP/s" in text and "% of peak" in text and ops[0]["name"][:20] in text
    assert "(eager, 32 examples x 20 samples)" in text  # smoke: 100 test images, k_eval 20
    # a test set smaller than the 32 timed examples is timed, and printed, whole (the line
    # said 32 whatever was timed)
    few = format_profile(dataclasses.replace(cpu_profile, eval_examples=10))
    assert "(eager, 10 examples x 20 samples)" in few


def test_matmul_peak_small():
    assert measure_matmul_peak("cpu", size=128, reps=2) > 0


def test_sync_device_takes_a_device_name():
    """The microbenchmarks time on a parametrised device name ("cpu", "cuda"): a sync_device
    that read `.type` off its argument failed `make microbench`'s estimate benchmark with an
    AttributeError (no test runs the benchmarks)."""
    sync_device("cpu")
    sync_device(torch.device("cpu"))


def test_unknown_variant_lists_known(tmp_path):
    with pytest.raises(BenchError, match="no-such") as err:
        profile_suite_variant("smoke", "no-such", budget="smoke", steps=1, out_dir=tmp_path,
                              device="cpu")
    message = str(err.value)
    assert "vae" in message and "iwae-k5" in message and "\n" not in message


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile(tmp_path):
    result = profile_suite_variant("smoke", "iwae-k5", budget="smoke", steps=3,
                                   out_dir=tmp_path, device="cuda")
    assert result.device.startswith("cuda")
    assert result.kernels_per_step > 0
    assert result.top_ops and result.top_ops[0]["self_device_time_us"] > 0
    assert result.matmul_peak_flops_per_s > 0 and result.achieved_flops_per_s > 0
    assert "traceEvents" in json.loads(result.trace_path.read_text())


def test_a_model_family_or_a_file_as_out_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(BenchError, match="profiling covers model 'lvm'"):
        profile_suite_variant("mixture", "components=10", budget="smoke", steps=1,
                              out_dir=tmp_path, device="cpu")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(BenchError, match="cannot create profile directory"):
        profile_suite_variant("smoke", "vae", budget="smoke", steps=1, out_dir=a_file,
                              device="cpu")
