"""Procedural dSprites-style ``shapes``: binary images of one white shape on black.

Following dSprites (Matthey, Higgins, Hassabis & Lerchner 2017, "dSprites: Disentanglement
testing Sprites dataset", https://github.com/deepmind/dsprites-dataset; used by Higgins et al.
2017, "beta-VAE", ICLR), every image shows one shape and the data set is the FULL grid of five
independent generative factors, one image per combination (``FACTOR_NAMES``):

* ``shape``: square, ellipse, heart (factor value = code 0, 1, 2 in ``SHAPE_NAMES``);
* ``scale``: the shape's size relative to the largest (``full``: 6 values, 0.5 to 1.0);
* ``orientation``: counter-clockwise rotation on screen in radians (``full``: 40 values
  2 pi k / 40, k = 0..39, i.e. steps of 9 degrees over [0, 2 pi));
* ``x``, ``y``: the position of the shape's centre, stored like dSprites as values in [0, 1]
  (0 = leftmost / topmost centre, 1 = rightmost / bottommost); y grows downwards (image rows).

``full`` is 3 * 6 * 40 * 32 * 32 = 737,280 images of 64x64; ``small`` (tests, CPU budgets)
is 3 * 4 * 8 * 8 * 8 = 6,144 images of 32x32 (see ``PRESETS``).

Geometry. Pixel (row i, column j) has centre (x, y) = (j + 1/2, i + 1/2). The shape centres
lie on an evenly spaced square grid of ``positions`` values per axis, ``step`` whole pixels
apart and symmetric about the image centre: c_k = c_0 + step * k with
c_0 = (size - step * (positions - 1)) / 2 (``full``: 16.5 .. 47.5, ``small``: 12.5 .. 19.5).
Each shape is defined in its own frame (u, v) (v up) inside the unit circle, and drawn with
bounding radius ``radius * scale`` where radius = c_0 - 1 (``full`` 15.5 px, ``small`` 11.5 px).
So at scale 1 and an extreme position the shape's bounding circle ends exactly at the inner
edge of the outermost pixel row/column: the CONVENTION is that the 1-pixel frame of every
image is always black and the shape never touches the border, at every orientation.
A pixel is white iff its centre (x, y) maps into the shape, with

    d = (x - c_x, c_y - y) / (radius * scale),
    u = cos(t) d_1 + sin(t) d_2,   v = -sin(t) d_1 + cos(t) d_2   (rotate back by t),

and the implicit inequalities (boundary included)

* square:  max(|u|, |v|) <= 1/sqrt(2)             (corners on the unit circle);
* ellipse: u^2 + (v / 0.5)^2 <= 1                 (aspect ratio 2:1, major axis along x at t=0);
* heart:   (X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0, with X = 1.25 u, Y = 1.25 v + 0.25
  (the classic sextic heart curve, upright at t = 0 with the point downwards; (0, 0.25) is the
  centre of its smallest enclosing circle, radius 1.25, so the tip touches the unit circle).

Symmetries (as in dSprites): the square is invariant under rotation by pi/2 and the ellipse
under rotation by pi, so for them the orientation factor is NOT identifiable: orientations
t and t + pi/2 (square) or t + pi (ellipse) give identical images (exactly: both presets have
a multiple of 4 orientations and shape centres on points of the pixel lattice's symmetry).
Only the heart's orientation is identifiable over the whole [0, 2 pi). Disentanglement
metrics should keep this in mind (dSprites has the same property).

Generation is deterministic (no randomness, float64 arithmetic, cos/sin from the C library
rather than numpy's CPU-dependent SIMD kernels, so the pixels are the same on every machine;
the test suite pins the SHA-256 of the ``small`` grid). It evaluates the implicit function
for a whole batch of (shape, scale, orientation) combinations at once on a canvas
``step * (positions - 1)`` pixels larger than the image, then cuts out all positions as
windows of that canvas: because positions are whole-pixel steps the window pixels have
exactly the same coordinates d (same floating-point numbers) as a direct evaluation, so
``generate(spec)`` equals the direct
per-image rasterization ``generate(spec, index=...)`` bit for bit (tested). Measured on a
shared 2-core CPU: ``pack("full")`` (the packed grid) 4 s, ``generate("full")`` (3 GB of bool
images) 16 s; the first ``load_shapes("full")`` writes a 6.9 MB file, later loads take ~5 s
(decompress + SHA-256 + checks); ``small`` takes milliseconds.

Order and indices: factor combinations are enumerated in mixed-radix order with ``y`` fastest
(as dSprites): index = (((shape * S + scale) * O + orientation) * P + x) * P + y, see
``index_of``. ``generate`` returns images, ``factor_indices`` (N, 5) and ``factor_values``
(N, 5) in that order.

Cache: ``load_shapes(name)`` keeps the grid at ``data_dir()/shapes-<name>-<fingerprint>.npz``
($VAEBENCH_DATA, default ~/.cache/vaebench): the images packed 8 pixels a byte (np.packbits of
the row-major pixels), the factor indices and values, the spec, and a SHA-256 over all of them
verified on every load. The fingerprint hashes the spec and ``GENERATOR_VERSION`` (bump it when
the rasterization changes) so a changed grid never reads a stale file. A corrupt or truncated
cache is NOT silently regenerated: it raises BenchError naming the file and saying to delete it
(or to pass ``force=True``), the same policy as the MNIST cache; files are written atomically
(temporary file + rename), so a corrupt file means something outside vaebench damaged it.

Train/test split (``ShapesData.split``): a fixed permutation
``numpy.random.default_rng(SPLIT_SEED).permutation(N)``; the last ``round(TEST_FRACTION * N)``
indices are the test set, the rest the training set (so test images are factor combinations
never seen in training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from bench.data.cache import data_dir, load_npz, one_line, save_npz_atomic
from bench.errors import BenchError

SHAPES_GRIDS = {"shapes": "full", "shapes_small": "small"}  # data set name -> grid preset
FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "x", "y")
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
GENERATOR_VERSION = 1  # bump whenever the pixels of any spec change (invalidates caches)
SPLIT_SEED = 0
TEST_FRACTION = 0.1

SQUARE_HALF_SIDE = 1.0 / math.sqrt(2.0)  # in units of the bounding radius
ELLIPSE_MINOR = 0.5  # semi-minor axis; the semi-major axis is 1 (aspect ratio 2:1)
HEART_RADIUS = 1.25  # smallest enclosing circle of the heart curve: centre (0, 0.25) ...
HEART_OFFSET = 0.25  # ... radius 1.25 (the tip (0, -1) lies on it)

_CHUNK_PIXELS = 1 << 21  # pixels evaluated per vectorized rasterization chunk (~16 MB float64)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_CACHE_KEYS = ("images", "factor_indices", "factor_values")


@dataclass(frozen=True)
class ShapesSpec:
    """A factor grid: image size, the factor value lists and the position lattice.

    ``positions`` centre values per axis, ``step`` whole pixels apart, centred in the image;
    the bounding radius at scale 1 is derived (``radius``) so the largest shape fits inside a
    1-pixel black frame at every position and orientation.
    """

    name: str
    size: int  # images are size x size
    scales: tuple[float, ...]  # strictly increasing, in (0, 1]
    orientations: tuple[float, ...]  # radians, strictly increasing, in [0, 2 pi)
    positions: int  # centre values per axis (x and y)
    step: int  # pixels between neighbouring centres
    shapes: tuple[str, ...] = SHAPE_NAMES

    def __post_init__(self) -> None:
        for key in ("scales", "orientations", "shapes"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "orientations", tuple(float(t) for t in self.orientations))
        where = f"shapes spec {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise BenchError(f"shapes spec name must match [A-Za-z0-9_-]+, got {self.name!r}")
        for key in ("size", "positions", "step"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BenchError(f"{where}: {key} must be a positive integer, got {value!r}")
        if not self.shapes or len(set(self.shapes)) != len(self.shapes) or not set(
            self.shapes
        ) <= set(SHAPE_NAMES):
            raise BenchError(f"{where}: shapes must be distinct names from {SHAPE_NAMES}, "
                             f"got {self.shapes}")
        if not self.scales or not all(0.0 < s <= 1.0 for s in self.scales) or any(
            a >= b for a, b in zip(self.scales, self.scales[1:], strict=False)
        ):
            raise BenchError(f"{where}: scales must be strictly increasing in (0, 1], "
                             f"got {self.scales}")
        if not self.orientations or not all(
            0.0 <= t < 2.0 * math.pi for t in self.orientations
        ) or any(a >= b for a, b in zip(self.orientations, self.orientations[1:], strict=False)):
            raise BenchError(f"{where}: orientations must be strictly increasing in [0, 2 pi), "
                             f"got {self.orientations}")
        if self.radius * self.scales[0] < 2.0:
            raise BenchError(
                f"{where}: {self.positions} positions {self.step} px apart leave a bounding "
                f"radius of {self.radius:g} px in a {self.size} px image, so the smallest "
                f"scale {self.scales[0]:g} draws shapes under 2 px; use fewer positions, a "
                "smaller step or a larger size")

    @property
    def first_centre(self) -> float:
        """Pixel coordinate c_0 of the leftmost (topmost) shape centre."""
        return (self.size - self.step * (self.positions - 1)) / 2.0

    @property
    def radius(self) -> float:
        """Bounding radius in pixels at scale 1: c_0 - 1 (the 1-pixel frame stays black)."""
        return self.first_centre - 1.0

    @property
    def centres(self) -> np.ndarray:
        """Pixel coordinates of the ``positions`` centre values (same for x and y)."""
        return self.first_centre + self.step * np.arange(self.positions, dtype=np.float64)

    @property
    def position_values(self) -> np.ndarray:
        """Factor values of x and y: ``positions`` values evenly spaced in [0, 1]."""
        return np.linspace(0.0, 1.0, self.positions)

    @property
    def factor_sizes(self) -> tuple[int, int, int, int, int]:
        """Number of values of each factor, in FACTOR_NAMES order."""
        return (len(self.shapes), len(self.scales), len(self.orientations),
                self.positions, self.positions)

    @property
    def count(self) -> int:
        """Number of images: the product of the factor sizes."""
        return math.prod(self.factor_sizes)

    @property
    def fingerprint(self) -> str:
        """12 hex digits of SHA-256 over the geometry and GENERATOR_VERSION (cache key)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def to_json(self) -> str:
        """Canonical JSON of the spec and GENERATOR_VERSION (floats round-trip exactly)."""
        fields = dataclasses.asdict(self)
        fields["generator_version"] = GENERATOR_VERSION
        return json.dumps(fields, sort_keys=True)

    def factor_table(self) -> tuple[np.ndarray, ...]:
        """The value of each factor index, per factor (shape values are SHAPE_NAMES codes)."""
        codes = np.array([SHAPE_NAMES.index(s) for s in self.shapes], dtype=np.float64)
        return (codes, np.array(self.scales), np.array(self.orientations),
                self.position_values, self.position_values)


def _linspace(lo: float, hi: float, n: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.linspace(lo, hi, n))


def _turns(n: int) -> tuple[float, ...]:
    return tuple(2.0 * math.pi * k / n for k in range(n))


FULL = ShapesSpec("full", size=64, scales=_linspace(0.5, 1.0, 6), orientations=_turns(40),
                  positions=32, step=1)
SMALL = ShapesSpec("small", size=32, scales=_linspace(0.5, 1.0, 4), orientations=_turns(8),
                   positions=8, step=1)
PRESETS: dict[str, ShapesSpec] = {"full": FULL, "small": SMALL}


def get_spec(spec: str | ShapesSpec) -> ShapesSpec:
    """Return the preset called ``spec`` (or ``spec`` itself); BenchError for unknown names."""
    if isinstance(spec, ShapesSpec):
        return spec
    if spec not in PRESETS:
        raise BenchError(f"unknown shapes grid {spec!r} (known: {', '.join(PRESETS)})")
    return PRESETS[spec]


# ---------------------------------------------------------------- factor indexing


def factor_grid(spec: ShapesSpec) -> tuple[np.ndarray, np.ndarray]:
    """Return (factor_indices int64 (N, 5), factor_values float64 (N, 5)) in grid order."""
    sizes = spec.factor_sizes
    indices = np.stack(np.unravel_index(np.arange(spec.count), sizes), axis=1).astype(np.int64)
    return indices, _values_of(spec, indices)


def _values_of(spec: ShapesSpec, indices: np.ndarray) -> np.ndarray:
    table = spec.factor_table()
    return np.stack([table[f][indices[:, f]] for f in range(len(FACTOR_NAMES))], axis=1)


def index_of(spec: ShapesSpec, factor_indices: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Return the flat grid index of each row of factor indices (mixed radix, y fastest).

    ``factor_indices`` has shape (..., 5) in FACTOR_NAMES order; the result has shape (...).
    Out-of-range indices raise BenchError naming the factor.
    """
    idx = np.asarray(factor_indices)
    if idx.shape[-1:] != (len(FACTOR_NAMES),) or not np.issubdtype(idx.dtype, np.integer):
        raise BenchError(f"factor indices must be integers of shape (..., {len(FACTOR_NAMES)}), "
                         f"got {idx.dtype} {idx.shape}")
    flat = np.zeros(idx.shape[:-1], dtype=np.int64)
    for f, (name, size) in enumerate(zip(FACTOR_NAMES, spec.factor_sizes, strict=True)):
        column = idx[..., f].astype(np.int64)
        if column.size and (column.min() < 0 or column.max() >= size):
            raise BenchError(f"factor index of {name!r} must be in [0, {size}), got values in "
                             f"[{column.min()}, {column.max()}]")
        flat = flat * size + column
    return flat


# ---------------------------------------------------------------- rasterization


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    w = v / ELLIPSE_MINOR
    return u * u + w * w <= 1.0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x = HEART_RADIUS * u
    y = HEART_RADIUS * v + HEART_OFFSET
    xx = x * x
    q = xx + y * y - 1.0
    return q * q * q - xx * (y * y * y) <= 0.0


_IMPLICIT: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "square": _square, "ellipse": _ellipse, "heart": _heart}


def _cos_sin(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, with values within 1e-12 of 0 snapped to 0 (exact quarter turns).

    Uses Python's math.cos/math.sin (the C library's) on the distinct angles rather than
    numpy's, whose SIMD kernels depend on the CPU, so the pixels do not depend on the machine.
    """
    unique, inverse = np.unique(theta, return_inverse=True)
    table = np.array([[math.cos(t), math.sin(t)] for t in unique.tolist()]).reshape(-1, 2)
    table[np.abs(table) < 1e-12] = 0.0
    return table[inverse, 0], table[inverse, 1]


def _rasterize(shape_codes: np.ndarray, scales: np.ndarray, thetas: np.ndarray,
               cx: np.ndarray, cy: np.ndarray, size: int, radius: float) -> np.ndarray:
    """Return bool (B, size, size): pixel centres inside each batch element's shape.

    Batch element b draws shape SHAPE_NAMES[shape_codes[b]] with bounding radius
    radius * scales[b], rotated counter-clockwise by thetas[b], centred at pixel coordinates
    (cx[b], cy[b]). Evaluated in float64, vectorized over chunks of the batch.
    """
    n = len(shape_codes)
    out = np.empty((n, size, size), dtype=bool)
    centres = np.arange(size, dtype=np.float64) + 0.5
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        c, s = _cos_sin(thetas[sl])
        inv = 1.0 / (scales[sl] * radius)
        dx = (centres[None, :] - cx[sl, None]) * inv[:, None]  # (b, W): right positive
        dy = (cy[sl, None] - centres[None, :]) * inv[:, None]  # (b, H): up positive
        dx, dy = dx[:, None, :], dy[:, :, None]
        c, s = c[:, None, None], s[:, None, None]
        u = c * dx + s * dy
        v = c * dy - s * dx
        block = out[sl]
        codes = shape_codes[sl]
        for code, name in enumerate(SHAPE_NAMES):
            mask = codes == code
            if mask.any():
                block[mask] = _IMPLICIT[name](u[mask], v[mask])
    return out


def _blocks(spec: ShapesSpec) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start index, bool (P*P, size, size)) per (shape, scale, orientation), in order.

    All P*P positions of one combination are windows of one canvas rendered once, with its
    centre placed so that window pixels have exactly the coordinates of a direct rendering.
    """
    p, step, size = spec.positions, spec.step, spec.size
    span = step * (p - 1)
    canvas_size = size + span
    centre = spec.first_centre + span  # canvas coordinate of the shape centre
    ns, nc, no = len(spec.shapes), len(spec.scales), len(spec.orientations)
    combos = np.stack(np.unravel_index(np.arange(ns * nc * no), (ns, nc, no)), axis=1)
    codes = np.array([SHAPE_NAMES.index(s) for s in spec.shapes])[combos[:, 0]]
    scales = np.array(spec.scales)[combos[:, 1]]
    thetas = np.array(spec.orientations)[combos[:, 2]]
    per_chunk = max(1, _CHUNK_PIXELS // (canvas_size * canvas_size))
    for first in range(0, len(combos), per_chunk):
        sl = slice(first, min(len(combos), first + per_chunk))
        k = sl.stop - sl.start
        full = np.full(k, centre)
        canvases = _rasterize(codes[sl], scales[sl], thetas[sl], full, full, canvas_size,
                              spec.radius)
        for j in range(k):
            # window whose top-left corner is (a_y, a_x) shows the shape centred at
            # c_0 + span - a; a = step * (p - 1 - k_pos), hence the reversal
            windows = np.lib.stride_tricks.sliding_window_view(canvases[j], (size, size))
            windows = windows[::step, ::step][::-1, ::-1]  # [k_y, k_x]
            block = np.ascontiguousarray(windows.transpose(1, 0, 2, 3))  # [k_x, k_y]
            yield (first + j) * p * p, block.reshape(p * p, size, size)


def generate(spec: str | ShapesSpec, index: np.ndarray | Sequence[int] | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (images bool (N, H, W), factor_indices int64 (N, 5), factor_values float (N, 5)).

    Without ``index``: the whole grid in order (``full`` needs 3 GB for the images; use
    ``load_shapes`` for the packed, cached form). With ``index`` (flat grid indices): only
    those images, each rasterized directly at its own centre (the reference rendering).
    """
    spec = get_spec(spec)
    if index is None:
        indices, values = factor_grid(spec)
        images = np.empty((spec.count, spec.size, spec.size), dtype=bool)
        for start, block in _blocks(spec):
            images[start:start + len(block)] = block
        return images, indices, values
    flat = np.asarray(index)
    if flat.ndim != 1 or not np.issubdtype(flat.dtype, np.integer):
        raise BenchError(f"index must be a 1-D array of integers, got {flat.dtype} {flat.shape}")
    if flat.size and (flat.min() < 0 or flat.max() >= spec.count):
        raise BenchError(f"index must be in [0, {spec.count}) for shapes grid {spec.name!r}")
    indices = np.stack(np.unravel_index(flat, spec.factor_sizes), axis=1).astype(np.int64)
    values = _values_of(spec, indices)
    centres = spec.centres
    images = _rasterize(values[:, 0].astype(np.int64), values[:, 1], values[:, 2],
                        centres[indices[:, 3]], centres[indices[:, 4]], spec.size, spec.radius)
    return images, indices, values


# ---------------------------------------------------------------- packed cache


@dataclass(frozen=True, eq=False)
class ShapesData:
    """A loaded grid: packed images plus factor indices/values, unpacked on demand."""

    spec: ShapesSpec
    packed: np.ndarray  # (N, ceil(H*W/8)) uint8: np.packbits of the row-major pixels
    factor_indices: np.ndarray  # (N, 5) int64, FACTOR_NAMES order
    factor_values: np.ndarray  # (N, 5) float64
    path: pathlib.Path | None = None  # the cache file it was read from / written to

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    def images(self, index: np.ndarray | Sequence[int] | slice | None = None) -> np.ndarray:
        """Return bool (n, H, W) images of the given rows (all rows without ``index``)."""
        rows = self.packed if index is None else self.packed[index]
        size = self.spec.size
        bits = np.unpackbits(rows, axis=-1, count=size * size)
        return bits.reshape(*rows.shape[:-1], size, size).view(bool)

    def pixels(self, index: np.ndarray | Sequence[int] | slice | None = None) -> np.ndarray:
        """Return float32 (n, H*W) 0/1 pixels of the given rows (the model input format)."""
        rows = self.packed if index is None else self.packed[index]
        size = self.spec.size
        return np.unpackbits(rows, axis=-1, count=size * size).astype(np.float32)

    def index_of(self, factor_indices: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """Return the row of each combination of factor indices (see module ``index_of``)."""
        return index_of(self.spec, factor_indices)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (train rows, test rows): the fixed SPLIT_SEED permutation, test = last 10%."""
        n = len(self)
        perm = np.random.default_rng(SPLIT_SEED).permutation(n)
        n_test = int(round(TEST_FRACTION * n))
        return perm[: n - n_test], perm[n - n_test:]


def cache_path(spec: str | ShapesSpec) -> pathlib.Path:
    """Return the cache file of a grid: data_dir()/shapes-<name>-<fingerprint>.npz."""

    spec = get_spec(spec)
    return data_dir() / f"shapes-{spec.name}-{spec.fingerprint}.npz"


def pack(spec: str | ShapesSpec) -> ShapesData:
    """Generate a grid straight into packed form (never holds the unpacked grid)."""
    spec = get_spec(spec)
    packed = np.empty((spec.count, (spec.size * spec.size + 7) // 8), dtype=np.uint8)
    for start, block in _blocks(spec):
        packed[start:start + len(block)] = np.packbits(block.reshape(len(block), -1), axis=1)
    indices, values = factor_grid(spec)
    return ShapesData(spec, packed, indices, values)


def load_shapes(spec: str | ShapesSpec, *, force: bool = False) -> ShapesData:
    """Return the grid ``spec`` (a PRESETS name or a ShapesSpec), generating it once.

    The packed grid is cached under ``cache_path(spec)`` and verified (SHA-256) on every load;
    a corrupt cache raises BenchError (delete the file, or pass ``force=True`` to regenerate
    and overwrite it).
    """
    spec = get_spec(spec)
    path = cache_path(spec)
    if path.exists() and not force:
        return _read_cache(path, spec)
    data = pack(spec)
    _write_cache(path, data)
    return dataclasses.replace(data, path=path)


def _digest(arrays: dict[str, np.ndarray], spec_json: str) -> str:
    h = hashlib.sha256(spec_json.encode())
    for key in _CACHE_KEYS:
        a = np.ascontiguousarray(arrays[key])
        h.update(f"\n{key}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _write_cache(path: pathlib.Path, data: ShapesData) -> None:
    arrays = {"images": data.packed, "factor_indices": data.factor_indices.astype(np.int16),
              "factor_values": data.factor_values}
    spec_json = data.spec.to_json()
    save_npz_atomic(path, {**arrays, "spec": np.array(spec_json),
                           "sha256": np.array(_digest(arrays, spec_json))})


def _read_cache(path: pathlib.Path, spec: ShapesSpec) -> ShapesData:
    dataset = "shapes" if spec.name == "full" else f"shapes_{spec.name}"

    def corrupt(reason: str) -> BenchError:
        return BenchError(f"corrupt shapes cache {path} ({one_line(reason)}); delete it (it is "
                          f"regenerated on the next load) or run: vaebench data fetch "
                          f"{dataset} --force")

    arrays = load_npz(path, (*_CACHE_KEYS, "spec", "sha256"), corrupt)
    spec_json, stored = str(arrays.pop("spec")), str(arrays.pop("sha256"))
    if _digest(arrays, spec_json) != stored:
        raise corrupt("sha256 of the arrays does not match the stored digest")
    if spec_json != spec.to_json():
        raise corrupt(f"it holds a different grid than {spec.name!r}")
    n, nbytes = spec.count, (spec.size * spec.size + 7) // 8
    images, indices = arrays["images"], arrays["factor_indices"].astype(np.int64)
    if images.dtype != np.uint8 or images.shape != (n, nbytes):
        raise corrupt(f"images are {images.dtype} {images.shape}, expected uint8 {(n, nbytes)}")
    expected_indices, expected_values = factor_grid(spec)
    if not (np.array_equal(indices, expected_indices)
            and np.array_equal(arrays["factor_values"], expected_values)):
        raise corrupt("factor indices/values are not the grid of the spec")
    return ShapesData(spec, images, indices, arrays["factor_values"], path)
