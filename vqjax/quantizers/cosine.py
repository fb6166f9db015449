"""Factorised, l2-normalised codes (Yu et al. 2022, "Vector-quantized Image Modeling with
Improved VQGAN", sec. 3.2): a learned linear map takes encoder outputs to a low
`codebook_dim`, where vectors and codes are l2-normalised and the nearest code is the one of
largest cosine similarity; a second linear map takes the code back to the encoder's dimension.

Kind 'cosine' (the name vqjax's layout and vector-quantize-pytorch's `use_cosine_sim` give it):
what sets it apart from 'vq' is the search by cosine similarity; the factorisation (the low
dimension) is a field, `codebook_dim`.

On unit vectors |x - e|^2 = 2 - 2 x.e, so the nearest code in L2 is the code of largest
cosine: the search is `search.quantize` on the normalised vectors, and the codebook and
commitment terms are the usual ones there.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from vqjax.losses.vq import vq_loss_terms
from vqjax.quantizers import stats
from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers.ema import CodebookSettings
from vqjax.quantizers.init import initial_codebook, uniform_codebook
from vqjax.quantizers import projection
from vqjax.quantizers.projection import apply_linear
from vqjax.quantizers.search import lookup, quantize

# vector-quantize-pytorch's `l2norm` (F.normalize) clamps norms at the same value.
_SMALLEST_NORM = 1e-6


def l2_normalize(v: jax.Array) -> jax.Array:
    return projection.l2_normalize(v, _SMALLEST_NORM)


def init_linear(rng: jax.Array, in_dim: int, out_dim: int) -> dict:
    """Kernel U(-1/sqrt(in), 1/sqrt(in)) (torch's nn.Linear default scale), zero bias."""
    limit = 1.0 / jnp.sqrt(in_dim)
    return {"kernel": jax.random.uniform(rng, (in_dim, out_dim), jnp.float32, -limit, limit),
            "bias": jnp.zeros((out_dim,), jnp.float32)}


@dataclasses.dataclass(frozen=True)
class CosineQuantizer(CodebookSettings, Quantizer):
    """`config.quantizer.kind='cosine'`: params {'project_in': [D -> d], 'codebook': [K, d],
    'project_out': [d -> D]}, state `CodeUsage`; the codebook is learned by its loss term
    (normalised in use, so only directions matter) and restarts on normalised projections.

    Yu et al. look codes up in d = 32 dimensions (lower dimensions raised their code usage);
    the gradient estimator acts in the normalised space, before the projection out.
    """

    codebook_dim: int = 32

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        in_rng, out_rng, codebook_rng = jax.random.split(rng, 3)
        project_in = init_linear(in_rng, z.shape[-1], self.codebook_dim)
        project_out = init_linear(out_rng, self.codebook_dim, self.dim)
        if self.initializer == "uniform":
            codebook = uniform_codebook(codebook_rng, self.num_codes, self.codebook_dim)
        else:  # fitted to the vectors it will search among
            codebook = initial_codebook(codebook_rng, l2_normalize(apply_linear(project_in, z)), self.num_codes,
                                        init=self.initializer, kmeans_iters=self.kmeans_iters)
        return {"params": {"project_in": project_in, "codebook": codebook, "project_out": project_out},
                "state": stats.CodeUsage.fresh(self.num_codes)}

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        del train, rng
        params = variables["params"]
        q = quantize(self.search_vectors(params, z), l2_normalize(params["codebook"]), gradient=self.gradient)
        losses = vq_loss_terms(q.codebook_loss, q.commitment_loss, beta=self.beta, legacy=self.legacy_beta)
        quantized = apply_linear(params["project_out"], q.quantized).astype(z.dtype)
        return QuantizerOutput(quantized, q.indices, losses,
                               {"perplexity": stats.perplexity(stats.code_counts(q.indices, self.num_codes))})

    def update(self, variables: dict, z: jax.Array, output: QuantizerOutput, step: jax.Array,
               rng: jax.Array) -> tuple[dict, dict]:
        params = variables["params"]
        # Dead codes restart at normalised projections: the vectors codes are compared with.
        search_vectors = jax.lax.stop_gradient(self.search_vectors(params, z))
        usage, dead, candidates, metrics = self.track_usage(variables["state"], output.indices, step,
                                                            search_vectors, rng)
        if self.dead_code_threshold > 0:
            # A restart moves the parameter, as for 'vq': the optimizer reads the moved code next.
            params = {**params, "codebook": jnp.where(dead[:, None], candidates, params["codebook"])}
            usage = usage.replace(usage=jnp.where(dead, 1.0, usage.usage))
        return {"params": params, "state": usage}, metrics

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        params = variables["params"]
        return apply_linear(params["project_out"], lookup(l2_normalize(params["codebook"]), indices))

    @staticmethod
    def search_vectors(params: dict, z: jax.Array) -> jax.Array:
        """The unit vectors [..., d] that codes are compared with."""
        return l2_normalize(apply_linear(params["project_in"], z))
