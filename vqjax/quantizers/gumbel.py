"""Gumbel-softmax quantization (taming's GumbelQuantize, after Jang et al. 2017): a 1x1
projection gives one logit per code; training samples a relaxed one-hot choice (hard in the
forward pass, soft in the backward pass with `straight_through`), inference takes the most
likely code.

The KL term pulls the code distribution towards uniform: `kl_weight * mean over vectors of
sum_k q_k log(q_k K)` with q = softmax(logits), as taming writes it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from vqjax.quantizers import stats
from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers.init import uniform_codebook
from vqjax.quantizers.search import lookup

_HIGHEST = jax.lax.Precision.HIGHEST


def code_logits(z: jax.Array, proj: dict) -> jax.Array:
    """[..., C] -> [..., K] float32 logits of the 1x1 projection (a conv kernel [1, 1, C, K])."""
    return jnp.einsum("...c,ck->...k", z.astype(jnp.float32), proj["kernel"][0, 0].astype(jnp.float32),
                      precision=_HIGHEST) + proj["bias"].astype(jnp.float32)


def relaxed_one_hot(rng: jax.Array, logits: jax.Array, temperature: float, hard: bool) -> jax.Array:
    """softmax((logits + Gumbel noise) / temperature); with `hard`, the one-hot of its argmax in
    the forward pass and the soft gradient in the backward pass."""
    noise = jax.random.gumbel(rng, logits.shape, jnp.float32)
    soft = jax.nn.softmax((logits + noise) / temperature, axis=-1)
    if not hard:
        return soft
    one_hot = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return one_hot + soft - jax.lax.stop_gradient(soft)


@dataclasses.dataclass(frozen=True)
class GumbelQuantizer(Quantizer):
    """`config.quantizer.kind='gumbel'`: params {'proj': {'kernel', 'bias'}, 'codebook'}, no state."""

    num_codes: int
    dim: int
    kl_weight: float = 5e-4
    temperature: float = 1.0
    straight_through: bool = True

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        proj_rng, codebook_rng = jax.random.split(rng)
        in_channels = z.shape[-1]
        limit = 1.0 / jnp.sqrt(in_channels)  # torch's default for a 1x1 conv
        kernel = jax.random.uniform(proj_rng, (1, 1, in_channels, self.num_codes), jnp.float32, -limit, limit)
        return {"params": {"proj": {"kernel": kernel, "bias": jnp.zeros((self.num_codes,), jnp.float32)},
                           "codebook": uniform_codebook(codebook_rng, self.num_codes, self.dim)},
                "state": {}}

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        params = variables["params"]
        logits = code_logits(z, params["proj"])
        if train:
            if rng is None:
                raise ValueError("The Gumbel quantizer samples in training; pass rng=.")
            choice = relaxed_one_hot(rng, logits, self.temperature, self.straight_through)
            indices = jnp.argmax(choice, axis=-1).astype(jnp.int32)
            quantized = jnp.einsum("...k,kd->...d", choice, params["codebook"], precision=_HIGHEST)
        else:
            indices = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            quantized = lookup(params["codebook"], indices)
        probs = jax.nn.softmax(logits, axis=-1)
        kl = jnp.mean(jnp.sum(probs * jnp.log(probs * self.num_codes + 1e-10), axis=-1))
        counts = stats.code_counts(indices, self.num_codes)
        return QuantizerOutput(quantized.astype(z.dtype), indices, {"kl": self.kl_weight * kl},
                               {"perplexity": stats.perplexity(counts)})

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        return lookup(variables["params"]["codebook"], indices)
