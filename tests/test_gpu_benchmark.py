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


def test_a_python_without_torch_gets_one_line():
    # Guards against: `python benchmarks/gpu_throughput.py` with a system Python (no torch)
    # answering with an import traceback.
    blocked = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = [sys.argv[1]]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", blocked, str(SCRIPT)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr == ("gpu_throughput: this Python has no torch: run it with "
                           ".venv/bin/python (make install) or any Python with torch\n")


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


def test_its_compiled_settings_and_the_estimate_run_on_the_cpu(tmp_path):
    # Guards against: the compiled stacked step (vmap under compile, with the CPU's
    # options; the CUDA ones only run on a GPU) or the eager and compiled estimates
    # crashing only in the GPU session.
    out = tmp_path / "gpu.json"
    assert _module().main(["--device", "cpu", "--batches", "20", "--ks", "1", "--n", "2",
                           "--modes", "compiled", "--seconds", "0.05", "--no-two-layer",
                           "--settings", "alone", "stacked", "evaluation",
                           "--eval-examples", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    # alone runs eager or graphed (CUDA only), so compiled is the stack's
    assert {(m["setting"], m["mode"]) for m in report["measures"]} == {("stacked", "compiled")}
    assert set(report["evaluation"]) == {"eager_s_per_example_per_1000",
                                         "compiled_s_per_example_per_1000"}
    assert all(v > 0 for v in report["evaluation"].values())


def test_the_projection_is_steps_times_step_time_plus_the_estimates():
    # Guards against: seeds counted once where they run one after another (or N times where
    # they run at once), the schedule's 3280 epochs or the 3000 steps per epoch lost, the
    # estimate left out or the eager one used for compiled modes, another setting's or
    # mode's or case's step time used, a stack of another size taken for the seeds. Step
    # times differ per setting and mode, and scale with the case (x layers x 1, 2 or 10 for
    # k 1, 5, 50: the 12 cells, VAE and IWAE at each, weigh 2 x 3 x 13 = 78 base steps); the
    # estimate takes 2 ms (eager) or 1 ms (compiled) per example per 1000 samples: 10,000
    # examples x 5 x 2 ms = 100 s per run (compiled: 50 s).
    gt = _module()
    step_ms = {("alone", "eager"): 1.0, ("alone", "graphed"): 0.5,
               ("processes", "eager"): 2.0, ("processes", "graphed"): 1.5,
               ("stacked", "eager"): 3.0, ("stacked", "compiled"): 2.5,
               ("stacked", "graphed"): 0.25}
    weight = {1: 1, 5: 2, 50: 10}
    measures = [gt.Measure(gt.Case(layers, 20, k).name, setting, mode,
                           1 if setting == "alone" else 3, 1.0, ms * layers * weight[k])
                for layers in (1, 2) for k in (1, 5, 50)
                for (setting, mode), ms in step_ms.items()]
    evaluation = {"eager_s_per_example_per_1000": 2e-3,
                  "compiled_s_per_example_per_1000": 1e-3}
    hours = gt.project(gt.Report("test", "x", measures, evaluation=evaluation))
    steps = 3280 * 3000  # per run: the burda schedule at batch 20 on 60,000 images
    runs, cells = 36, 78  # 3 seeds x 12 cells; the cells' summed weights
    assert set(hours) == {f"{s}/{m}" for s, m in step_ms}
    assert hours["alone/eager"] == pytest.approx((3 * cells * steps * 1e-3 + runs * 100)
                                                 / 3600)
    assert hours["alone/graphed"] == pytest.approx((3 * cells * steps * 0.5e-3 + runs * 50)
                                                   / 3600)
    # processes and stacks: a cell's seeds train at once, at the measured step time
    assert hours["processes/eager"] == pytest.approx((cells * steps * 2e-3 + runs * 100)
                                                     / 3600)
    assert hours["stacked/compiled"] == pytest.approx((cells * steps * 2.5e-3 + runs * 50)
                                                      / 3600)
    assert hours["stacked/graphed"] == pytest.approx((cells * steps * 0.25e-3 + runs * 50)
                                                     / 3600)
    # a case not measured, or stacks of 4 measured for 3 seeds: no projection
    missing = gt.project(gt.Report("test", "x", measures[1:], evaluation=evaluation))
    assert missing["alone/eager"] is None and missing["alone/graphed"] is not None
    four = [gt.Measure(m.case, m.setting, m.mode, 4 if m.setting == "stacked" else m.runs,
                       m.samples_per_s, m.step_ms) for m in measures]
    other = gt.project(gt.Report("test", "x", four, evaluation=evaluation))
    assert other["stacked/eager"] is None and other["alone/eager"] == hours["alone/eager"]
