"""Image grids and PNG files: what runs write (reconstructions.png, samples.png) and show in
TensorBoard."""

from __future__ import annotations

import math

import numpy as np

from vqjax.core import paths


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] -> uint8 [0, 255] (clipped, rounded)."""
    return np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def image_grid(rows: list, min_tile: int = 64) -> np.ndarray:
    """Rows of images [n, H, W, C] in [-1, 1] -> one uint8 grid [H', W', C] (or [H', W'] for
    one channel), upscaled so small images stay visible."""
    rows = [to_uint8(r) for r in rows]
    scale = max(1, math.ceil(min_tile / rows[0].shape[1]))
    pad = 2
    n, h, w, c = rows[0].shape
    h, w = h * scale, w * scale
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, np.uint8)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            image = image.repeat(scale, 0).repeat(scale, 1)
            top, left = pad + r * (h + pad), pad + i * (w + pad)
            grid[top : top + h, left : left + w] = image
    return grid[..., 0] if c == 1 else grid


def save_png(path: str, array: np.ndarray) -> None:
    """Written whole or not at all (vqjax.core.paths), locally or in a bucket."""
    from PIL import Image

    with paths.atomic_writer(path) as f:
        Image.fromarray(array).save(f, format="PNG")
