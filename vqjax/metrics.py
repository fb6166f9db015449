"""Evaluation metrics on images in [-1, 1]: MSE and PSNR (on the [0, 255] scale)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_uint8_scale(images: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 255] floats, clipped: what an image file would hold (before rounding)."""
    return (jnp.clip(images.astype(jnp.float32), -1.0, 1.0) + 1.0) * 127.5


def psnr(reconstruction: jax.Array, target: jax.Array, max_value: float = 255.0) -> jax.Array:
    """Per-image PSNR in dB, both images mapped to [0, 255]: 10 log10(255^2 / MSE)."""
    diff = to_uint8_scale(reconstruction) - to_uint8_scale(target)
    mse = jnp.mean(jnp.reshape(jnp.square(diff), (diff.shape[0], -1)), axis=-1)
    return 10.0 * jnp.log10(max_value**2 / jnp.maximum(mse, 1e-10))
