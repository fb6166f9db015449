"""Pixel reconstruction losses, per example (the families reduce them over the batch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _per_example_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


def l2_reconstruction(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error per example."""
    diff = reconstruction.astype(jnp.float32) - target.astype(jnp.float32)
    return _per_example_mean(jnp.square(diff))


def l1_reconstruction(reconstruction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute error per example."""
    diff = reconstruction.astype(jnp.float32) - target.astype(jnp.float32)
    return _per_example_mean(jnp.abs(diff))


RECONSTRUCTION_LOSSES = {"l2": l2_reconstruction, "l1": l1_reconstruction}


def pixel_loss(name: str):
    """The per-example pixel loss `config.loss.reconstruction` names."""
    if name not in RECONSTRUCTION_LOSSES:
        raise ValueError(
            f"config.loss.reconstruction is {name!r}; choose one of {sorted(RECONSTRUCTION_LOSSES)}."
        )
    return RECONSTRUCTION_LOSSES[name]
