"""The checksummed data cache: where cached data sets live ($VAEBENCH_DATA, else
~/.cache/vaebench), atomic .npz writes, reads that turn any corruption into one BenchError,
and SHA-256 checks of downloaded payloads. Used by MNIST and the shapes grids."""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from bench.errors import BenchError


def data_dir() -> pathlib.Path:
    """Return the data cache directory: $VAEBENCH_DATA if set, else ~/.cache/vaebench."""
    env = os.environ.get("VAEBENCH_DATA")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "vaebench"


def check_sha256(label: str | pathlib.Path, payload: bytes, expected: str) -> None:
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise BenchError(f"checksum mismatch for {label}: expected sha256 {expected}, "
                         f"got {actual}; refusing to use it")


def save_npz_atomic(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed .npz cache atomically (a temporary file renamed into place), so a
    reader never sees half a file; an unwritable cache directory is a BenchError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz.tmp",
                                        dir=path.parent)
    except OSError as err:
        raise BenchError(f"cannot write cache {path}: {err.strerror or err} "
                         "(is $VAEBENCH_DATA writable?)") from None
    try:
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; the cache may be shared
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise


def load_npz(path: pathlib.Path, keys: Sequence[str],
             corrupt: Callable[[str], BenchError]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz cache; any failure to read them (truncated, not a zip,
    a missing member, a bad CRC) raises `corrupt(reason)`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in keys}
    except Exception as exc:
        raise corrupt(f"{type(exc).__name__}: {exc}") from exc


def one_line(text: str) -> str:
    """`text` with its whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(text.split())
