"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""

from __future__ import annotations

from pathlib import Path


class BenchError(Exception):
    """A user-facing error (bad config, missing data, corrupt file) naming the problem."""


def make_directory(path: Path, what: str) -> Path:
    """`path` created with its parents, or a BenchError naming `what` it
    was for (e.g. "report directory") when the file system refuses."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create {what} {path}: {err.strerror or err}") from None
    return path
