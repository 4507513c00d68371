"""Export to the trackers: what TensorBoard's event reader and MLflow's client read back is what
the store holds (config, curves per epoch, final metrics, tags, sample grids, the report), a
second export adds nothing, a changed row replaces its stale copy, and a missing extra or an
unreachable tracking server is one line naming it."""

from __future__ import annotations

import io
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import export, store
from bench.cli import main
from bench.config import RunConfig
from bench.errors import BenchError

START, END = "2026-01-02T03:04:05+00:00", "2026-01-02T03:05:00+00:00"
PROVENANCE = {"git_commit": "abc123", "git_dirty": False, "start_time": START,
              "end_time": END, "wall_seconds": 55.0}

VAE = RunConfig(seed=0, train_size=200, hidden=((16,),), latent=(4,))
IWAE = RunConfig(objective="iwae", k=5, seed=1, hidden=((16,),), latent=(4,))
BROKEN = RunConfig(objective="iwae", k=5, seed=2, hidden=((16,),), latent=(4,))
OTHER = RunConfig(seed=0, beta=0.5)


def pixels(kind: str, i: int) -> list[float]:
    """Six distinct values in [0, 1] per image (2 x 3), some not multiples of 1/255."""
    base = {"prior": 0.0, "original": 0.3, "reconstruction": 0.6}[kind]
    return [round(base + 0.05 * i + 0.013 * j, 4) for j in range(6)]


def samples() -> list[dict]:
    return [{"kind": kind, "index": i, "height": 2, "width": 3, "pixels": pixels(kind, i)}
            for kind in ("prior", "original", "reconstruction") for i in range(3)]


def curves(bounds: list[float]) -> list[dict]:
    return [{"epoch": e, "lr": 1e-3, "train_bound": b, "samples_per_s": 1000.0 + e,
             "wall_seconds": 0.5 * e, "valid_bound": None}
            for e, b in enumerate(bounds, start=1)]


def row(cfg: RunConfig, suite: str, status: str = "finished", **metrics) -> dict:
    values = {"test_ll": -90.123456789, "active_units": 3, "active_units_by_layer": [3],
              "diverged_epoch": None, **metrics} if status == "finished" else {"epochs_done": 1}
    return store.run_row(suite=suite, variant=cfg.label, config=cfg, status=status,
                         metrics=values, provenance=PROVENANCE, budget="smoke",
                         error=None if status == "finished" else "RuntimeError: boom")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """Suite s1: a VAE with curves and samples, an IWAE with curves, a failed IWAE; suite s2:
    one run. A report page for s1 that links one of its two PNGs."""
    out = tmp_path / "results"
    store.write_run(out, row(VAE, "s1"), curves([-100.5, -95.25, -93.0625]), samples=samples())
    store.write_run(out, row(IWAE, "s1", test_ll=-88.5, rate=math.inf),
                    curves([-99.0, math.inf]))
    store.write_run(out, row(BROKEN, "s1", status="failed"))
    store.write_run(out, row(OTHER, "s2"), curves([-101.0]))
    report = out / "report"
    (report / "s1").mkdir(parents=True)
    (report / "s1" / "ll.png").write_bytes(b"\x89PNG fake ll")
    (report / "s1" / "unlinked.png").write_bytes(b"\x89PNG not on the page")
    (report / "s1.html").write_text('<a href="index.html">all</a><img src="s1/ll.png">')
    return out


def stored_runs(results: Path) -> dict[str, dict]:
    runs = store.load_runs(results)
    return {r["run_id"]: r for r in runs.to_dict("records")}


def expected_grid(kind: str) -> np.ndarray:
    """The grid the export must draw: 3 tiles of 2 x 3 in one row, 1-pixel separators."""
    grid = np.empty((4, 13, 3), dtype=np.uint8)
    grid[:] = (0x7A, 0xA6, 0xD6)
    for i in range(3):
        tile = np.rint(np.array(pixels(kind, i)).reshape(2, 3) * 255).astype(np.uint8)
        grid[1:3, 1 + 4 * i:4 + 4 * i] = tile[..., None]
    return grid


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ------------------------------------------------------------------------- TensorBoard
def read_tensorboard(run_dir: Path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = accumulator.EventAccumulator(str(run_dir), size_guidance={
        accumulator.SCALARS: 0, accumulator.IMAGES: 0, accumulator.TENSORS: 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    return acc, hparams


def event_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if "tfevents" in p.name)


def test_tensorboard_reads_back_what_the_store_holds(results, tmp_path):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    summary = export.export_store(results, export.TensorBoardExporter(tb))
    assert (summary.stored, summary.selected, summary.outcomes) == (4, 4, {"new": 4})
    runs = stored_runs(results)
    run_dirs = {p.parent.relative_to(tb).as_posix() for p in event_files(tb)}
    assert run_dirs == {f"s1/{VAE.label}/seed0-{VAE.run_id}", f"s1/{IWAE.label}/seed1-"
                        f"{IWAE.run_id}", f"s1/{BROKEN.label}/seed2-{BROKEN.run_id}",
                        f"s2/{OTHER.label}/seed0-{OTHER.run_id}"}

    acc, hparams = read_tensorboard(tb / "s1" / VAE.label / f"seed0-{VAE.run_id}")
    stored_curves = store.load_curves(results, suite="s1")
    mine = stored_curves[stored_curves["run_id"] == VAE.run_id].sort_values("epoch")
    for column in ("train_bound", "lr", "samples_per_s", "wall_seconds"):
        read = [(s.step, s.value) for s in acc.Scalars(f"epoch/{column}")]
        # TensorBoard scalars are float32: the stored float64 rounded once, exactly
        assert read == [(int(e), float(np.float32(v)))
                        for e, v in zip(mine["epoch"], mine[column], strict=True)], column
    assert "epoch/valid_bound" not in acc.Tags()["scalars"]  # all None: nothing to plot
    final = acc.Scalars("final/test_ll")
    assert [(s.step, s.value) for s in final] == [(3, float(np.float32(-90.123456789)))]
    assert acc.Scalars("final/active_units")[0].value == 3.0
    assert "final/active_units_by_layer" not in acc.Tags()["scalars"]  # a list: no scalar
    assert "final/diverged_epoch" not in acc.Tags()["scalars"]  # None

    vae = runs[VAE.run_id]
    assert hparams["k"] == 1 and hparams["beta"] == 1.0 and hparams["objective"] == "vae"
    assert hparams["train_size"] == 200 and hparams["analytic_kl"] is True
    assert hparams["hidden"] == "[[16]]" and hparams["latent"] == "[4]"
    assert "test_size" not in hparams  # unset (None) in the config: left out
    assert hparams["lr"] == vae["cfg_lr"] and hparams["adam_eps"] == vae["cfg_adam_eps"]
    assert {k: v for k, v in hparams.items() if k.startswith("vaebench/")} == {
        "vaebench/run_id": VAE.run_id, "vaebench/suite": "s1", "vaebench/variant": VAE.label,
        "vaebench/seed": "0", "vaebench/budget": "smoke", "vaebench/protocol":
        str(vae["protocol"]), "vaebench/status": "finished",
        "vaebench/config_hash": VAE.config_hash, "vaebench/git_commit": "abc123"}

    for kind in ("prior", "original", "reconstruction"):
        (image,) = acc.Images(f"samples/{kind}")
        assert (image.width, image.height, image.step) == (13, 4, 3)
        assert np.array_equal(decode_png(image.encoded_image_string), expected_grid(kind))

    iwae, _ = read_tensorboard(tb / "s1" / IWAE.label / f"seed1-{IWAE.run_id}")
    assert [s.step for s in iwae.Scalars("epoch/train_bound")] == [1]  # inf left out
    assert "final/rate" not in iwae.Tags()["scalars"] and iwae.Tags()["images"] == []
    _, broken = read_tensorboard(tb / "s1" / BROKEN.label / f"seed2-{BROKEN.run_id}")
    assert broken["vaebench/status"] == "failed" and broken["vaebench/error"] == \
        "RuntimeError: boom"


def test_tensorboard_export_twice_adds_nothing_and_a_rerun_row_replaces_its_copy(results,
                                                                                 tmp_path):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    exporter = export.TensorBoardExporter(tb)
    export.export_store(results, exporter)
    before = {p: p.stat().st_mtime_ns for p in event_files(tb)}
    again = export.export_store(results, exporter)
    assert again.outcomes == {"unchanged": 4}
    assert {p: p.stat().st_mtime_ns for p in event_files(tb)} == before  # not rewritten

    # the failed run is rerun and finishes: its copy is replaced, not kept stale or doubled
    store.write_run(results, row(BROKEN, "s1", test_ll=-87.0), curves([-98.0, -97.0]))
    third = export.export_store(results, exporter)
    assert third.outcomes == {"unchanged": 3, "updated": 1}
    assert len(event_files(tb)) == 4
    acc, hparams = read_tensorboard(tb / "s1" / BROKEN.label / f"seed2-{BROKEN.run_id}")
    assert hparams["vaebench/status"] == "finished" and "vaebench/error" not in hparams
    assert acc.Scalars("final/test_ll")[0].value == -87.0
    assert not (tb / export.TMP_DIR).exists()  # no work directory left behind
    forced = export.export_store(results, exporter, force=True)
    assert forced.outcomes == {"updated": 4} and len(event_files(tb)) == 4


def test_suite_and_filter_select_what_is_exported(results, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"

    def exported(*argv: str) -> set[str]:
        out = tmp_path / f"tb{len(list(tmp_path.iterdir()))}"
        assert main(["export", "tensorboard", str(out), "--results", str(results), *argv]) == 0
        return {p.parent.name.split("-", 1)[1] for p in event_files(out)}

    assert exported("--suite", "s2") == {OTHER.run_id}
    assert exported("--filter", "seed=0") == {VAE.run_id, OTHER.run_id}
    assert exported("--filter", "objective=iwae", "--filter", "k=5") == {IWAE.run_id,
                                                                       BROKEN.run_id}
    assert exported("--filter", "status=failed") == {BROKEN.run_id}
    assert exported("--suite", "s1", "--filter", f"variant={VAE.label}") == {VAE.run_id}
    assert exported("--filter", "hidden=[[16]]", "--filter", "train_size=200") == {VAE.run_id}
    capsys.readouterr()
    assert main(["export", "tensorboard", str(tb), "--results", str(results), "--suite",
                 "s1"]) == 0
    assert capsys.readouterr().out.strip() == \
        f"exported 3 of 3 stored runs to tensorboard {tb}: 3 new, 0 updated, 0 unchanged"
    for argv, message in ((["--filter", "bogus=1"], "unknown key 'bogus'"),
                          (["--filter", "seed=7"], "none of the 4 stored runs matches"),
                          (["--suite", "nosuch"], "no stored runs of suite nosuch")):
        assert main(["export", "tensorboard", str(tb), "--results", str(results), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("tracker, argv", [("tensorboard", ["export", "tensorboard", "tb"]),
                                           ("mlflow", ["export", "mlflow"])])
def test_a_missing_extra_is_one_line_naming_it(results, monkeypatch, capsys, tracker, argv):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import tracker` now fails
    assert main([*argv, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err == (f"vaebench: error: export to {tracker} needs the {tracker} extra: "
                   f"pip install 'vaebench[{tracker}]'\n")


# ------------------------------------------------------------------------------ MLflow
@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    pytest.importorskip("mlflow")
    # MLflow 3 keeps its file store (the one mlflow-skinny can use) behind this switch
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return (tmp_path / "mlruns").as_uri()


def mlflow_runs(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found is not None else []
    return client, {r.data.tags["vaebench.run_id"]: r for r in runs}


def test_mlflow_reads_back_what_the_store_holds(results, mlflow_uri, capsys):
    assert main(["export", "mlflow", "--tracking-uri", mlflow_uri, "--results",
                 str(results)]) == 0
    assert capsys.readouterr().out.strip().endswith(": 4 new, 0 updated, 0 unchanged")
    client, runs = mlflow_runs(mlflow_uri, "vaebench/s1")
    assert set(runs) == {VAE.run_id, IWAE.run_id, BROKEN.run_id}
    assert set(mlflow_runs(mlflow_uri, "vaebench/s2")[1]) == {OTHER.run_id}
    stored = stored_runs(results)
    run = runs[VAE.run_id]
    assert run.info.run_name == f"s1/{VAE.label}/seed0" and run.info.status == "FINISHED"
    assert run.info.start_time == 1767323045000 and run.info.end_time == 1767323100000
    tags = run.data.tags
    assert {k: tags[k] for k in ("vaebench.run_id", "vaebench.git_commit", "vaebench.budget",
                                 "vaebench.protocol", "vaebench.status", "vaebench.seed",
                                 "mlflow.source.git.commit")} == {
        "vaebench.run_id": VAE.run_id, "vaebench.git_commit": "abc123",
        "vaebench.budget": "smoke", "vaebench.protocol": str(stored[VAE.run_id]["protocol"]),
        "vaebench.status": "finished", "vaebench.seed": "0",
        "mlflow.source.git.commit": "abc123"}
    params = run.data.params
    assert {k: params[k] for k in ("objective", "k", "beta", "hidden", "latent", "train_size",
                                   "analytic_kl", "seed")} == {
        "objective": "vae", "k": "1", "beta": "1.0", "hidden": "[[16]]", "latent": "[4]",
        "train_size": "200", "analytic_kl": "True", "seed": "0"}
    assert "test_size" not in params
    assert params["lr"] == str(stored[VAE.run_id]["cfg_lr"])

    stored_curves = store.load_curves(results, suite="s1")
    mine = stored_curves[stored_curves["run_id"] == VAE.run_id].sort_values("epoch")
    for column in ("train_bound", "samples_per_s", "wall_seconds"):
        history = client.get_metric_history(run.info.run_id, f"epoch/{column}")
        assert [(m.step, m.value) for m in history] == [
            (int(e), float(v)) for e, v in zip(mine["epoch"], mine[column], strict=True)]
    assert run.data.metrics["final/test_ll"] == -90.123456789  # float64, exactly
    assert run.data.metrics["final/active_units"] == 3.0
    assert not any(k.endswith(("active_units_by_layer", "diverged_epoch", "valid_bound"))
                   for k in run.data.metrics)

    def artifacts(path: str | None = None) -> set[str]:
        out = set()
        for item in client.list_artifacts(run.info.run_id, path):
            out |= artifacts(item.path) if item.is_dir else {item.path}
        return out

    assert artifacts() == {"samples/prior.png", "samples/original.png",
                           "samples/reconstruction.png", "report/s1.html", "report/s1/ll.png"}
    local = Path(client.download_artifacts(run.info.run_id, "samples/prior.png"))
    assert np.array_equal(decode_png(local.read_bytes()), expected_grid("prior"))
    broken = runs[BROKEN.run_id]
    assert broken.info.status == "FAILED" and broken.data.tags["vaebench.error"] == \
        "RuntimeError: boom"
    assert runs[IWAE.run_id].data.metrics["final/test_ll"] == -88.5
    assert "final/rate" not in runs[IWAE.run_id].data.metrics  # inf: not a finite number


def test_mlflow_export_twice_adds_nothing_and_replaces_stale_or_partial_runs(results,
                                                                            mlflow_uri):
    exporter = export.MlflowExporter(mlflow_uri, experiment="all")
    assert export.export_store(results, exporter).outcomes == {"new": 4}
    again = export.export_store(results, export.MlflowExporter(mlflow_uri, experiment="all"))
    assert again.outcomes == {"unchanged": 4}
    client, runs = mlflow_runs(mlflow_uri, "all")
    assert len(client.search_runs([client.get_experiment_by_name("all").experiment_id])) == 4

    # a rerun landed a new row; an interrupted export left a run without its fingerprint
    store.write_run(results, row(BROKEN, "s1", test_ll=-87.0), curves([-98.0]))
    client.delete_tag(runs[VAE.run_id].info.run_id, export.FINGERPRINT_TAG)
    third = export.export_store(results, export.MlflowExporter(mlflow_uri, experiment="all"))
    assert third.outcomes == {"updated": 2, "unchanged": 2}
    client, runs = mlflow_runs(mlflow_uri, "all")
    assert len(runs) == 4 and len(client.search_runs(
        [client.get_experiment_by_name("all").experiment_id])) == 4
    assert runs[BROKEN.run_id].info.status == "FINISHED"
    assert runs[BROKEN.run_id].data.metrics["final/test_ll"] == -87.0
    assert export.FINGERPRINT_TAG in runs[VAE.run_id].data.tags


# ---------------------------------------------------------------------- run --export
TINY = """
[suite]
name = "tiny"
description = "export test"
seeds = [0, 1]

[base]
dataset = "digits"
hidden = [[8]]
latent = [2]
train_size = 100
test_size = 20
epochs = 2
k_eval = 5
"""


def test_run_export_sends_each_landed_run_and_a_failing_tracker_loses_no_run(tmp_path,
                                                                            capsys):
    pytest.importorskip("tensorboard")
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY)
    results, tb = tmp_path / "r", tmp_path / "tb"
    argv = ["run", str(suite), "--results", str(results), "--executor", "local",
            "--no-progress"]
    assert main([*argv, "--export", f"tensorboard={tb}"]) == 0
    runs = store.load_runs(results, suite="tiny")
    assert len(runs) == 2
    landed = {p.parent.name.split("-", 1)[1] for p in event_files(tb)}
    assert landed == set(runs["run_id"])
    acc, hparams = read_tensorboard(event_files(tb)[0].parent)
    assert [s.step for s in acc.Scalars("epoch/train_bound")] == [1, 2]
    assert set(acc.Tags()["images"]) >= {"samples/prior", "samples/reconstruction"}
    # what was sent as each run landed is what an export of the whole store would send
    later = export.export_store(results, export.TensorBoardExporter(tb))
    assert later.outcomes == {"unchanged": 2}

    # a tracker that fails: one warning line, no more tries in this grid, every run stored
    from bench.runner import RunOptions, run_suite
    from bench.suite import load_suite

    class Broken:
        tracker, target, calls = "mlflow", "http://nowhere", 0

        def export(self, run, *, force=False):
            Broken.calls += 1
            raise ConnectionError("refused")

    capsys.readouterr()
    other = tmp_path / "r2"
    summary = run_suite(load_suite(suite), RunOptions(results=other, executor="local",
                                                      show_progress=False),
                        on_stored=export.export_each(other, [Broken()]))
    assert summary.statuses == {"finished": 2}
    assert len(store.load_runs(other, suite="tiny")) == 2
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and Broken.calls == 1
    assert "is stored but could not be exported to mlflow http://nowhere: refused" in warnings[0]


def test_run_export_with_a_missing_extra_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    results = tmp_path / "r"
    assert main(["run", "smoke", "--results", str(results), "--executor", "local",
                 "--no-progress", "--export", "mlflow=sqlite:///x.db"]) == 2
    assert "needs the mlflow extra" in capsys.readouterr().err
    assert store.load_runs(results).empty
    assert main(["run", "smoke", "--results", str(results), "--export", "wandb"]) == 2
    assert "expected mlflow, mlflow=URI or tensorboard=DIR" in capsys.readouterr().err


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_without_retries(monkeypatch):
    """MLflow's client failing at its first refused connection, as it does after ~4 minutes
    of retries by default: without the probe these tests fail (on MLflow's own message) in
    a second instead of hanging."""
    pytest.importorskip("mlflow")
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy",
                  "NO_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def test_an_unreachable_tracking_server_is_one_line_before_anything_runs(
        results, tmp_path, mlflow_without_retries, capsys):
    # Guards against: an export to a server that is down waiting out MLflow's retries
    # (minutes) for its error, and `vaebench run --export` training the whole grid first.
    uri = f"http://127.0.0.1:{closed_port()}"
    line = f"vaebench: error: mlflow tracking server {uri} is unreachable: Connection refused\n"
    assert main(["export", "mlflow", "--tracking-uri", uri, "--results", str(results)]) == 2
    assert capsys.readouterr().err == line
    other = tmp_path / "r2"
    assert main(["run", "smoke", "--results", str(other), "--executor", "local",
                 "--no-progress", "--export", f"mlflow={uri}"]) == 2
    assert capsys.readouterr().err == line
    assert store.load_runs(other).empty and not (other / "logs").exists()  # nothing trained


def test_a_tracking_server_gone_mid_grid_fails_the_next_export_at_once(
        results, mlflow_without_retries):
    # Guards against: a server that went away after the start costing MLflow's retries
    # (minutes) in the middle of a grid.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        exporter = export.MlflowExporter(uri)  # reachable now: the probe connects
    run = export.load_exports(results, suites=["s1"])[0][0]
    with pytest.raises(BenchError) as caught:
        exporter.export(run)
    assert str(caught.value) == f"mlflow tracking server {uri} is unreachable: Connection refused"


def test_the_probe_goes_where_the_client_would_connect(monkeypatch):
    # Guards against: a probe that connects straight to a server the environment reaches
    # through a proxy (refusing a working setup, or passing a dead proxy).
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        uri = f"http://127.0.0.1:{server.getsockname()[1]}/prefix"
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        export.probe_server(uri)  # no proxy: the server itself
        proxy = closed_port()
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy}")
        with pytest.raises(BenchError) as caught:
            export.probe_server(uri)
        assert str(caught.value) == (f"mlflow tracking server {uri} is unreachable through "
                                     f"the proxy 127.0.0.1:{proxy}: Connection refused")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        export.probe_server(uri)  # bypassed: the server again
    for uri, message in (("http://127.0.0.1:99999", "Port out of range 0-65535"),
                         ("https:///x", "no host")):
        with pytest.raises(BenchError, match=f"^mlflow tracking URI {uri}: {message}$"):
            export.probe_server(uri)
    with pytest.raises(BenchError) as caught:
        export.probe_server("http://[::1")
    assert str(caught.value) == "mlflow tracking URI http://[::1: Invalid IPv6 URL"
    export.probe_server("sqlite:///nowhere/mlflow.db")  # local stores are not probed
    export.probe_server(f"file:///127.0.0.1:{closed_port()}")


def test_a_malformed_tracking_uri_is_one_line(results, tmp_path, mlflow_without_retries,
                                              capsys):
    # Guards against: a URI MLflow's client cannot even parse (a ValueError) being a
    # traceback, from `vaebench export mlflow` and from `vaebench run --export`.
    line = "vaebench: error: mlflow tracking URI http://[::1: Invalid IPv6 URL\n"
    assert main(["export", "mlflow", "--tracking-uri", "http://[::1", "--results",
                 str(results)]) == 2
    assert capsys.readouterr().err == line
    other = tmp_path / "r2"
    assert main(["run", "smoke", "--results", str(other), "--executor", "local",
                 "--no-progress", "--export", "mlflow=http://[::1"]) == 2
    assert capsys.readouterr().err == line
    assert store.load_runs(other).empty


def test_report_files_are_the_suite_page_and_what_it_links(results):
    files = export.report_files(results / "report", "s1")
    assert [rel for _, rel in files] == ["s1.html", "s1/ll.png"]
    assert export.report_files(results / "report", "s2") == []
