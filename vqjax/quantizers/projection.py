"""What the quantizers with their own code space share (FSQ, LFQ / BSQ, cosine VQ): learned
linear maps in and out of it, l2 normalisation, and the check of the encoder's dimension."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def apply_linear(params: Optional[dict], x: jax.Array) -> jax.Array:
    """`x @ kernel + bias` in float32 at full precision; the identity when `params` is None
    (a TPU's default matmul precision would round the codes' inputs to bfloat16)."""
    x = x.astype(jnp.float32)
    if params is None:
        return x
    return jnp.einsum("...i,io->...o", x, params["kernel"].astype(jnp.float32),
                      precision=_HIGHEST) + params["bias"].astype(jnp.float32)


def linear_projections(rng: jax.Array, dim: int, code_dim: int) -> dict:
    """Params of the learned maps encoder dim -> code dim -> encoder dim, `{}` when the two
    dimensions agree (`{'project_in': {'kernel' [dim, code_dim], 'bias'}, 'project_out': ...}`,
    LeCun-normal kernels and zero biases, as flax's Dense)."""
    if dim == code_dim:
        return {}
    in_rng, out_rng = jax.random.split(rng)
    lecun = jax.nn.initializers.lecun_normal()
    return {
        "project_in": {"kernel": lecun(in_rng, (dim, code_dim), jnp.float32),
                       "bias": jnp.zeros((code_dim,), jnp.float32)},
        "project_out": {"kernel": lecun(out_rng, (code_dim, dim), jnp.float32),
                        "bias": jnp.zeros((dim,), jnp.float32)},
    }


def l2_normalize(v: jax.Array, smallest_norm: float) -> jax.Array:
    """v / max(|v|, smallest_norm) over the last axis, in float32 (finite at v = 0)."""
    v = v.astype(jnp.float32)
    return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True)), smallest_norm)


def check_dimension(z: jax.Array, dim: int, kind: str) -> None:
    """A sentence instead of a shape error deep inside the projection or the code arithmetic."""
    if z.shape[-1] != dim:
        raise ValueError(
            f"Encoder outputs have dimension {z.shape[-1]} but the {kind} quantizer was built for "
            f"dim={dim}; build it with the encoder's embed_dim (config.model.embed_dim).")
