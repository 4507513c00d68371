"""Claims: which runner trains which run, so that runners sharing one store split a grid.

    <results>/claims/suite=<suite>/<run_id>.claim   JSON: host, pid, runner, started, heartbeat

A runner claims a run just before it trains it and releases the claim once the run's row is
stored (or when it stops: Ctrl-C, a disk fault). While it holds claims, a heartbeat thread
rewrites their `heartbeat` time every few seconds. Another runner skips a run whose claim is
alive and takes over one that is stale: its heartbeat is older than `stale_after` seconds
(a runner killed, or its host gone), or, on the same host, its process is dead (stale at
once). Hosts that share a store need clocks within a few seconds of each other (NTP) for
the heartbeat test; the default 60 s leaves a wide margin.

Every change to a suite's claims (create, take over, refresh, release) happens under an
exclusive flock of `<claims>/suite=<suite>/.lock`, so "is it absent or stale? then it is
mine" is one step between processes: two runners racing for one stale claim, exactly one
wins (a rename-then-create scheme without the lock could steal a claim another runner had
just taken over). The claim file itself is written whole (a temp file renamed over it), so a
reader never sees half of one. Linux NFS clients emulate flock with POSIX locks; without
fcntl (Windows) claims are not locked.

A claim says who trains a run, not whether it is done: the store's rows say that. A runner
that wins a claim re-checks the store (the run may have landed between its plan and its
claim), and the store itself never lets a second finished row replace the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench import store

CLAIMS = "claims"
DEFAULT_STALE_AFTER = 60.0  # seconds without a heartbeat before a claim may be taken over
HEARTBEATS_PER_TIMEOUT = 4  # a claim misses at least three refreshes before it is stale
MAX_HEARTBEAT_EVERY = 5.0


@dataclass(frozen=True)
class Claim:
    """One claim file's content: who trains the run, and when it last said it still does."""

    run_id: str
    host: str
    pid: int
    runner: str  # this runner's id: one process may hold claims of two runners in turn
    started: float  # seconds since the epoch
    heartbeat: float

    @property
    def holder(self) -> str:
        return f"{self.host}:{self.pid}"

    def stale(self, now: float, stale_after: float, host: str) -> bool:
        """No heartbeat for `stale_after` seconds, or a process on this host that is gone."""
        if now - self.heartbeat > stale_after:
            return True
        return self.host == host and not pid_alive(self.pid)


def claims_dir(results: Path, suite: str) -> Path:
    return Path(results) / CLAIMS / f"suite={suite}"


def claim_path(results: Path, suite: str, run_id: str) -> Path:
    return claims_dir(results, suite) / f"{run_id}.claim"


def read_claim(path: Path) -> Claim | None:
    """The claim at `path`; None where there is none. A file that is not a claim (written by
    hand, or by another version) reads as a claim whose heartbeat stopped long ago."""
    try:
        text = path.read_bytes()  # bytes: json decodes them, bad UTF-8 is a ValueError
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return Claim(str(data["run_id"]), str(data["host"]), int(data["pid"]),
                     str(data["runner"]), float(data["started"]), float(data["heartbeat"]))
    except (ValueError, KeyError, TypeError):
        return Claim(path.stem, "?", -1, "?", 0.0, 0.0)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (a zombie, killed but not yet reaped by
    its parent, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS) or gone meanwhile
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class Claims:
    """One runner's claims on one suite's runs, kept alive by a heartbeat thread while open
    (`with Claims(...) as claims:`); closing stops the thread and releases every claim.

    `claim(run_id)` returns None when this runner holds the run (new, taken over from a
    stale claim, or already its own), else the other runner's live Claim. A heartbeat that
    finds its claim taken over (this runner was presumed dead: stopped for longer than
    `stale_after`) drops it and lists it in `lost`."""

    def __init__(self, results: Path, suite: str, *, stale_after: float = DEFAULT_STALE_AFTER,
                 heartbeat_every: float | None = None):
        self.dir = claims_dir(results, suite)
        self.stale_after = stale_after
        self.heartbeat_every = (heartbeat_every if heartbeat_every is not None
                                else min(MAX_HEARTBEAT_EVERY, stale_after / HEARTBEATS_PER_TIMEOUT))
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.runner = uuid.uuid4().hex[:12]
        self.held: dict[str, Claim] = {}
        self.lost: set[str] = set()
        self._mutex = threading.Lock()  # `held` between the caller and the heartbeat thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Claims:
        self._thread = threading.Thread(target=self._beat, name="vaebench-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):  # a read-only store: the claims go stale instead
            self.release_all()

    def path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}.claim"

    def claim(self, run_id: str) -> Claim | None:
        """Claim `run_id` for this runner: None if it is now ours, else the live claim that
        holds it. An OSError (full disk, read-only store) propagates."""
        with self._mutex:
            if run_id in self.held:
                return None
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._locked():
                current = read_claim(self.path(run_id))
                now = time.time()
                if current is not None and current.runner != self.runner \
                        and not current.stale(now, self.stale_after, self.host):
                    return current
                mine = Claim(run_id, self.host, self.pid, self.runner, now, now)
                self._write(mine)
                self.held[run_id] = mine
                return None

    def holder(self, run_id: str) -> Claim | None:
        """The live claim of another runner on `run_id`, if any (nothing is written)."""
        current = read_claim(self.path(run_id))
        if current is None or current.runner == self.runner \
                or current.stale(time.time(), self.stale_after, self.host):
            return None
        return current

    def release(self, run_id: str) -> None:
        """Give `run_id` up: its claim file goes, unless another runner has taken it over."""
        with self._mutex:
            if self.held.pop(run_id, None) is None:
                return
            with self._locked():
                current = read_claim(self.path(run_id))
                if current is not None and current.runner == self.runner:
                    self.path(run_id).unlink(missing_ok=True)

    def release_all(self) -> None:
        for run_id in list(self.held):
            self.release(run_id)

    def refresh(self) -> None:
        """Write a new heartbeat time into each claim this runner holds."""
        with self._mutex:
            if not self.held:
                return
            with self._locked():
                now = time.time()
                for run_id in list(self.held):
                    current = read_claim(self.path(run_id))
                    if current is None or current.runner != self.runner:  # taken over
                        del self.held[run_id]
                        self.lost.add(run_id)
                        continue
                    self.held[run_id] = replace(current, heartbeat=now)
                    self._write(self.held[run_id])

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            with contextlib.suppress(OSError):  # a full disk: the runner's next write says so
                self.refresh()

    def _write(self, claim: Claim) -> None:
        """The claim file, whole: a temp file renamed over it (under the lock)."""
        final = self.path(claim.run_id)
        tmp = final.with_name(f".{final.name}.{self.runner}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(claim)))
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return store._run_lock(self.dir / ".lock")  # flock; not locked without fcntl
