"""SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with
One Linear Layer"): the codes are C W, a frozen random codebook C re-parameterised by one
learned linear layer W. The codebook loss moves W, and W moves every code at once, so no code
is left behind unused (the paper's remedy for codebook collapse).

The losses are the paper's (VQ-VAE's two terms on the codes C W) and vector-quantize-pytorch's SimVQ:
`||sg[z] - CW||^2 + beta ||z - sg[CW]||^2` (beta = 0.25 there, this library's default).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from vqjax.losses.vq import vq_loss_terms
from vqjax.quantizers import stats
from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers.ema import CodebookSettings
from vqjax.quantizers.init import initial_codebook
from vqjax.quantizers.search import lookup, quantize

_HIGHEST = jax.lax.Precision.HIGHEST


@struct.dataclass
class FrozenCodebookState:
    """SimVQ's state: the frozen codebook C and the usage statistics of its codes.

    C lives in `variables['state']`, which the optimizer never sees: only `update` could
    write it, and it does so only to restart a dead code (when `dead_code_threshold > 0`).
    """

    frozen_codebook: jax.Array  # C [K, D] float32
    usage: jax.Array  # [K] float32 (as `stats.CodeUsage`)
    last_used: jax.Array  # [K] int32


def linear_codebook(frozen_codebook: jax.Array, transform: jax.Array) -> jax.Array:
    """The codes C W [K, D] in float32."""
    return jnp.einsum("kd,de->ke", frozen_codebook.astype(jnp.float32), transform.astype(jnp.float32),
                      precision=_HIGHEST)


@dataclasses.dataclass(frozen=True)
class SimVQQuantizer(CodebookSettings, Quantizer):
    """`config.quantizer.kind='simvq'`: params {'transform': W [D, D]}, state
    `FrozenCodebookState` (C [K, D] and usage).

    C is drawn by `config.quantizer.init` ('uniform': per-coordinate variance 1/D, the scale of
    the paper's N(0, 1/D) draw; 'kmeans++': fitted to the first batch) and W starts at the
    identity, so training starts from the codes C, where a plain 'vq' codebook would.
    """

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        frozen = initial_codebook(rng, z, self.num_codes, init=self.initializer, kmeans_iters=self.kmeans_iters)
        usage = stats.CodeUsage.fresh(self.num_codes)
        return {"params": {"transform": jnp.eye(self.dim, dtype=jnp.float32)},
                "state": FrozenCodebookState(frozen, usage.usage, usage.last_used)}

    def codebook(self, variables: dict) -> jax.Array:
        """The codes C W [K, D] the vectors are compared with."""
        return linear_codebook(variables["state"].frozen_codebook, variables["params"]["transform"])

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        del train, rng
        q = quantize(z, self.codebook(variables), gradient=self.gradient)
        losses = vq_loss_terms(q.codebook_loss, q.commitment_loss, beta=self.beta, legacy=self.legacy_beta)
        return QuantizerOutput(q.quantized, q.indices, losses,
                               {"perplexity": stats.perplexity(stats.code_counts(q.indices, self.num_codes))})

    def update(self, variables: dict, z: jax.Array, output: QuantizerOutput, step: jax.Array,
               rng: jax.Array) -> tuple[dict, dict]:
        state, dead, candidates, metrics = self.track_usage(variables["state"], output.indices, step, z, rng)
        if self.dead_code_threshold > 0:
            # A dead code restarts where C_k W is the candidate (least squares through W's
            # pseudo-inverse): C changes here, outside the gradient, and never by the optimizer.
            restarted = jnp.einsum("kd,de->ke", candidates, jnp.linalg.pinv(variables["params"]["transform"]),
                                   precision=_HIGHEST)
            state = state.replace(frozen_codebook=jnp.where(dead[:, None], restarted, state.frozen_codebook),
                                  usage=jnp.where(dead, 1.0, state.usage))
        return {"params": variables["params"], "state": state}, metrics

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        return lookup(self.codebook(variables), indices)
