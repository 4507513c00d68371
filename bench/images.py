"""Grids of stored images as pixels, for the report's sample figures (bench.plots) and the
trackers' images (bench.export): (n, h, w) intensities in [0, 1] tiled into rows, the tiles
one pixel apart on a separator colour that no grayscale image has, as uint8 RGB or PNG.
numpy and Pillow only (no matplotlib, no torch)."""

from __future__ import annotations

import io

import numpy as np

SEPARATOR = (0x7A, 0xA6, 0xD6)  # between tiles: not a gray level
SEPARATOR_HEX = "#{:02x}{:02x}{:02x}".format(*SEPARATOR)  # the same, for matplotlib


def mosaic(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
    """Tile (n, h, w) images into rows of `columns`, `pad` pixels of NaN around and between
    them (and in the slots of a last row not filled)."""
    n, h, w = images.shape
    rows = max(1, -(-n // columns))
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad), np.nan)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top:top + h, left:left + w] = images[i]
    return out


def to_rgb(tiles: np.ndarray) -> np.ndarray:
    """A mosaic of intensities in [0, 1] as (H, W, 3) uint8: pixel = round(255 * value),
    NaN in the separator colour."""
    gray = np.rint(np.clip(np.nan_to_num(tiles, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[np.isnan(tiles)] = SEPARATOR
    return rgb


def grid_rgb(images: np.ndarray, columns: int) -> np.ndarray:
    """(n, h, w) images as one (H, W, 3) uint8 grid of at most `columns` to a row."""
    return to_rgb(mosaic(images, max(1, min(columns, len(images)))))


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
