"""Progress lines with an ETA for long work inside a run: the test-set estimate at k_eval over
the test set, EM's iterations, the disentanglement metrics.

    lines = ProgressLines(write=log.write_line)          # where the run's progress goes
    progress = meter(lines, "eval test_ll", total=10_000, unit="examples")
    for ...: progress.update(done)                        # cheap: a clock read per call
    progress.finish()

gives at most one line every `every_s` seconds, and none for work that ends within
`quiet_s` (the first line comes `quiet_s` after the start), e.g.

    eval test_ll: 4,000/10,000 examples (40%), 0:01:05 elapsed, ETA 0:01:38

The ETA is the remaining units at the mean rate so far. `meter(None, ...)` gives a meter
that does nothing, so code paths without a destination (tests, the profiler, a stack's
variants) call the same methods. The clock is injected (`clock`), so tests drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

EVERY_S = 5.0  # seconds between two lines of one meter
QUIET_S = 10.0  # work that ends sooner prints nothing


@dataclass(frozen=True)
class ProgressLines:
    """Where a run's progress lines go (a run log's writer, stderr) and how often."""

    write: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    every_s: float = EVERY_S
    quiet_s: float = QUIET_S


class Meter:
    """The progress of one piece of work of `total` units: `update(done)` writes a line
    when one is due."""

    def __init__(self, lines: ProgressLines | None, what: str, total: int, unit: str):
        self.lines, self.what, self.total, self.unit = lines, what, total, unit
        self.started = lines.clock() if lines is not None else 0.0
        self.next_at = self.started + (lines.quiet_s if lines is not None else 0.0)
        self.written = 0  # lines written
        self.done = 0  # units done, as last updated

    def update(self, done: int) -> None:
        self.done = done
        if self.lines is None:
            return
        now = self.lines.clock()
        if now < self.next_at:
            return
        self.next_at = now + self.lines.every_s
        self.written += 1
        self.lines.write(line(self.what, done, self.total, self.unit, now - self.started))

    def finish(self) -> None:
        """A closing line, where lines were written (so the log shows the work ended)."""
        if self.lines is not None and self.written:
            elapsed = self.lines.clock() - self.started
            self.lines.write(f"{self.what}: {self.total:,}/{self.total:,} {self.unit} done, "
                             f"{clock_text(elapsed)}")


def meter(lines: ProgressLines | None, what: str, total: int, unit: str) -> Meter:
    """A Meter of `what` (a no-op one where `lines` is None)."""
    return Meter(lines, what, total, unit)


def line(what: str, done: int, total: int, unit: str, elapsed: float) -> str:
    """"eval test_ll: 4,000/10,000 examples (40%), 0:01:05 elapsed, ETA 0:01:38"."""
    share = done / total if total else 1.0
    eta = (clock_text(elapsed * (total - done) / done) if done > 0 else "unknown")
    return (f"{what}: {done:,}/{total:,} {unit} ({share:.0%}), {clock_text(elapsed)} "
            f"elapsed, ETA {eta}")


def clock_text(seconds: float) -> str:
    whole = max(0, int(round(seconds)))
    h, rest = divmod(whole, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"
