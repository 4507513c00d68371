"""Tests for bench.data.shapes: the dSprites-style factor grid, its geometry and its cache."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib

import numpy as np
import pytest

from bench.data import shapes as S
from bench.data.shapes import (
    FACTOR_NAMES,
    FULL,
    PRESETS,
    SHAPE_NAMES,
    SMALL,
    ShapesSpec,
    factor_grid,
    generate,
    index_of,
    load_shapes,
)
from bench.errors import BenchError

SQUARE, ELLIPSE, HEART = (SHAPE_NAMES.index(n) for n in ("square", "ellipse", "heart"))
# sha256 of np.packbits of the whole small grid (row-major pixels, grid order). If it changes
# on purpose, bump GENERATOR_VERSION (it invalidates caches) and update this digest.
SMALL_DIGEST = "2ab15cea60aadb7192db7a09d57c4a043f6dd2b77c0c30d57e5d14aa561dbfa9"


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAEBENCH_DATA", str(tmp_path / "data"))


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate("small")


def _grid(images: np.ndarray, spec: ShapesSpec) -> np.ndarray:
    """View (N, H, W) images as [shape, scale, orientation, x, y, H, W]."""
    return images.reshape(*spec.factor_sizes, spec.size, spec.size)


# ---------------------------------------------------------------- the grid


def test_presets_have_the_documented_factor_values() -> None:
    assert set(PRESETS) == {"full", "small"}
    assert FACTOR_NAMES == ("shape", "scale", "orientation", "x", "y")
    assert FULL.count == 3 * 6 * 40 * 32 * 32 == 737_280 and FULL.size == 64
    assert np.allclose(FULL.scales, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], atol=1e-15)
    assert np.allclose(np.diff(FULL.orientations), 2 * math.pi / 40)
    assert FULL.orientations[0] == 0.0 and FULL.orientations[-1] < 2 * math.pi
    assert FULL.centres[0] == 16.5 and FULL.centres[-1] == 47.5 and FULL.radius == 15.5
    assert SMALL.size == 32 and SMALL.factor_sizes == (3, 4, 8, 8, 8) and SMALL.count == 6144
    assert SMALL.radius * SMALL.scales[0] >= 5.5  # the smallest shapes stay recognisable
    # both presets have a multiple of 4 orientations, so quarter turns are on the grid
    assert len(FULL.orientations) % 4 == 0 and len(SMALL.orientations) % 4 == 0


def test_every_combination_appears_once_and_index_of_inverts_the_order(small) -> None:
    images, indices, values = small
    assert images.shape == (6144, 32, 32) and images.dtype == bool
    assert indices.shape == (6144, 5) and indices.dtype == np.int64
    assert len(np.unique(indices, axis=0)) == SMALL.count
    assert (indices.min(axis=0) == 0).all()
    assert (indices.max(axis=0) == np.array(SMALL.factor_sizes) - 1).all()
    np.testing.assert_array_equal(index_of(SMALL, indices), np.arange(SMALL.count))
    # y is the fastest factor, shape the slowest (dSprites' order)
    np.testing.assert_array_equal(indices[:9, 4], [0, 1, 2, 3, 4, 5, 6, 7, 0])
    assert index_of(SMALL, [1, 0, 0, 0, 0]) == SMALL.count // 3
    # values are the spec's value lists looked up by index
    table = SMALL.factor_table()
    for f in range(5):
        np.testing.assert_array_equal(values[:, f], table[f][indices[:, f]])
    assert set(values[:, 0]) == {0.0, 1.0, 2.0}
    assert values[:, 3].min() == 0.0 and values[:, 3].max() == 1.0
    # the full grid's indexing without generating its images
    full_indices, full_values = factor_grid(FULL)
    assert full_indices.shape == (737_280, 5)
    rows = np.random.default_rng(0).choice(FULL.count, 1000, replace=False)
    np.testing.assert_array_equal(index_of(FULL, full_indices[rows]), rows)
    np.testing.assert_array_equal(full_values[rows, 2], np.array(FULL.orientations)[
        full_indices[rows, 2]])


def test_index_of_rejects_out_of_range_and_malformed_indices() -> None:
    with pytest.raises(BenchError, match="'orientation' must be in \\[0, 8\\)"):
        index_of(SMALL, [[0, 0, 8, 0, 0]])
    with pytest.raises(BenchError, match="'x' must be in"):
        index_of(SMALL, [[0, 0, 0, -1, 0]])
    with pytest.raises(BenchError, match="shape \\(\\.\\.\\., 5\\)"):
        index_of(SMALL, [[0, 0, 0, 0]])
    with pytest.raises(BenchError, match="index must be in"):
        generate(SMALL, index=[SMALL.count])


def test_generation_is_deterministic_and_windows_equal_direct_rasterization(small) -> None:
    images, indices, values = small
    again, indices2, values2 = generate("small")
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(indices, indices2)
    np.testing.assert_array_equal(values, values2)
    # the windowed fast path equals evaluating the implicit function per image, bit for bit
    direct, direct_indices, _ = generate(SMALL, index=np.arange(SMALL.count))
    np.testing.assert_array_equal(images, direct)
    np.testing.assert_array_equal(indices, direct_indices)
    packed = np.packbits(images.reshape(len(images), -1), axis=1)
    assert hashlib.sha256(packed.tobytes()).hexdigest() == SMALL_DIGEST


# ---------------------------------------------------------------- geometry


def test_shift_in_x_or_y_is_an_exact_translation_by_the_step(small) -> None:
    g = _grid(small[0], SMALL)
    step = SMALL.step
    # next x value = the same image rolled right by `step` pixels (nothing wraps: black frame)
    np.testing.assert_array_equal(g[:, :, :, 1:], np.roll(g[:, :, :, :-1], step, axis=-1))
    np.testing.assert_array_equal(g[:, :, :, :, 1:], np.roll(g[:, :, :, :, :-1], step, axis=-2))
    counts = g.sum(axis=(-1, -2))
    assert (counts == counts[:, :, :, :1, :1]).all()  # position never changes the pixel count
    # and x moves columns (not rows): the column of the centre of mass grows by `step`
    cols = (g.any(axis=-2) * np.arange(SMALL.size)).sum(-1) / g.any(axis=-2).sum(-1)
    np.testing.assert_allclose(np.diff(cols, axis=3), step)


def test_larger_scale_grows_the_area_and_contains_the_smaller_shape(small) -> None:
    g = _grid(small[0], SMALL)
    counts = g.sum(axis=(-1, -2))
    assert (np.diff(counts, axis=1) > 0).all()  # strictly monotone in scale, everywhere
    # every shape is star-shaped about its centre, so scaling about the centre nests them
    smaller, larger = g[:, :-1], g[:, 1:]
    assert not (smaller & ~larger).any()
    # area grows about like scale^2 (from 0.5 to 1: four times)
    ratio = counts[:, -1] / counts[:, 0]
    assert ((ratio > 3.3) & (ratio < 4.8)).all()


def test_square_repeats_every_quarter_turn_ellipse_every_half_turn_heart_never(small) -> None:
    g = _grid(small[0], SMALL)
    quarter = len(SMALL.orientations) // 4
    square, ellipse, heart = g[SQUARE], g[ELLIPSE], g[HEART]
    np.testing.assert_array_equal(square, np.roll(square, quarter, axis=1))
    np.testing.assert_array_equal(ellipse, np.roll(ellipse, 2 * quarter, axis=1))
    assert all(not np.array_equal(ellipse[:, o], ellipse[:, (o + quarter) % 8]) for o in range(8))
    for k in range(1, 8):  # every heart orientation is a different image
        differs = (heart != np.roll(heart, k, axis=1)).any(axis=(-1, -2))
        assert differs.all()
    # the square at 1/8 turn is a different (diamond) image, so orientation is not trivial
    assert (square[:, 1] != square[:, 0]).any(axis=(-1, -2)).all()


def test_every_image_is_nonempty_and_the_frame_stays_black(small) -> None:
    images = small[0]
    assert images.sum(axis=(1, 2)).min() >= 30
    frame = images[:, 0].any() or images[:, -1].any() or images[:, :, 0].any() or images[
        :, :, -1].any()
    assert not frame
    # the positions span the image: at the largest scale and the leftmost x the shape
    # reaches column 1, next to the frame (for the orientation that points that way)
    g = _grid(images, SMALL)
    assert g[:, -1, :, 0, :, :, 1].any() and g[:, -1, :, -1, :, :, -2].any()
    assert g[:, -1, :, :, 0, 1, :].any() and g[:, -1, :, :, -1, -2, :].any()


def test_full_resolution_slice_geometry() -> None:
    """64x64, largest scale, quarter-turn orientations, every position and shape."""
    spec = dataclasses.replace(FULL, name="full-slice", scales=(1.0,),
                               orientations=FULL.orientations[::10])
    images, indices, _ = generate(spec)
    g = _grid(images, spec)  # [shape, 1, 4, 32, 32, 64, 64]
    assert not (g[..., 0, :].any() or g[..., -1, :].any() or g[..., 0].any() or g[..., -1].any())
    assert g[:, :, :, 0, :, :, 1].any()  # the largest shapes reach the frame
    # square: a quarter turn is the same image at every position
    np.testing.assert_array_equal(g[SQUARE, :, 0], g[SQUARE, :, 1])
    # the same pixels as the full grid's direct per-image rasterization
    rows = np.random.default_rng(0).choice(spec.count, 200, replace=False)
    full_idx = indices[rows].copy()
    full_idx[:, 1] = len(FULL.scales) - 1
    full_idx[:, 2] *= 10
    direct, _, full_values = generate(FULL, index=index_of(FULL, full_idx))
    np.testing.assert_array_equal(images[rows], direct)
    assert (full_values[:, 1] == 1.0).all()

    radius = spec.radius
    centre = g[:, 0, 0, 10, 20]  # centre at x = 26.5, y = 36.5 px
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    for code in (SQUARE, ELLIPSE):  # point-symmetric: centre of mass = shape centre, exactly
        m = centre[code]
        assert xs[m].mean() == pytest.approx(26.5, abs=1e-9)
        assert ys[m].mean() == pytest.approx(36.5, abs=1e-9)
    # the centre is a pixel centre, so at t=0 the white pixels are the integer offsets (a, b)
    # inside the shape: square |a|, |b| <= R / sqrt(2); ellipse (a / R)^2 + (b / (R/2))^2 <= 1
    a = np.arange(-32, 33)[:, None]
    b = a.T
    assert centre[SQUARE].sum() == (2 * math.floor(radius / math.sqrt(2)) + 1) ** 2 == 441
    assert centre[ELLIPSE].sum() == ((a / radius) ** 2 + (2 * b / radius) ** 2 <= 1).sum()
    assert centre[SQUARE].sum() == pytest.approx(2 * radius**2, rel=0.1)  # continuous areas
    assert centre[ELLIPSE].sum() == pytest.approx(math.pi / 2 * radius**2, rel=0.03)
    # heart: area of (x^2+y^2-1)^3 <= x^2 y^3, integrated here on a fine grid, / 1.25^2
    t = np.linspace(-1.5, 1.5, 3001)
    hx, hy = np.meshgrid(t, t)
    heart_area = ((hx**2 + hy**2 - 1) ** 3 <= hx**2 * hy**3).mean() * 9.0
    assert heart_area == pytest.approx(3.66, abs=0.01)
    assert centre[HEART].sum() == pytest.approx(heart_area / 1.25**2 * radius**2, rel=0.03)
    # orientation conventions: ellipse wide at t=0; the heart points down at t=0, and a
    # counter-clockwise quarter turn points it right
    e = centre[ELLIPSE]
    assert np.ptp(xs[e]) > 1.8 * np.ptp(ys[e])
    h0, h90 = g[HEART, 0, 0, 10, 20], g[HEART, 0, 1, 10, 20]
    assert ys[h0].max() - 36.5 == pytest.approx(radius, abs=1.0)  # tip: full radius below
    assert 36.5 - ys[h0].min() < 0.85 * radius  # lobes: less above
    assert xs[h90].max() - 26.5 == pytest.approx(radius, abs=1.0)
    assert 26.5 - xs[h90].min() < 0.85 * radius


def test_heart_lies_in_the_unit_circle_and_its_tip_touches_it() -> None:
    t = np.linspace(-1.05, 1.05, 1401)
    u, v = np.meshgrid(t, t)
    inside = S._heart(u, v)
    assert (u[inside] ** 2 + v[inside] ** 2).max() <= 1.0 + 1e-12
    assert S._heart(np.array([0.0]), np.array([-1.0]))[0]  # the tip, on the circle
    assert not S._heart(np.array([0.0]), np.array([-1.001]))[0]
    assert S._heart(np.array([0.0]), np.array([0.0]))[0]


# ---------------------------------------------------------------- cache and data


def test_cache_round_trips_and_is_read_instead_of_regenerated(small, monkeypatch,
                                                               tmp_path) -> None:
    first = load_shapes("small")
    path = S.cache_path("small")
    assert first.path == path and path.exists()
    assert path == tmp_path / "data" / f"shapes-small-{SMALL.fingerprint}.npz"  # $VAEBENCH_DATA

    def boom(spec):
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(S, "pack", boom)
    second = load_shapes("small")
    np.testing.assert_array_equal(second.images(), small[0])
    np.testing.assert_array_equal(second.factor_indices, small[1])
    np.testing.assert_array_equal(second.factor_values, small[2])
    assert len(second) == SMALL.count
    rows = np.array([5, 17, 4000])
    np.testing.assert_array_equal(second.pixels(rows), small[0][rows].reshape(3, -1))
    assert second.pixels(rows).dtype == np.float32
    np.testing.assert_array_equal(second.index_of(small[1][rows]), rows)


def test_corrupt_or_truncated_cache_is_detected() -> None:
    load_shapes("small")
    path = S.cache_path("small")
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(BenchError, match=f"corrupt shapes cache {path}.*delete it"):
        load_shapes("small")

    # a well-formed file whose images were altered after the digest was written
    path.write_bytes(good)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["images"][100, 3] ^= 1
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    with pytest.raises(BenchError, match="sha256 of the arrays does not match"):
        load_shapes("small")

    # force=True regenerates and overwrites it
    data = load_shapes("small", force=True)
    assert hashlib.sha256(data.packed.tobytes()).hexdigest() == SMALL_DIGEST
    assert path.read_bytes() == good  # deterministic: the same file again


def test_a_cache_holding_another_grid_is_rejected() -> None:
    other = dataclasses.replace(SMALL, name="small", scales=SMALL.scales[1:])
    assert other.fingerprint != SMALL.fingerprint
    load_shapes(other)
    S.cache_path(other).replace(S.cache_path(SMALL))
    with pytest.raises(BenchError, match="different grid"):
        load_shapes(SMALL)


def test_split_is_fixed_disjoint_and_covers_the_grid() -> None:
    data = load_shapes("small")
    train, test = data.split()
    train2, test2 = load_shapes("small").split()
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(test, test2)
    assert len(test) == round(0.1 * SMALL.count) and len(train) + len(test) == SMALL.count
    assert len(np.union1d(train, test)) == SMALL.count
    # a random split: all shapes in the test set, and not a prefix of the grid order
    assert set(data.factor_indices[test, 0]) == {0, 1, 2}
    assert not np.array_equal(np.sort(test), np.arange(len(test)))


def test_spec_validation_names_the_problem() -> None:
    with pytest.raises(BenchError, match="unknown shapes grid 'tiny'.*full, small"):
        load_shapes("tiny")
    with pytest.raises(BenchError, match="positions 1 px apart leave a bounding radius"):
        dataclasses.replace(SMALL, positions=24)
    with pytest.raises(BenchError, match="scales must be strictly increasing"):
        dataclasses.replace(SMALL, scales=(1.0, 0.5))
    with pytest.raises(BenchError, match="orientations must be strictly increasing"):
        dataclasses.replace(SMALL, orientations=(0.0, 2 * math.pi))
    with pytest.raises(BenchError, match="shapes must be distinct names"):
        dataclasses.replace(SMALL, shapes=("square", "circle"))
    with pytest.raises(BenchError, match="name must match"):
        dataclasses.replace(SMALL, name="../x")
