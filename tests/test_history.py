"""The history store (issue 26, part 1): `track` appends each run of a suite to the history
at the checked-out commit, keyed by (commit, run_id, machine, execution), skips what is
tracked at that commit and machine, runs again at another commit, and keeps a dirty tree's
rows apart. The commits come from a throwaway git repository; the runs are real (digits)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import history
from bench.errors import BenchError
from bench.runner import RunOptions
from bench.suite import load_suite

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = """
[suite]
name = "tiny"
description = "two seeds of a tiny VAE on digits"
seeds = [0, 1]

[base]
dataset = "digits"
train_size = 100
test_size = 20
hidden = [[8]]
latent = [2]
epochs = 1
batch_size = 50
k_eval = 5
"""


_CLOCK = iter(range(1_700_000_000, 1_800_000_000, 3600))  # one commit an hour, in order


def git(repo: Path, *args: str) -> str:
    stamp = f"{next(_CLOCK)} +0000"  # commits made within one second still have an order
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin:/usr/local/bin",
           "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env,
                         check=True)
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    (path / "code.py").write_text("x = 1\n")
    git(path, "add", "code.py")
    git(path, "commit", "-q", "-m", "first commit")
    return path


def commit(repo: Path, text: str, subject: str) -> str:
    (repo / "code.py").write_text(text)
    git(repo, "commit", "-q", "-am", subject)
    return git(repo, "rev-parse", "HEAD")


def test_track_appends_each_commits_runs_and_skips_what_it_already_tracked(tmp_path, repo):
    # Guards against: a run tracked twice at one commit (history double-counts its seeds),
    # a run not run again at a new commit (the store's cache serving the old commit's
    # result as the new one's: the history would never see a change), rows without the
    # commit that produced them.
    (tmp_path / "tiny.toml").write_text(SUITE)
    suite = load_suite(tmp_path / "tiny.toml")
    options = RunOptions(results=tmp_path / "results", executor="local", show_progress=False)
    first = history.track(suite, options, repo, machine="box")
    assert (first.ran, first.skipped, first.statuses) == (2, 0, {"finished": 2})
    again = history.track(suite, options, repo, machine="box")
    assert (again.ran, again.skipped, again.path) == (0, 2, None)
    other_machine = history.track(suite, options, repo, machine="other box")
    assert other_machine.ran == 2

    second = commit(repo, "x = 2\n", "second commit")
    later = history.track(suite, options, repo, machine="box")
    assert later.ran == 2 and later.commit.sha == second

    rows = history.load_history(tmp_path / "results", "tiny")
    assert len(rows) == 6
    assert rows.groupby(["hist_commit", "hist_machine"]).size().tolist() == [2, 2, 2]
    assert list(rows["hist_subject"].iloc[-2:]) == ["second commit"] * 2  # newest last
    assert set(rows["hist_execution"]) == {"eager"} and not rows["hist_dirty"].any()
    # the same runs at both commits (same run_ids), each its own history point, each run
    # executed anew (never the work store of another commit or machine served as cached)
    assert rows.groupby("run_id")["hist_commit"].nunique().tolist() == [2, 2]
    assert rows.groupby("run_id")["sys_start_time"].nunique().tolist() == [3, 3]
    files = sorted(p.name for p in history.history_dir(tmp_path / "results", "tiny").iterdir())
    assert len(files) == 3  # one file per (commit, machine)


def test_a_dirty_tree_is_refused_unless_allowed_and_then_kept_apart(tmp_path, repo):
    # Guards against: results of uncommitted code recorded as the commit's (a later clean
    # track would skip them as already tracked and the history would hold code nobody can
    # check out).
    (tmp_path / "tiny.toml").write_text(SUITE)
    suite = load_suite(tmp_path / "tiny.toml")
    options = RunOptions(results=tmp_path / "results", executor="local", show_progress=False)
    (repo / "code.py").write_text("x = 'edited'\n")
    with pytest.raises(BenchError, match="uncommitted changes.*--allow-dirty"):
        history.track(suite, options, repo, machine="box")
    dirty = history.track(suite, options, repo, machine="box", allow_dirty=True)
    assert dirty.ran == 2 and dirty.commit.dirty
    assert history.track(suite, options, repo, machine="box", allow_dirty=True).ran == 2
    git(repo, "checkout", "-q", "code.py")  # clean again: the commit's own runs still run
    clean = history.track(suite, options, repo, machine="box")
    assert clean.ran == 2 and not clean.commit.dirty
    rows = history.load_history(tmp_path / "results", "tiny")
    assert sorted(rows["hist_dirty"]) == [False, False, True, True]  # the dirty rerun replaced


def test_an_unreadable_history_file_is_named(tmp_path):
    folder = history.history_dir(tmp_path, "tiny")
    folder.mkdir(parents=True)
    (folder / "abc-box.parquet").write_bytes(b"not parquet")
    with pytest.raises(BenchError, match="abc-box.parquet is unreadable"):
        history.load_history(tmp_path, "tiny")



def test_an_unreadable_history_file_is_named_when_tracking(tmp_path):
    """The commit's own file and a pack, read to skip tracked runs and to append, are named
    as load_history names them, not a pyarrow traceback; the bad file is left as it was."""
    import pandas as pd

    commit = history.Commit("a" * 40, "2026-01-01T00:00:00+00:00", "c", False)
    own = history.history_file(tmp_path, "tiny", commit, "box")
    own.parent.mkdir(parents=True)
    own.write_bytes(b"not parquet")
    with pytest.raises(BenchError, match=f"{own.name} is unreadable"):
        history.tracked_run_ids(tmp_path, "tiny", commit, "box")
    with pytest.raises(BenchError, match=f"{own.name} is unreadable"):
        history.append(tmp_path, "tiny", commit, "box", pd.DataFrame({"run_id": ["r"]}))
    assert own.read_bytes() == b"not parquet"
    own.unlink()
    pack = own.parent / f"{history.PACK_PREFIX}1.parquet"
    pack.write_bytes(b"not parquet")
    with pytest.raises(BenchError, match=f"{pack.name} is unreadable"):
        history.tracked_run_ids(tmp_path, "tiny", commit, "box")

def test_track_outside_a_git_checkout_is_one_line(tmp_path):
    (tmp_path / "tiny.toml").write_text(SUITE)
    suite = load_suite(tmp_path / "tiny.toml")
    options = RunOptions(results=tmp_path / "results", executor="local", show_progress=False)
    with pytest.raises(BenchError, match="not a git checkout"):
        history.track(suite, options, tmp_path, machine="box")


def test_loose_files_are_packed_and_a_packed_commit_is_still_tracked(tmp_path, monkeypatch):
    # Guards against: a history of 1,000 files taking seconds to open (each Parquet file
    # costs milliseconds whatever its size), and packing that loses a row, doubles one, or
    # forgets that a packed commit was tracked (it would run again and be counted twice).
    import pandas as pd

    monkeypatch.setattr(history, "PACK_EVERY", 3)
    commits = [history.Commit(f"{i:040x}", f"2026-01-{i + 1:02d}T00:00:00+00:00", f"c{i}",
                              False) for i in range(7)]
    for i, commit in enumerate(commits):
        runs = pd.DataFrame([{"run_id": f"r{seed}", "variant": "v", "status": "finished",
                              "metric_test_ll": -90.0 - i} for seed in (0, 1)])
        history.append(tmp_path, "s", commit, "box", runs)
    names = sorted(p.name for p in history.history_dir(tmp_path, "s").iterdir())
    assert sum(n.startswith(history.PACK_PREFIX) for n in names) == 2 and len(names) == 3
    rows = history.load_history(tmp_path, "s")
    assert len(rows) == 14 and list(rows["hist_subject"][::2]) == [f"c{i}" for i in range(7)]
    assert history.tracked_run_ids(tmp_path, "s", commits[0], "box") == {"r0", "r1"}
    assert history.tracked_run_ids(tmp_path, "s", commits[0], "other") == set()


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    """A throwaway repository of this project's own tree (bench/, suites/ and a tiny suite),
    five commits: the project, notes, one that plants a real behaviour change (the decoder's
    output bias no longer initialised to the pixel means' logits), more notes, a PROTOCOL
    bump. Returns (repo, commits oldest first, the planted commit, the bump, old protocol)."""
    from bench.provenance import REPO_ROOT

    repo = tmp_path_factory.mktemp("copy")
    files = [str(p.relative_to(REPO_ROOT)) for top in ("bench", "suites")
             for p in (REPO_ROOT / top).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]  # also in a copy without .git
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes((REPO_ROOT / name).read_bytes())
    (repo / "suites" / "tiny.toml").write_text(SUITE.replace("seeds = [0, 1]",
                                                             "seeds = [0, 1, 2]"))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the project")

    def edit(path: Path, old: str, new: str, subject: str) -> str:
        text = path.read_text()
        assert text.count(old) == 1
        path.write_text(text.replace(old, new))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", subject)
        return git(repo, "rev-parse", "HEAD")

    (repo / "NOTES").write_text("")
    edit(repo / "NOTES", "", "a commit that changes nothing a run computes\n", "notes")
    planted = edit(repo / "bench" / "models" / "init.py",
                   "    bias.copy_(output_bias(mean).to(bias.dtype))",
                   "    pass  # the output bias left at zero", "forget the output bias")
    edit(repo / "NOTES", "nothing", "still nothing", "more notes")
    config = repo / "bench" / "config.py"
    protocol = int(next(line for line in config.read_text().splitlines()
                        if line.startswith("PROTOCOL = ")).split("=")[1])
    bumped = edit(config, f"PROTOCOL = {protocol}\n", f"PROTOCOL = {protocol + 1}\n",
                  "bump the protocol")
    shas = [git(repo, "rev-list", "--max-parents=0", "HEAD"),
            *history.commits_in(repo, "HEAD~4..HEAD")]
    return repo, shas, planted, bumped, protocol


def test_track_over_a_copy_of_the_project_finds_a_planted_regression_and_a_protocol_bump(
        tmp_path, project_copy):
    # Issue 26's acceptance, its track half: each commit of the copy tracked with its own
    # code (a worktree, its own suite file); the history names the planted commit as the
    # regression and carries the protocol change.
    # Guards against: tracking a commit with today's code (the planted change would never
    # show), or the protocol of the rows not being the commit's.
    from bench import steps

    repo, shas, planted, bumped, protocol = project_copy
    results = tmp_path / "results"
    for sha in shas:
        done = history.track_commit("tiny", None, sha, results, repo, machine="box",
                                    executor="local")
        assert done.statuses == {"finished": 3}, done
    rows = history.load_history(results, "tiny")
    assert list(dict.fromkeys(rows["hist_commit"])) == shas  # oldest first
    assert rows.groupby("hist_commit", sort=False)["protocol"].first().tolist() == [
        protocol] * 4 + [protocol + 1]
    found = steps.find_steps(rows)
    regressions = found[(found["verdict"] == "regressed") & (found["metric"] == "test_ll")]
    assert regressions["commit"].tolist() == [planted], found
    assert bumped not in set(found["commit"])  # the bump moved no number: no step at all
    declared = steps.declared_changes(rows)
    assert declared[["commit", "reason"]].values.tolist() == [
        [bumped, f"protocol {protocol} -> {protocol + 1}"]]  # on the page, never an alarm


def test_bisect_names_the_planted_commit_and_reuses_the_history(tmp_path, project_copy):
    # Issue 26's acceptance, its bisect half. Guards against: a bisection that probes with
    # today's code, decides on noise, or names the last good commit instead of the first
    # bad one; and one that reruns what the history already holds.
    from bench.bisection import bisect

    repo, shas, planted, _, _ = project_copy
    said: list[str] = []
    found = bisect(repo, tmp_path, "tiny", "vae", "test_ll", shas[0], shas[-1],
                   machine="box", executor="local", say=said.append)
    assert found.verdict == "found" and found.first_bad.sha == planted
    assert found.last_good.sha == shas[1] and "forget the output bias" in said[-1]
    ran = sum(line.startswith("  ran ") for line in said)
    assert ran == 4  # both ends, then the planted commit and the one before it
    again: list[str] = []
    assert bisect(repo, tmp_path, "tiny", "vae", "test_ll", shas[0], shas[-1], machine="box",
                  executor="local", say=again.append).first_bad.sha == planted
    assert not any(line.startswith("  ran ") for line in again)  # all from the history


def test_bisect_adds_seeds_to_a_noisy_probe_and_says_undecided_rather_than_guess(
        tmp_path, monkeypatch):
    # Guards against: a bisection that calls a probe sitting between the two ends good or
    # bad on noise (it must measure it with more seeds, then give up with the range).
    from bench import bisection

    commits = [history.Commit(f"{c}" * 40, "2026-01-01T00:00:00+00:00", f"commit {c}", False)
               for c in "abc"]
    monkeypatch.setattr(history, "current_commit",
                        lambda repo, rev="HEAD": next(c for c in commits if c.sha == rev))
    monkeypatch.setattr(history, "commits_in", lambda repo, spec: [c.sha for c in commits[1:]])
    rng = np.random.default_rng(0)
    centre = {"a": -90.0, "b": -90.5, "c": -91.0}  # b: exactly between the ends
    measured: dict[str, tuple] = {}

    def values(results, suite, variant, metric, commit, machine):
        return measured.get(commit.sha, ())

    def track(suite, budget, sha, results, repo, *, seeds=None, **kw):
        n = seeds or 3
        measured[sha] = tuple(centre[sha[0]] + rng.normal(0, 0.3, n))
        return history.Tracked(history.current_commit(repo, sha), "box", n, 0, {}, 0.0, None)

    monkeypatch.setattr(bisection, "_values", values)
    monkeypatch.setattr(history, "track_commit", track)
    said: list[str] = []
    found = bisection.bisect(tmp_path, tmp_path, "s", "v", "test_ll", "a" * 40, "c" * 40,
                             max_seeds=12, say=said.append)
    assert found.verdict == "undecided" and found.first_bad is None, said
    assert [c.sha[0] for c in found.undecided] == ["a", "c"]
    assert [len(p.values) for p in found.probes if p.commit.sha[0] == "b"] == [3, 6, 12]
    assert said[-1].startswith("undecided between")


def test_bisect_stops_undecided_when_more_seeds_do_not_come(tmp_path, monkeypatch):
    # Guards against: a probe asking for more seeds that never come (the extra runs fail)
    # being retrained forever instead of ending undecided with the range.
    from bench import bisection

    commits = [history.Commit(f"{c}" * 40, "2026-01-01T00:00:00+00:00", f"commit {c}", False)
               for c in "abc"]
    monkeypatch.setattr(history, "current_commit",
                        lambda repo, rev="HEAD": next(c for c in commits if c.sha == rev))
    monkeypatch.setattr(history, "commits_in", lambda repo, spec: [c.sha for c in commits[1:]])
    centre = {"a": (-90.2, -89.8, -90.0), "b": (-90.8, -90.2, -90.5), "c": (-91.2, -90.8, -91.0)}
    tracked: list[str] = []

    def track(suite, budget, sha, results, repo, *, seeds=None, **kw):
        tracked.append(sha[0])
        if len(tracked) > 10:
            raise AssertionError(f"retrained without end: {tracked}")
        return history.Tracked(history.current_commit(repo, sha), "box", 3, 0, {}, 0.0, None)

    monkeypatch.setattr(bisection, "_values",
                        lambda results, suite, variant, metric, commit, machine:
                        centre[commit.sha[0]])  # never more than 3 seeds
    monkeypatch.setattr(history, "track_commit", track)
    said: list[str] = []
    found = bisection.bisect(tmp_path, tmp_path, "s", "v", "test_ll", "a" * 40, "c" * 40,
                             max_seeds=12, say=said.append)
    assert found.verdict == "undecided" and tracked == ["b"], said
    assert said[-1].startswith("undecided between")


def test_the_history_is_ordered_by_the_commits_instants_across_time_zones(tmp_path):
    # Guards against: ordering by the date's text, where git writes each committer's own
    # offset: 10:00+02:00 (08:00 UTC) sorts after 09:00+00:00 as text, before it in time.
    import pandas as pd

    for sha, date in (("b" * 40, "2026-03-01T09:00:00+00:00"),
                      ("a" * 40, "2026-03-01T10:00:00+02:00")):
        runs = pd.DataFrame([{"run_id": "r", "variant": "v", "status": "finished",
                              "metric_test_ll": -90.0}])
        history.append(tmp_path, "s", history.Commit(sha, date, sha[0], False), "box", runs)
    assert history.load_history(tmp_path, "s")["hist_subject"].tolist() == ["a", "b"]
