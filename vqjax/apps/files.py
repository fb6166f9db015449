"""Image files in and out of the applications, and the one error they raise for bad input.

Every application reads all of its inputs before it writes anything, so that a bad file named
last does not leave the outputs of the files before it half-written; outputs are written whole
or not at all (`vqjax.core.paths.atomic_writer`)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from vqjax.core import paths


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a model of the wrong kind): the message is one
    sentence naming what is wrong and how to fix it; `vqjax` prints it and exits with status 2."""


def read_image(path: str, channels: int = 3) -> np.ndarray:
    """The image at `path` as uint8 [H, W, channels] (RGB, or grey for one channel)."""
    from PIL import Image, UnidentifiedImageError

    if not paths.is_file(path):
        raise InputError(f"No image file at {path}: check the path.")
    try:
        with Image.open(io.BytesIO(paths.read_bytes(path))) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{path} is not an image Pillow can read ({err}); pass PNG or JPEG files.") from None
    return array[..., None] if channels == 1 else array


def read_images(image_paths: Sequence[str], channels: int = 3) -> list[np.ndarray]:
    if not image_paths:
        raise InputError("No input images: name one or more PNG or JPEG files.")
    return [read_image(p, channels) for p in image_paths]


def write_png(path: str, image: np.ndarray) -> None:
    """uint8 [H, W, C] (C = 1 or 3) -> a PNG, written whole or not at all."""
    from PIL import Image

    image = np.asarray(image, np.uint8)
    with paths.atomic_writer(path) as f:
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(f, format="PNG")


def output_paths(out_dir: str, inputs: Sequence[str], suffix: str) -> list[str]:
    """out_dir/<input's name without its extension><suffix> for each input; two inputs with one
    name (a/x.png, b/x.jpg) would overwrite each other, so they are refused."""
    names = [paths.resolve(p).stem + suffix for p in inputs]
    seen: dict[str, str] = {}
    for name, source in zip(names, inputs):
        if name in seen:
            raise InputError(f"{seen[name]} and {source} would both be written to {name} in {out_dir}; "
                             "rename one or run them separately.")
        seen[name] = str(source)
    return [str(paths.join(out_dir, n)) for n in names]


def to_model_range(image: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] -> float32 in [-1, 1], as the models take images."""
    return np.asarray(image, np.float32) / 127.5 - 1.0


def pad_to_multiple(image: np.ndarray, multiple_h: int, multiple_w: int) -> np.ndarray:
    """[H, W, C] -> [H', W', C] with H', W' the next multiples, edges repeated (a border that
    continues the image costs fewer bits and leaks less into it than zeros)."""
    h, w = image.shape[:2]
    pad_h, pad_w = -h % multiple_h, -w % multiple_w
    if not pad_h and not pad_w:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
