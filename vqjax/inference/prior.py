"""A trained prior with its tokenizer, for notebooks, scripts and applications:

    prior = vqjax.prior.load("/tmp/prior_quickstart")
    images = prior.sample(jax.random.key(0), labels=[0, 1, 2, 3])
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqjax.core import checkpoints
from vqjax.inference import legacy, tokenizer as tokenizer_lib
from vqjax.inference.tokenizer import Tokenizer
from vqjax.nets import build as nets
from vqjax.nets.transformer import Transformer
from vqjax.sampling.prior import sample_tokens


def resolve_data(data_cfg, tokenizer: Tokenizer) -> ml_collections.ConfigDict:
    """A prior's `config.data`; with `source='tokenizer'`, the tokenizer's data with this
    config's batch sizes, splits and seed."""
    if data_cfg.source != "tokenizer":
        return data_cfg
    resolved = ml_collections.ConfigDict(tokenizer.config.data.to_dict())
    for name in ("batch_size", "eval_batch_size", "train_split", "eval_split", "seed"):
        resolved[name] = data_cfg[name]
    return resolved


class Prior:
    """A trained prior with its tokenizer, for notebooks and scripts:

        prior = vqjax.prior.load("/tmp/prior_quickstart")
        images = prior.sample(jax.random.key(0), labels=[0, 1, 2, 3])

    Attributes: `config`, `model` (the Transformer), `params` (the weight average when the run
    kept one), `tokenizer` (a `vqjax.pretrained.Tokenizer`), `code_shape` ((h, w) or (h, w, depth)).
    """

    def __init__(self, config, model: Transformer, params, tokenizer: Tokenizer, code_shape: tuple):
        self.config, self.model, self.params = config, model, params
        self.tokenizer, self.code_shape = tokenizer, tuple(code_shape)

    def sample_codes(self, rng: jax.Array, labels=None, num_samples: int = 0, **sampling) -> jax.Array:
        """Code maps [B, h, w]. `labels` (class per sample; default the null label x
        `num_samples`); keyword overrides of `config.sampling` (temperature, top_k, top_p,
        guidance_scale, num_steps, schedule, choice_temperature)."""
        if labels is None:
            if num_samples <= 0:
                raise ValueError("Pass labels (one class per sample) or num_samples for unconditional samples.")
            labels = np.full((num_samples,), self.model.null_label, np.int32)
        labels = np.asarray(labels, np.int32)
        if labels.ndim != 1 or labels.min() < 0 or labels.max() > self.model.null_label:
            raise ValueError(f"Labels must be a list of classes in [0, {self.model.null_label}] "
                             f"({self.model.null_label} = unconditional); got {labels.tolist()}.")
        sampling_cfg = ml_collections.ConfigDict(self.config.sampling.to_dict())
        sampling_cfg.update(sampling)
        codes = sample_tokens(self.model, self.params, rng, labels, sampling_cfg)
        return codes.reshape(len(labels), *self.code_shape)

    def sample(self, rng: jax.Array, labels=None, num_samples: int = 0, **sampling) -> jax.Array:
        """Images [B, H, W, C] in [-1, 1]: sampled code maps through the tokenizer's decoder."""
        codes = self.sample_codes(rng, labels, num_samples, **sampling)
        return jnp.clip(self.tokenizer.decode_indices(codes), -1.0, 1.0)


def load(workdir: str) -> Prior:
    """The prior trained in `workdir` (its newest checkpoint) and the tokenizer it names."""
    config = legacy.read_model_config(workdir)
    if config.family != "prior":
        raise ValueError(f"{workdir} holds a tokenizer, not a prior; load it with vqjax.pretrained.load.")
    tokenizer = tokenizer_lib.load(config.tokenizer_dir)
    data_cfg = resolve_data(config.data, tokenizer)
    # A code map is (h, w) codes, or (h, w, depth) of a residual quantizer, read as one sequence.
    code_shape = tokenizer.code_shape(data_cfg.image_size)
    seq_len = math.prod(code_shape)
    model = nets.build_transformer(num_codes=tokenizer.num_codes, seq_len=seq_len, **config.model)
    _, saved = checkpoints.read_latest(workdir, "vqjax.prior.load's workdir")
    params = saved.get("ema_params") or saved["params"]
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32),
                                                 jnp.zeros((1,), jnp.int32))["params"])
    problem = checkpoints.first_mismatch(params, expected)
    if problem:
        raise ValueError(f"The checkpoint in {workdir} does not fit its config.json ({problem}).")
    return Prior(config, model, params, tokenizer, code_shape)
