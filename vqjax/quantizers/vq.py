"""The codebook learned by loss (van den Oord et al. 2017; taming's VectorQuantizer2): codes
are parameters, moved by the codebook term of the VQ loss."""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.losses.vq import vq_loss_terms
from vqjax.quantizers import stats
from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers.ema import CodebookSettings
from vqjax.quantizers.init import initial_codebook, uniform_codebook
from vqjax.quantizers.search import NearestCode, lookup, quantize


@dataclasses.dataclass(frozen=True)
class LearnedQuantizer(CodebookSettings, Quantizer):
    """Nearest code in a codebook trained by the optimizer (`config.quantizer.kind='vq'`):
    params {'codebook': [K, D]}, state `CodeUsage`."""

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        codebook = initial_codebook(rng, z, self.num_codes, init=self.initializer, kmeans_iters=self.kmeans_iters)
        return {"params": {"codebook": codebook}, "state": stats.CodeUsage.fresh(self.num_codes)}

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        del train, rng
        q = quantize(z, variables["params"]["codebook"], gradient=self.gradient)
        losses = vq_loss_terms(q.codebook_loss, q.commitment_loss, beta=self.beta, legacy=self.legacy_beta)
        return QuantizerOutput(q.quantized, q.indices, losses,
                               {"perplexity": stats.perplexity(stats.code_counts(q.indices, self.num_codes))})

    def update(self, variables: dict, z: jax.Array, output: QuantizerOutput, step: jax.Array,
               rng: jax.Array) -> tuple[dict, dict]:
        usage, dead, candidates, metrics = self.track_usage(variables["state"], output.indices, step, z, rng)
        codebook = variables["params"]["codebook"]
        if self.dead_code_threshold > 0:
            # A restart moves the parameter: the optimizer reads the moved code at the next step.
            codebook = jnp.where(dead[:, None], candidates, codebook)
            usage = usage.replace(usage=jnp.where(dead, 1.0, usage.usage))
        return {"params": {**variables["params"], "codebook": codebook}, "state": usage}, metrics

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        return lookup(variables["params"]["codebook"], indices)


class VectorQuantizer(nn.Module):
    """A learned codebook as a linen module, for composing into other linen models. Returns
    the `NearestCode` terms; the loss is `codebook_loss + beta * commitment_loss`."""

    num_codes: int
    dim: int

    @nn.compact
    def __call__(self, z: jax.Array) -> NearestCode:
        codebook = self.param("codebook", lambda rng: uniform_codebook(rng, self.num_codes, self.dim))
        return quantize(z, codebook)
