"""Trained or converted VQ tokenizers as one object, for notebooks and scripts.

    tokenizer = vqjax.pretrained.load(DIR)    # a training workdir, or `python -m vqjax.convert taming --out DIR`
    z_q, indices = tokenizer.encode(images)   # images [B, H, W, C] in [-1, 1]
    images = tokenizer.decode_indices(indices)

A workdir is read at its newest checkpoint with the weights its evaluation used (the weight
average when `optim.params_ema_decay > 0`), so `reconstruct` gives the images the trainer's
evaluation gave. The functions are compiled once per input shape.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import checkpoints, quantizers, steps


def _gumbel_indices(z: jax.Array, proj: dict) -> jax.Array:
    """GumbelQuantize at inference: the most likely code (taming samples Gumbel noise even in
    eval mode; its argmax as temperature -> 0 is this)."""
    logits = jnp.einsum("...c,ck->...k", z.astype(jnp.float32), proj["kernel"][0, 0],
                        precision=jax.lax.Precision.HIGHEST) + proj["bias"]
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _encode_fn(model, params, codebook, gumbel_proj, images):
    z = model.apply({"params": params}, images, method="encode")
    if gumbel_proj is None:
        indices = quantizers.nearest_code(z, codebook)
    else:
        indices = _gumbel_indices(z, gumbel_proj)
    return quantizers.lookup(codebook, indices), indices


def _decode_fn(model, params, z_q):
    return model.apply({"params": params}, z_q, method="decode")


# XLA's default compile options, not the config's `parallel.config_compiler_options`: these
# serve inference on large images, where YNNPACK's convolutions are the faster ones on a CPU
# (bench/taming_convert.py, 256x256: 0.59 img/s with the defaults, 0.51 with the options).
_encode = jax.jit(_encode_fn, static_argnums=0)
_decode = jax.jit(_decode_fn, static_argnums=0)


class Tokenizer:
    """A VQ autoencoder with its codebook: encode, decode, decode_indices, reconstruct.

    Attributes: `config` (the ml-collections config it was built from), `model` (the flax
    module), `params`, `codebook` ([K, D] code vectors) and `gumbel_proj` (the logit
    projection of a GumbelQuantize model, else None).
    """

    def __init__(self, config, params: Any, codebook: jax.Array, gumbel_proj: Optional[dict] = None,
                 step: Optional[int] = None):
        self.config = config
        self.step = step  # the checkpoint step it was read from, when read from a directory
        self.model = steps.build_model(config.model)
        self.params = jax.tree.map(jnp.asarray, params)
        self.codebook = jnp.asarray(codebook, jnp.float32)
        self.gumbel_proj = None if gumbel_proj is None else jax.tree.map(jnp.asarray, gumbel_proj)

    @property
    def num_codes(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def downsampling_factor(self) -> int:
        """Image side / code-map side."""
        return steps.downsampling_factor(self.model)

    def _check_images(self, images) -> jax.Array:
        images = jnp.asarray(images)
        channels = int(self.config.data.get("channels", 3))
        factor = self.downsampling_factor
        if images.ndim != 4 or images.shape[-1] != channels:
            raise ValueError(f"Images have shape {images.shape}; this model takes [batch, height, width, "
                             f"{channels}] (NHWC).")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"Images are {images.dtype}; pass floats in [-1, 1] (uint8 x: x / 127.5 - 1).")
        if images.shape[1] % factor or images.shape[2] % factor:
            raise ValueError(f"Images are {images.shape[1]}x{images.shape[2]}; this model downsamples by "
                             f"{factor}, so height and width must be multiples of {factor}.")
        return images

    def encode(self, images) -> tuple[jax.Array, jax.Array]:
        """Images [B, H, W, C] in [-1, 1] -> (quantized vectors [B, h, w, D], code indices [B, h, w])."""
        return _encode(self.model, self.params, self.codebook, self.gumbel_proj, self._check_images(images))

    def decode(self, z_q) -> jax.Array:
        """Quantized vectors [B, h, w, D] -> images [B, H, W, C] (the decoder's output, unclipped)."""
        z_q = jnp.asarray(z_q)
        if z_q.ndim != 4 or z_q.shape[-1] != self.codebook.shape[1]:
            raise ValueError(f"Code vectors have shape {z_q.shape}; this model decodes [batch, h, w, "
                             f"{self.codebook.shape[1]}].")
        return _decode(self.model, self.params, z_q)

    def decode_indices(self, indices) -> jax.Array:
        """Code indices [B, h, w] (ints in [0, num_codes)) -> images [B, H, W, C]."""
        indices = jnp.asarray(indices)
        if indices.ndim != 3 or not jnp.issubdtype(indices.dtype, jnp.integer):
            raise ValueError(f"Indices have shape {indices.shape} and dtype {indices.dtype}; pass integer "
                             "code maps of shape [batch, h, w].")
        low, high = int(jnp.min(indices)), int(jnp.max(indices))
        if low < 0 or high >= self.num_codes:
            raise ValueError(f"Indices range over [{low}, {high}] but the codebook has {self.num_codes} "
                             "codes.")
        return self.decode(quantizers.lookup(self.codebook, indices))

    @property
    def weights(self) -> tuple:
        """The arrays `reconstruct_fn` takes: (params, codebook, gumbel_proj)."""
        return self.params, self.codebook, self.gumbel_proj

    def encode_fn(self):
        """A pure `encode(weights, images) -> indices [B, h, w]`, to be compiled over a mesh
        with `self.weights`."""
        model = self.model

        def encode(weights, images):
            return _encode_fn(model, *weights, images)[1]

        return encode

    def reconstruct_fn(self):
        """A pure `reconstruct(weights, images) -> (reconstruction, indices)` for
        `vqjax.evaluation`, to be compiled over a mesh with `self.weights`."""
        model = self.model

        def reconstruct(weights, images):
            params, codebook, gumbel_proj = weights
            z_q, indices = _encode_fn(model, params, codebook, gumbel_proj, images)
            return _decode_fn(model, params, z_q), indices

        return reconstruct

    def reconstruct(self, images) -> jax.Array:
        """encode -> decode, clipped to [-1, 1] as the trainer's reconstructions are."""
        z_q, _ = self.encode(images)
        return jnp.clip(self.decode(z_q), -1.0, 1.0)


def load(directory: str) -> Tokenizer:
    """The tokenizer in `directory`: a vqjax training workdir, or a model directory written by
    `python -m vqjax.convert taming`. Both hold `config.json` and `checkpoints/`."""
    config = checkpoints.read_config(directory)
    step, saved = checkpoints.read_latest(directory, "vqjax.pretrained.load's directory")
    params = saved.get("ema_params") or saved["params"]
    model = steps.build_model(config.model)
    size = config.model.get("resolution", config.data.image_size)
    expected = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, size, size, config.data.get("channels", 3))))["params"]
    problem = checkpoints.first_mismatch(params, expected)
    if problem:
        raise ValueError(f"The checkpoint in {directory} does not fit its config.json ({problem}).")
    embedding = np.asarray(saved["codebook"]["embedding"], np.float32)
    if embedding.shape[-1] != config.model.embed_dim:
        raise ValueError(f"The codebook in {directory} has {embedding.shape} vectors but config.json "
                         f"has model.embed_dim={config.model.embed_dim}.")
    return Tokenizer(config, params, embedding, saved.get("gumbel_proj"), step=step)
