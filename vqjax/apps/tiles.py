"""Code maps cut into tiles of a prior's code map, and put back: a prior has a fixed sequence
length, so larger maps are coded, scored and repaired tile by tile. Images likewise, in tiles
of a diffusion model's size (`split_images`, `join_images`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def split(codes: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    """Code maps [B, H, W, *tail] (H, W multiples of the tile) -> tiles flattened in raster order
    [B * (H / th) * (W / tw), th * tw * prod(tail)], tile by tile in raster order."""
    batch, height, width, *tail = codes.shape
    th, tw = tile_hw
    tiles = codes.reshape(batch, height // th, th, width // tw, tw, *tail)
    tiles = np.moveaxis(tiles, 3, 2)  # [B, nh, nw, th, tw, *tail]
    return tiles.reshape(batch * (height // th) * (width // tw), -1)


def join(values: np.ndarray, map_shape: Sequence[int], tile_hw: tuple[int, int]) -> np.ndarray:
    """The inverse of `split`: [B * nh * nw, th * tw * prod(tail)] -> `map_shape`
    [B, H, W, *tail]."""
    batch, height, width, *tail = map_shape
    th, tw = tile_hw
    tiles = np.asarray(values).reshape(batch, height // th, width // tw, th, tw, *tail)
    return np.moveaxis(tiles, 2, 3).reshape(tuple(map_shape))


def padding_multiple(tokenizer, prior=None) -> tuple[int, int]:
    """The pixel sizes an image is padded to multiples of (by the codec, score and repair): the
    tokenizer's downsampling factor, or with a prior one tile (its code map in pixels)."""
    factor = tokenizer.downsampling_factor
    if prior is None:
        return factor, factor
    return prior.code_shape[0] * factor, prior.code_shape[1] * factor


def split_images(image: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    """One image [H, W, C] (H, W multiples of the tile) -> its tiles [n, th, tw, C] in raster order."""
    return split(image[None], tile_hw).reshape((-1,) + tuple(tile_hw) + image.shape[2:])


def join_images(image_tiles: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """The inverse of `split_images`: tiles [n, th, tw, C] -> the image of `image_shape` [H, W, C]."""
    image_tiles = np.asarray(image_tiles)
    return join(image_tiles.reshape(len(image_tiles), -1), (1,) + tuple(image_shape), image_tiles.shape[1:3])[0]
