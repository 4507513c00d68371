"""The results store: what is written is read back intact, by pandas, pyarrow and DuckDB,
finished results are never lost to a later write, and damage is reported by file name."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from bench import store
from bench.config import RunConfig
from bench.errors import BenchError

PROVENANCE = {"git_commit": "abc123", "git_dirty": False, "ray": None, "torch_threads": 1}


def finished_row(cfg: RunConfig, suite: str = "s1", **metrics) -> dict:
    values = {"test_ll": -90.5, "active_units": 12, "active_units_by_layer": [12],
              "diverged_epoch": None, **metrics}
    return store.run_row(suite=suite, variant=cfg.label, config=cfg, status="finished",
                         metrics=values, provenance=PROVENANCE, budget="smoke")


def failed_row(cfg: RunConfig, suite: str = "s1", status: str = "failed") -> dict:
    return store.run_row(suite=suite, variant=cfg.label, config=cfg, status=status,
                         metrics={"epochs_done": 2}, provenance=PROVENANCE,
                         error="RuntimeError: boom", traceback="Traceback...\nRuntimeError")


def curves(n: int = 3, bound: float = -100.0) -> list[dict]:
    return [{"epoch": e, "lr": 1e-3, "train_bound": bound + e, "samples_per_s": 1e4,
             "wall_seconds": 0.5 * e} for e in range(1, n + 1)]


def temp_files(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if p.name.endswith(".tmp")]


def test_roundtrip_through_pandas_and_pyarrow_dataset(tmp_path):
    one = RunConfig()
    two = RunConfig(objective="iwae", k=5, hidden=((200, 200), (100, 100)), latent=(100, 50))
    # a diverged run first: its missing/None metrics must not break readers of the others
    diverged = store.run_row(suite="s1", variant="vae", config=RunConfig(seed=3),
                             status="diverged", metrics={"test_ll": None, "diverged_epoch": 2},
                             provenance=PROVENANCE)
    store.write_run(tmp_path, diverged, curves(2, bound=math.inf))
    path = store.write_run(tmp_path, finished_row(one), curves(3))
    assert path == tmp_path / "runs" / "suite=s1" / f"{one.run_id}.parquet"
    store.write_run(tmp_path, finished_row(two, suite="s2", test_ll=-85.25), curves(4))

    runs = store.load_runs(tmp_path).set_index("run_id")
    assert len(runs) == 3
    row = runs.loc[one.run_id]
    assert row["suite"] == "s1" and row["status"] == "finished" and row["variant"] == "vae"
    assert row["schema_version"] == store.SCHEMA_VERSION == 1
    assert row["config_hash"] == one.config_hash and row["budget"] == "smoke"
    assert row["cfg_hidden"] == [[200, 200]] and row["cfg_latent"] == [50]
    assert row["cfg_k_eval"] == 5000 and bool(row["cfg_analytic_kl"]) is True
    assert row["cfg_train_size"] is None or math.isnan(row["cfg_train_size"])
    assert row["metric_test_ll"] == -90.5 and row["metric_active_units"] == 12
    assert row["metric_active_units_by_layer"] == [12]
    assert row["sys_git_commit"] == "abc123" and not row["sys_git_dirty"]
    assert runs.loc[two.run_id, "cfg_hidden"] == [[200, 200], [100, 100]]
    assert runs.loc[two.run_id, "cfg_latent"] == [100, 50]
    assert runs.loc[two.run_id, "metric_test_ll"] == -85.25
    assert math.isnan(runs.loc[RunConfig(seed=3).run_id, "metric_test_ll"])
    assert runs.loc[RunConfig(seed=3).run_id, "status"] == "diverged"

    assert set(store.load_runs(tmp_path, suite="s2")["run_id"]) == {two.run_id}
    assert store.load_runs(tmp_path, suite="nosuchsuite").empty

    curves_df = store.load_curves(tmp_path)
    assert len(curves_df) == 2 + 3 + 4
    ours = curves_df[curves_df["run_id"] == one.run_id].sort_values("epoch")
    assert ours["epoch"].tolist() == [1, 2, 3] and ours["train_bound"].tolist() == [-99, -98, -97]
    assert set(ours["suite"]) == {"s1"} and set(curves_df["schema_version"]) == {1}
    assert len(store.load_curves(tmp_path, suite="s2")) == 4

    dataset = ds.dataset(tmp_path / "runs", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert sorted(table.column("run_id").to_pylist()) == sorted(runs.index)
    assert sorted(table.column("suite").to_pylist()) == ["s1", "s1", "s2"]
    curves_table = ds.dataset(tmp_path / "curves", format="parquet", partitioning="hive")
    assert curves_table.count_rows() == 9


def test_duckdb_reads_the_store_directly(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    cfg = RunConfig()
    store.write_run(tmp_path, finished_row(cfg), curves(3))
    store.write_run(tmp_path, failed_row(RunConfig(seed=1), suite="s2"))
    glob = str(tmp_path / "runs" / "*" / "*.parquet")
    got = duckdb.sql(f"SELECT run_id, status FROM read_parquet('{glob}', union_by_name=true, "
                     "hive_partitioning=true) ORDER BY status").fetchall()
    assert got == [(RunConfig(seed=1).run_id, "failed"), (cfg.run_id, "finished")]


def test_finished_run_ids_lists_only_finished_runs_of_the_suite(tmp_path):
    done, failed, diverged, other = (RunConfig(seed=s) for s in range(4))
    store.write_run(tmp_path, finished_row(done))
    store.write_run(tmp_path, failed_row(failed))
    store.write_run(tmp_path, failed_row(diverged, status="diverged"))
    store.write_run(tmp_path, finished_row(other, suite="s2"))
    assert store.finished_run_ids(tmp_path, "s1") == {done.run_id}
    assert store.finished_run_ids(tmp_path, "s2") == {other.run_id}
    assert store.finished_run_ids(tmp_path, "empty") == set()
    assert store.finished_run_ids(tmp_path / "missing", "s1") == set()


def test_finished_rows_are_kept_and_writes_leave_no_temp_files(tmp_path):
    cfg = RunConfig()
    first = store.write_run(tmp_path, finished_row(cfg, test_ll=-1.0), curves(3))
    before = first.read_bytes()
    # neither a failed/diverged attempt nor a second finisher replaces a finished row
    assert store.write_run(tmp_path, failed_row(cfg), curves(1)) == first
    assert store.write_run(tmp_path, failed_row(cfg, status="diverged")) == first
    assert store.write_run(tmp_path, finished_row(cfg, test_ll=-2.0), curves(5)) == first
    assert first.read_bytes() == before
    assert len(store.load_curves(tmp_path)) == 3  # the curves stayed with their row
    # unless asked to
    store.write_run(tmp_path, finished_row(cfg, test_ll=-3.0), curves(5), replace_finished=True)
    runs = store.load_runs(tmp_path)
    assert runs["metric_test_ll"].tolist() == [-3.0] and len(store.load_curves(tmp_path)) == 5
    assert temp_files(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "runs" / "suite=s1").glob("*.parquet")) == [
        f"{cfg.run_id}.parquet"]


def test_curves_may_be_dataclass_records(tmp_path):
    @dataclasses.dataclass
    class Epoch:  # like bench.loop.EpochRecord
        epoch: int
        train_bound: float

    store.write_run(tmp_path, finished_row(RunConfig()), [Epoch(1, -91.0), Epoch(2, -92.0)])
    got = store.load_curves(tmp_path)
    assert got["train_bound"].tolist() == [-91.0, -92.0]
    assert set(got["run_id"]) == {RunConfig().run_id}


def test_a_failed_row_is_replaced_by_a_finished_one(tmp_path):
    cfg = RunConfig()
    store.write_run(tmp_path, failed_row(cfg), curves(2))
    store.write_run(tmp_path, failed_row(cfg, status="diverged"), curves(1))  # retries replace
    assert store.load_runs(tmp_path)["status"].tolist() == ["diverged"]
    store.write_run(tmp_path, finished_row(cfg), curves(4))
    runs = store.load_runs(tmp_path)
    assert runs["status"].tolist() == ["finished"] and runs["error"].isna().all()
    assert len(store.load_curves(tmp_path)) == 4
    assert store.finished_run_ids(tmp_path, "s1") == {cfg.run_id}
    # a finished row without curves does not inherit the failed attempt's curves
    other = RunConfig(seed=1)
    store.write_run(tmp_path, failed_row(other), curves(2))
    store.write_run(tmp_path, finished_row(other))
    assert other.run_id not in set(store.load_curves(tmp_path)["run_id"])
    assert temp_files(tmp_path) == []


def test_rows_are_validated(tmp_path):
    with pytest.raises(ValueError, match="status"):
        store.run_row(suite="s1", variant="v", config=RunConfig(), status="done", metrics={},
                      provenance={})
    with pytest.raises(ValueError, match="status"):
        store.write_run(tmp_path, {**finished_row(RunConfig()), "status": "ok"})
    with pytest.raises(BenchError, match="suite name"):
        store.write_run(tmp_path, finished_row(RunConfig(), suite="../escape"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.parquet"))


def _hammer(results: str, worker: int, shared: dict, n: int, step) -> None:
    """Write the shared run n times (failed, then finished with replace_finished=True,
    alternately) in step with the other worker, and n runs of our own; after each step
    worker 0 checks the stored row and curves (an AssertionError exits non-zero)."""
    cfg_shared = RunConfig(**shared)
    for i in range(n):
        mine = [{**c, "writer": worker, "attempt": i} for c in curves(50)]
        step.wait()
        if i % 2:
            row = finished_row(cfg_shared, writer=worker, attempt=i)
            store.write_run(Path(results), row, mine, replace_finished=True)
        else:
            row = {**failed_row(cfg_shared), "metric_writer": worker, "metric_attempt": i}
            store.write_run(Path(results), row, mine)
        own = RunConfig(seed=1000 * (worker + 1) + i)
        store.write_run(Path(results), finished_row(own, writer=worker), curves(2))
        step.wait()
        if worker == 0:  # nobody writes now: the store must be consistent
            try:
                _check_shared(Path(results), cfg_shared.run_id, finished_expected=i >= 1)
            except BaseException:
                step.abort()  # release the other worker at once
                raise
        step.wait()


def _check_shared(results: Path, run_id: str, *, finished_expected: bool) -> None:
    runs = store.load_runs(results)
    row = runs[runs["run_id"] == run_id].iloc[0]
    assert row["status"] == "finished" or not finished_expected, "finished row replaced"
    got = store.load_curves(results)
    stored = got[got["run_id"] == run_id]
    assert len(stored) == 50
    assert set(stored["writer"]) == {row["metric_writer"]}, "curves of another writer"
    assert set(stored["attempt"]) == {row["metric_attempt"]}, "curves of another attempt"


def test_concurrent_writers_leave_exactly_one_consistent_row_per_run(tmp_path):
    n = 20
    shared = {"seed": 7}
    ctx = multiprocessing.get_context("spawn")
    step = ctx.Barrier(2, timeout=60)
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, shared, n, step))
             for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0], "a worker failed (its traceback is above)"

    files = sorted((tmp_path / "runs" / "suite=s1").glob("*.parquet"))
    assert len(files) == 1 + 2 * n
    runs = store.load_runs(tmp_path)
    assert len(runs) == len(set(runs["run_id"])) == 1 + 2 * n
    assert (runs["status"] == "finished").all()  # no failed write replaced a finished row
    _check_shared(tmp_path, RunConfig(**shared).run_id, finished_expected=True)
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_file_is_named_and_can_be_skipped(tmp_path, damage):
    good, bad = RunConfig(seed=0), RunConfig(seed=1)
    store.write_run(tmp_path, finished_row(good), curves(2))
    bad_path = store.write_run(tmp_path, finished_row(bad), curves(2))
    data = bad_path.read_bytes()
    bad_path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 50)

    with pytest.raises(BenchError) as err:
        store.load_runs(tmp_path)
    message = str(err.value)
    assert str(bad_path) in message and "corrupt" in message and "--skip-corrupt" in message
    assert "\n" not in message
    with pytest.raises(BenchError, match="corrupt results file"):
        store.finished_run_ids(tmp_path, "s1")

    with pytest.warns(UserWarning, match=str(bad_path.name)):
        runs = store.load_runs(tmp_path, skip_corrupt=True)
    assert runs["run_id"].tolist() == [good.run_id]
    with pytest.warns(UserWarning):
        assert store.finished_run_ids(tmp_path, "s1", skip_corrupt=True) == {good.run_id}
    # the curves are intact and load without complaint
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(store.load_curves(tmp_path)) == 4
    # a rerun replaces the damaged row
    store.write_run(tmp_path, finished_row(bad))
    assert len(store.load_runs(tmp_path)) == 2


def test_a_file_from_a_newer_vaebench_is_refused(tmp_path):
    cfg = RunConfig()
    path = store.write_run(tmp_path, finished_row(cfg))
    table = pq.read_table(path)
    index = table.column_names.index("schema_version")
    table = table.set_column(index, "schema_version", pa.array([99], pa.int64()))
    pq.write_table(table, path)
    with pytest.raises(BenchError, match="newer") as err:
        store.load_runs(tmp_path)
    assert str(path) in str(err.value)
    with pytest.raises(BenchError, match="newer"):
        store.finished_run_ids(tmp_path, "s1")
    with pytest.raises(BenchError, match="newer"):  # not corruption: skipping would hide it
        store.load_runs(tmp_path, skip_corrupt=True)


def test_older_files_are_migrated_on_load(tmp_path, monkeypatch):
    path = store.write_run(tmp_path, finished_row(RunConfig()))
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("schema_version"), "schema_version",
                             pa.array([1], pa.int64()))
    pq.write_table(table, path)
    monkeypatch.setattr(store, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(store, "_MIGRATIONS",
                        {2: lambda df: df.rename(columns={"metric_test_ll": "metric_ll"})})
    runs = store.load_runs(tmp_path)
    assert runs["metric_ll"].tolist() == [-90.5] and runs["schema_version"].tolist() == [2]


def test_results_dir_explicit_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEBENCH_RESULTS", raising=False)
    assert store.results_dir() == Path("results")
    monkeypatch.setenv("VAEBENCH_RESULTS", str(tmp_path / "env"))
    assert store.results_dir() == tmp_path / "env"
    assert store.results_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert store.results_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    # the loaders use it too
    store.write_run(tmp_path / "env", finished_row(RunConfig()))
    assert len(store.load_runs()) == 1 and store.load_runs(tmp_path / "explicit").empty


def test_an_empty_store_loads_as_an_empty_frame(tmp_path):
    runs = store.load_runs(tmp_path)
    assert runs.empty and {"run_id", "suite", "status"} <= set(runs.columns)
    assert store.load_curves(tmp_path / "missing").empty


def test_load_runs_accepts_a_single_parquet_file(tmp_path):
    a, b = RunConfig(seed=0), RunConfig(seed=1)
    path_a = store.write_run(tmp_path, finished_row(a), curves(2))
    store.write_run(tmp_path, finished_row(b))
    runs = store.load_runs(path_a)
    assert runs["run_id"].tolist() == [a.run_id] and runs["cfg_hidden"].tolist() == [[[200, 200]]]
    assert store.load_runs(str(path_a), suite="s1")["run_id"].tolist() == [a.run_id]
    assert store.load_runs(path_a, suite="other").empty
    curves_file = store.curves_path(tmp_path, "s1", a.run_id)
    assert store.load_curves(curves_file)["epoch"].tolist() == [1, 2]
    no_suite = tmp_path / "no-suite.parquet"  # a file without a suite column: no suite to pick
    pq.write_table(pq.read_table(path_a).drop_columns(["suite"]), no_suite)
    assert store.load_runs(no_suite)["run_id"].tolist() == [a.run_id]
    with pytest.raises(BenchError, match=r"no-suite.parquet: no suite column \(cannot select "
                       "suite 's1'\\)"):
        store.load_runs(no_suite, suite="s1")
    with pytest.warns(UserWarning, match="skipping corrupt results file .*no suite column"):
        assert store.load_curves(no_suite, suite="s1", skip_corrupt=True).empty
    with pytest.raises(BenchError, match="does not exist"):
        store.load_runs(tmp_path / "nope.parquet")


# ------------------------------------------------------------- durability (issue 14)
def spy_durability(monkeypatch, root: Path) -> list[tuple]:
    """Every os.fsync and os.replace, in order, each with the set of files under `root` that
    exist at that moment: ("fsync", path of the fd) and ("replace", src, dst, bytes of src)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name an fsynced descriptor")
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace
    existing = lambda: {p for p in root.rglob("*") if p.is_file()}

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")), existing()))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        src, dst = Path(src), Path(dst)
        events.append(("replace", src, dst, src.read_bytes(), existing()))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def assert_landed_atomically(events: list[tuple], final: Path) -> None:
    """`final` appeared only by one rename of a hidden temp file in its own directory that
    was fsynced before the rename, with the directory fsynced after it, and was not touched
    afterwards."""
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == final]
    assert len(renames) == 1, f"{final.name} was not renamed into place exactly once"
    at = renames[0]
    _, tmp, _, tmp_bytes, _ = events[at]
    assert tmp.parent == final.parent  # a rename within one file system, atomic
    assert tmp.name.startswith(".") and tmp.name.endswith(".tmp")  # readers skip it
    assert all(final not in e[-1] for e in events[: at + 1])  # not there before the rename
    assert any(e[0] == "fsync" and e[1] == tmp for e in events[:at])  # data on disk first
    assert any(e[0] == "fsync" and e[1] == final.parent for e in events[at + 1:])  # the name
    assert final.read_bytes() == tmp_bytes  # nothing written to it after the rename
    assert not tmp.exists()


def test_every_file_lands_by_rename_of_an_fsynced_temp_file(tmp_path, monkeypatch):
    # Guards against: a "simplified" _write_atomic that writes the Parquet file in place (a
    # crash or a concurrent reader then sees half a file: a corrupt run, or a finished run
    # read as missing), or that renames without fsyncing the data first (after a power cut
    # the rename can survive while the data does not: an empty file under a finished name).
    results = tmp_path / "results"
    events = spy_durability(monkeypatch, tmp_path)
    cfg = RunConfig()
    run_file = store.write_run(results, finished_row(cfg), curves(3))
    assert_landed_atomically(events, store.curves_path(results, "s1", cfg.run_id))
    assert_landed_atomically(events, run_file)
    # the curves land before the run row: a run file never exists without its curves
    order = [e[2] for e in events if e[0] == "replace"]
    assert order == [store.curves_path(results, "s1", cfg.run_id), run_file]
    # a baseline written by `vaebench baseline` too
    out = tmp_path / "baselines" / "s1.parquet"
    store.export_runs(results, "s1", out)
    assert_landed_atomically(events, out)
    assert temp_files(tmp_path) == []


# --------------------------------------------------------------- baselines (issue 14)
def row_at(cfg: RunConfig, status: str, budget: str, suite: str = "s1") -> dict:
    error = None if status == "finished" else "RuntimeError: boom"
    return store.run_row(suite=suite, variant=cfg.label, config=cfg, status=status,
                         metrics={"test_ll": -90.0 - cfg.seed}, provenance=PROVENANCE,
                         error=error, budget=budget)


def test_baseline_keeps_only_the_finished_runs_of_the_chosen_budget(tmp_path, capsys):
    # Guards against: `vaebench baseline` exporting failed or diverged rows (compare would
    # then hold candidates to a crashed run's metrics, or count its seeds), or ignoring
    # --budget (a cpu baseline mixed with smoke runs of the same variants: every later
    # comparison at cpu budget is against the wrong numbers).
    from bench.cli import main

    results = tmp_path / "results"
    cfgs = {seed: RunConfig(seed=seed) for seed in range(8)}
    rows = [
        row_at(cfgs[0], "finished", "cpu"), row_at(cfgs[1], "finished", "cpu"),
        row_at(cfgs[2], "failed", "cpu"), row_at(cfgs[3], "diverged", "cpu"),
        row_at(cfgs[4], "finished", "smoke"), row_at(cfgs[5], "failed", "smoke"),
        row_at(cfgs[6], "diverged", "smoke"),
        row_at(cfgs[7], "finished", "cpu", suite="s2"),  # another suite
    ]
    for row in rows:
        store.write_run(results, row)
    assert len(store.load_runs(results)) == 8

    def baseline(*flags: str) -> list[str]:
        out = tmp_path / "baseline.parquet"
        code = main(["baseline", "s1", "--results", str(results), "--out", str(out), *flags])
        assert code == 0 and capsys.readouterr().out.strip() == str(out)
        runs = store.load_runs(out)
        assert set(runs["status"]) == {"finished"} and set(runs["suite"]) == {"s1"}
        return sorted(runs["run_id"])

    assert baseline("--budget", "cpu") == sorted([cfgs[0].run_id, cfgs[1].run_id])
    assert baseline("--budget", "smoke") == [cfgs[4].run_id]
    assert baseline() == sorted([cfgs[0].run_id, cfgs[1].run_id, cfgs[4].run_id])
    # a budget with no finished run is an error, not an empty (or failed-only) baseline
    code = main(["baseline", "s1", "--results", str(results), "--budget", "paper",
                 "--out", str(tmp_path / "paper.parquet")])
    assert code == 2 and "no finished runs" in capsys.readouterr().err
    assert not (tmp_path / "paper.parquet").exists()
