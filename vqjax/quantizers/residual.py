"""Residual vector quantization (Zeghidour et al. 2021, SoundStream, algorithm 1; Lee et al.
2022, RQ-VAE): `depth` stages, each a nearest-code quantizer of the residual the stages before
it left, and the vectors the decoder reads are the sum of the stages' codes.

Conventions (the choices the papers leave open):

* The residual after a stage is what is left once its code is subtracted, under
  `stop_gradient`: every stage's input still carries z's gradient, so every stage's commitment
  term pulls z towards the partial sum up to that stage, and the stages' loss terms add up
  (RQ-VAE's commitment loss is a sum over depths).
* The output is the sum of the stages' outputs, each with its own gradient estimator (and, for
  stages such as 'cosine', its own output projection, which the decoder's gradient trains).
  Under straight-through the gradient to z is therefore `depth` times the identity, as in
  vector-quantize-pytorch's ResidualVQ (RQ-VAE applies one straight-through to the sum instead).
* Quantizer dropout (SoundStream's bitrate scalability) keeps the first n stages, n uniform in
  1..depth, one n per batch (as EnCodec and vector-quantize-pytorch do; SoundStream draws one
  per example), so each stage's loss terms stay whole-batch scalars. Dropped stages still
  quantize their residual and report their codes: indices are always valid codes
  `[..., depth]`, the dropped stages add nothing to the output or the losses, and
  `lookup(indices[..., :n])` gives the output (n is the metric `stages_kept`). Their statistics
  are still updated: each stage's codebook keeps learning the residuals it would quantize.
* `num_codes` counts the codes of one stage; `shared_codebook=True` gives every stage the same
  codebook, updated once per step from all stages' residuals.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers.ema import CodebookSettings


def stage_metrics(stacked: dict) -> dict:
    """Per-stage metrics [depth] -> their mean over stages under the stage's name, and each
    stage's value under `name_stage{k}`."""
    flat = {}
    for name, values in stacked.items():
        flat[name] = jnp.mean(values)
        for k in range(values.shape[0]):
            flat[f"{name}_stage{k}"] = values[k]
    return flat


def stages_first(indices: jax.Array) -> jax.Array:
    """[..., N] -> [N, ...]."""
    return jnp.moveaxis(indices, -1, 0)


@dataclasses.dataclass(frozen=True)
class ResidualQuantizer(CodebookSettings, Quantizer):
    """`config.quantizer.kind='residual'`: `depth` stages of kind `stage` ('vq', 'ema',
    'cosine', 'simvq'), built from the other fields of `config.quantizer`. Variables are the
    stage's with a leading `depth` axis on every array (one set when `shared_codebook`).
    """

    stage: str = "vq"
    depth: int = 4  # RQ-VAE's depth for 256x256 images
    shared_codebook: bool = False
    quantizer_dropout: bool = False  # train on the first n ~ U{1..depth} stages (SoundStream)
    # Fields of the stage kinds, forwarded to each stage; the defaults are the stages' own.
    decay: float = 0.99  # 'ema'
    epsilon: float = 1e-5  # 'ema'
    debias: bool = False  # 'ema'
    codebook_dim: int = 32  # 'cosine'

    def __post_init__(self):
        super().__post_init__()
        if self.depth < 1:
            raise ValueError(f"config.quantizer.depth is {self.depth}; a residual quantizer needs at "
                             "least one stage, so set depth to 1 or more.")
        self.stage_quantizer()  # refuses a stage kind it cannot build

    def stage_quantizer(self) -> Quantizer:
        """The quantizer of one stage: kind `stage` with this quantizer's fields it accepts."""
        from vqjax.quantizers import QUANTIZERS  # here: the registry imports this module

        cls = QUANTIZERS.get(self.stage)
        if cls is None or issubclass(cls, ResidualQuantizer) or not issubclass(cls, CodebookSettings):
            kinds = sorted(k for k, c in QUANTIZERS.items()
                           if issubclass(c, CodebookSettings) and not issubclass(c, ResidualQuantizer))
            raise ValueError(f"config.quantizer.stage is {self.stage!r}; a residual stage is a nearest-code "
                             f"quantizer, one of {kinds}.")
        accepted = {f.name for f in dataclasses.fields(cls)}
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in accepted})

    def index_shape(self, z_shape: tuple) -> tuple:
        return tuple(z_shape[:-1]) + (self.depth,)

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        stage = self.stage_quantizer()
        z = jax.lax.stop_gradient(z).astype(jnp.float32)
        if self.shared_codebook:
            return stage.init(rng, z)

        def init_stage(residual, stage_rng):
            # Each stage is initialised on the residual it will see (k-means++ fits it).
            variables = stage.init(stage_rng, residual)
            indices = stage(variables, residual).indices
            return residual - stage.lookup(variables, indices), variables

        _, stacked = jax.lax.scan(init_stage, z, jax.random.split(rng, self.depth))
        return stacked

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        stage = self.stage_quantizer()
        num_kept = self.depth
        if train and self.quantizer_dropout:
            if rng is None:
                raise ValueError("Quantizer dropout draws the number of stages in training; pass rng=.")
            rng, dropout_rng = jax.random.split(rng)
            num_kept = jax.random.randint(dropout_rng, (), 1, self.depth + 1)

        def run_stage(carry, inputs):
            residual, total = carry
            k, stage_variables = inputs
            if self.shared_codebook:
                stage_variables = variables
            stage_rng = None if rng is None else jax.random.fold_in(rng, k)
            out = stage(stage_variables, residual, train=train, rng=stage_rng)
            kept = k < num_kept
            total = total + jnp.where(kept, out.quantized.astype(jnp.float32), 0.0)
            losses = {name: jnp.where(kept, value, 0.0) for name, value in out.losses.items()}
            code = jax.lax.stop_gradient(stage.lookup(stage_variables, out.indices))
            return (residual - code, total), (out.indices, losses, out.metrics)

        per_stage = (jnp.arange(self.depth), None if self.shared_codebook else variables)
        z32 = z.astype(jnp.float32)
        (_, total), (indices, losses, metrics) = jax.lax.scan(run_stage, (z32, jnp.zeros_like(z32)), per_stage)
        metrics = stage_metrics(metrics)
        if train and self.quantizer_dropout:
            metrics["stages_kept"] = jnp.asarray(num_kept, jnp.float32)
        return QuantizerOutput(total.astype(z.dtype), jnp.moveaxis(indices, 0, -1),
                               {name: jnp.sum(value) for name, value in losses.items()}, metrics)

    def stage_codes(self, variables: dict, indices: jax.Array) -> jax.Array:
        """The codes [M, ..., D] of the first M stages for `indices` [..., M] (M <= depth)."""
        if indices.shape[-1] > self.depth:
            raise ValueError(f"The indices have {indices.shape[-1]} stages on their last axis but the "
                             f"residual quantizer has depth {self.depth}.")
        stage = self.stage_quantizer()
        if self.shared_codebook:
            return stage.lookup(variables, stages_first(indices))
        first = jax.tree.map(lambda leaf: leaf[:indices.shape[-1]], variables)
        return jax.vmap(stage.lookup)(first, stages_first(indices))

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        """The sum of the codes of `indices` [..., M]: all stages (M = depth), or the first M
        (what the decoder reads after quantizer dropout kept M)."""
        return jnp.sum(self.stage_codes(variables, indices), axis=0)

    def update(self, variables: dict, z: jax.Array, output: QuantizerOutput, step: jax.Array,
               rng: jax.Array) -> tuple[dict, dict]:
        stage = self.stage_quantizer()
        codes = self.stage_codes(variables, output.indices)
        # The residuals the stages quantized, rebuilt from their codes as `__call__` made them.
        _, residuals = jax.lax.scan(lambda residual, code: (residual - code, residual),
                                    jax.lax.stop_gradient(z).astype(jnp.float32), codes)
        stage_indices = stages_first(output.indices)
        if self.shared_codebook:
            # One update of the one codebook from all stages' residuals: [..., depth, D].
            stage_output = QuantizerOutput(jnp.moveaxis(codes, 0, -2), output.indices, {}, {})
            return stage.update(variables, jnp.moveaxis(residuals, 0, -2), stage_output, step, rng)

        def update_stage(stage_variables, residual, code, index, stage_rng):
            return stage.update(stage_variables, residual, QuantizerOutput(code, index, {}, {}), step, stage_rng)

        variables, metrics = jax.vmap(update_stage)(variables, residuals, codes, stage_indices,
                                                    jax.random.split(rng, self.depth))
        return variables, stage_metrics(metrics)
