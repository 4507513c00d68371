"""Runners sharing a store, on Ray (issue 27, part 6): the Ray driver keeps `slots + 1` tasks
claimed and in flight, skips runs another runner holds, waits for them once only others'
runs are left, and takes over claims that went stale; tests/test_claims.py tests the claims
themselves and the in-process executor. A file of its own, after tests/test_runner.py, so
that a whole test session starts one embedded Ray for both (the `ray_session` fixture)."""

from __future__ import annotations

import os
import threading
import time

from test_claims import HOST, TOYS, _wait_for, dead_pid, trainings, write_claim

from bench import store
from bench.claims import Claims
from bench.cli import main
from bench.suite import load_suite


def test_a_ray_runner_waits_for_a_live_claim_and_takes_over_stale_ones(ray_session, tmp_path,
                                                                       capsys):
    """The Ray path (slots + 1 tasks claimed and in flight) meets, in one grid of four toys:
    a run another runner holds alive and then stores (waited for, never trained here), a
    run whose runner stops heartbeating while this one waits (taken over once it is stale),
    a claim of a dead process on this host (taken over at once) and a free run."""
    # Guards against: a Ray driver that submits runs others hold, that stops when only
    # others' runs are left (rows missing), or that never takes over a stale claim (hangs).
    path = tmp_path / "s.toml"
    path.write_text(TOYS.replace("seeds = [0, 1]", "seeds = [0, 1, 2, 3]"))
    suite = load_suite(path)
    alive, stopping, dead, free = (v.run_id for v in suite.variants)
    results = tmp_path / "r"
    write_claim(results, dead, host=HOST, pid=dead_pid())
    stopped = threading.Event()
    with Claims(results, "s", heartbeat_every=0.1) as other:
        assert other.claim(alive) is None
        stopping_runner = Claims(results, "s")  # heartbeats by hand until it "dies"
        assert stopping_runner.claim(stopping) is None

        def other_runners():
            # this runner's own runs landed: it has only the others' left, and waits
            _wait_for(lambda: all(store.run_path(results, "s", r).exists()
                                  for r in (dead, free)), "the Ray runner's own runs", 60)
            time.sleep(0.3)
            stopped.set()  # `stopping`'s runner dies: its claim goes stale in 1 s
            store.write_run(results, store.run_row(
                suite="s", variant=suite.variants[0].name, config=suite.variants[0].config,
                status="finished", metrics={}, provenance={"pid": 1}))
            other.release(alive)

        def heartbeat():
            while not stopped.wait(0.1):
                stopping_runner.refresh()

        helpers = [threading.Thread(target=other_runners), threading.Thread(target=heartbeat)]
        for helper in helpers:
            helper.start()
        try:
            status = main(["run", str(path), "--results", str(results),
                           "--claim-timeout", "1"])
        finally:
            stopped.set()
            for helper in helpers:
                helper.join()
    out, err = capsys.readouterr()
    assert status == 0, err[-2000:]
    trained = trainings(results, "s")
    assert sorted(trained) == sorted([stopping, dead, free])  # not `alive`, the other's
    assert all(len(pids) == 1 and pids[0] != os.getpid() for pids in trained.values())
    runs = store.load_runs(results, suite="s").set_index("run_id")
    assert sorted(runs.index) == sorted(v.run_id for v in suite.variants)  # one row each
    assert (runs["status"] == "finished").all()
    assert runs.loc[alive, "sys_pid"] == 1  # the other runner's row stands
    assert runs.loc[[stopping, dead, free], "sys_ray_node_id"].notna().all()
    assert f"{{'finished': 3}} -> {results}; 1 trained by other runners" in out
    assert f"waiting for 2 runs claimed by {HOST}:{os.getpid()}" in err
    assert stopping_runner.refresh() is None and stopping_runner.lost == {stopping}
    assert not list(results.rglob("*.claim"))
