"""benchmarks/gpu_throughput.py (issue 16, part 5): it must exit 0 with a message where CUDA
is absent, run its measurements end to end (here on the CPU, as a functional check of what
the GPU session will run), and project the paper protocol's wall time correctly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_throughput.py"


def _module():
    """The script as a module importable by name (its worker processes import it so)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    import gpu_throughput

    return gpu_throughput


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout


def test_it_measures_every_setting_end_to_end_on_the_cpu(tmp_path):
    # Guards against: a setting that crashes only when run (the GPU session has minutes, not
    # hours, to find out), processes that never meet at the barrier, a JSON not written.
    out = tmp_path / "gpu.json"
    assert _module().main(["--device", "cpu", "--batches", "20", "--ks", "1", "--n", "2",
                           "--modes", "eager", "--seconds", "0.05", "--settings", "alone",
                           "stacked", "processes", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    seen = {(m["case"], m["setting"], m["runs"]) for m in report["measures"]}
    assert seen == {(f"{layers}layer-b20-k1", setting, runs) for layers in (1, 2)
                    for setting, runs in (("alone", 1), ("stacked", 2), ("processes", 2))}
    assert all(m["samples_per_s"] > 0 for m in report["measures"])


def test_the_projection_is_steps_times_step_time_plus_the_estimates():
    # Guards against: seeds counted once where they run one after another (or N times where
    # they run at once), the schedule's 3280 epochs or the 3000 steps per epoch lost, the
    # estimate left out. Every measured step takes 1 ms; the estimate 2 ms per example per
    # 1000 samples: 10,000 examples x 5 x 2 ms = 100 s per run.
    gt = _module()
    measures = [gt.Measure(gt.Case(layers, 20, k).name, setting, mode, 1, 1.0, 1.0)
                for layers in (1, 2) for k in (1, 5, 50)
                for setting, modes in (("alone", gt.ALONE_MODES),
                                       ("processes", gt.PROCESS_MODES),
                                       ("stacked", gt.STACK_MODES)) for mode in modes]
    report = gt.Report("test", "x", measures,
                       evaluation={"eager_s_per_example_per_1000": 2e-3})
    hours = gt.project(report)
    steps = 3280 * 3000  # per run: the burda schedule at batch 20 on 60,000 images
    runs, cells = 36, 12
    assert hours["alone/eager"] == pytest.approx((runs * steps * 1e-3 + runs * 100) / 3600)
    assert hours["stacked/graphed"] == pytest.approx((cells * steps * 1e-3 + runs * 100) / 3600)
    # processes: a cell's seeds train at once, each at its own (measured) step time
    assert hours["processes/eager"] == pytest.approx((cells * steps * 1e-3 + runs * 100)
                                                     / 3600)
    missing = gt.project(gt.Report("test", "x", measures[:3]))
    assert missing["alone/eager"] is None
