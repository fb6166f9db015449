"""Quantizers: the interface (`base.Quantizer`), the registry and its builder, and the
functions they are made of (search, statistics, initialisers).

    quantizer = quantizers.build(config.quantizer, dim=config.model.embed_dim)
    variables = quantizer.init(rng, z)                      # {'params', 'state'}
    out = quantizer(variables, z, train=True, rng=rng)      # quantized, indices, losses, metrics
    variables, metrics = quantizer.update(variables, z, out, step, rng)   # outside the gradient

A new quantizer is one module with a `Quantizer` subclass and one entry in `QUANTIZERS`.
"""

from __future__ import annotations

import dataclasses

from vqjax.quantizers.base import Quantizer, QuantizerOutput, total_loss
from vqjax.quantizers.ema import (CodebookState, EMAQuantizer, ema_update, laplace_smoothing,
                                  reset_codes, restart_dead_codes)
from vqjax.quantizers.cosine import CosineQuantizer
from vqjax.quantizers.fsq import PRESET_LEVELS, FiniteScalarQuantizer
from vqjax.quantizers.gumbel import GumbelQuantizer
from vqjax.quantizers.init import init_codebook_from_data, kmeans, kmeans_plus_plus, uniform_codebook
from vqjax.quantizers.lfq import BinarySphericalQuantizer, LookupFreeQuantizer
from vqjax.quantizers.residual import ResidualQuantizer
from vqjax.quantizers.search import (CODES_PER_BLOCK, VECTORS_PER_CHUNK, NearestCode, lookup,
                                     nearest_code, quantize, squared_distances, straight_through)
from vqjax.quantizers.search import GRADIENT_ESTIMATORS, rotation_trick
from vqjax.quantizers.simvq import FrozenCodebookState, SimVQQuantizer
from vqjax.quantizers.stats import (CodeUsage, code_counts, perplexity, recent_usage, update_usage,
                                    usage_fraction)
from vqjax.quantizers.vq import LearnedQuantizer, VectorQuantizer
from vqjax.losses.vq import codebook_and_commitment_losses

QUANTIZERS: dict[str, type[Quantizer]] = {
    "vq": LearnedQuantizer,
    "ema": EMAQuantizer,
    "gumbel": GumbelQuantizer,
    "cosine": CosineQuantizer,
    "simvq": SimVQQuantizer,
    "residual": ResidualQuantizer,
    "fsq": FiniteScalarQuantizer,
    "lfq": LookupFreeQuantizer,
    "bsq": BinarySphericalQuantizer,
}
# config.quantizer field -> constructor argument, where the config's name is taken by the
# interface (`init` is the method that makes the variables).
_RENAMED = {"init": "initializer"}


def build(quantizer_cfg, dim: int) -> Quantizer:
    """The quantizer `quantizer_cfg.kind` names, for `dim`-dimensional encoder outputs, with
    the fields of `quantizer_cfg` it has (other kinds' fields are ignored)."""
    fields = dict(quantizer_cfg)
    kind = fields.pop("kind", None)
    if kind not in QUANTIZERS:
        raise ValueError(f"config.quantizer.kind is {kind!r}; use one of {sorted(QUANTIZERS)}.")
    cls = QUANTIZERS[kind]
    accepted = {f.name for f in dataclasses.fields(cls)}
    arguments = {_RENAMED.get(k, k): v for k, v in fields.items() if _RENAMED.get(k, k) in accepted}
    return cls(dim=int(dim), **arguments)


__all__ = [
    "QUANTIZERS", "build", "Quantizer", "QuantizerOutput", "total_loss", "CodebookState", "EMAQuantizer",
    "GumbelQuantizer", "LearnedQuantizer", "VectorQuantizer", "CodeUsage", "NearestCode", "CODES_PER_BLOCK",
    "VECTORS_PER_CHUNK", "code_counts", "codebook_and_commitment_losses", "ema_update", "init_codebook_from_data",
    "kmeans", "kmeans_plus_plus", "laplace_smoothing", "lookup", "nearest_code", "perplexity", "quantize",
    "recent_usage", "reset_codes", "restart_dead_codes", "squared_distances", "straight_through",
    "uniform_codebook", "update_usage", "usage_fraction",
    "CosineQuantizer", "SimVQQuantizer", "FrozenCodebookState", "ResidualQuantizer", "GRADIENT_ESTIMATORS",
    "rotation_trick",
    "FiniteScalarQuantizer", "PRESET_LEVELS", "LookupFreeQuantizer", "BinarySphericalQuantizer",
]
