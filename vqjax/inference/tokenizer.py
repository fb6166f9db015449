"""Trained or converted VQ tokenizers as one object, for notebooks, scripts and applications.

    tokenizer = vqjax.pretrained.load(DIR)    # a training workdir, or `python -m vqjax.convert taming --out DIR`
    z_q, indices = tokenizer.encode(images)   # images [B, H, W, C] in [-1, 1]
    images = tokenizer.decode_indices(indices)

A workdir is read at its newest checkpoint with the weights its evaluation used (the weight
average when `optim.params_ema_decay > 0`), so `reconstruct` gives the images the trainer's
evaluation gave. The functions are compiled once per input shape.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import quantizers
from vqjax.core import checkpoints, parallel
from vqjax.inference import legacy
from vqjax.nets import build as nets


def _encode_fn(model, quantizer, weights, images):
    """(code vectors, indices): the vectors looked up from the indices, as the decoder reads them."""
    params, quantizer_state = weights
    variables = {"params": params["quantizer"], "state": quantizer_state}
    z = model.apply({"params": params["net"]}, images, method="encode")
    indices = quantizer(variables, z).indices
    return quantizer.lookup(variables, indices), indices


def _decode_fn(model, params, z_q):
    return model.apply({"params": params["net"]}, z_q, method="decode")


def _latents_fn(model, weights, images):
    """The encoder's output before quantisation (what latent diffusion models)."""
    return model.apply({"params": weights[0]["net"]}, images, method="encode")


def _decode_latents_fn(model, quantizer, weights, z):
    """Latents -> nearest codes -> images: the first stage's decoding of a latent sample."""
    params, quantizer_state = weights
    out = quantizer({"params": params["quantizer"], "state": quantizer_state}, z)
    return _decode_fn(model, params, quantizer.lookup({"params": params["quantizer"], "state": quantizer_state},
                                                      out.indices))


# XLA's default compile options, not a config's `train.cpu_convolutions`: these serve
# inference on large images, where YNNPACK's convolutions are the faster ones on a CPU
# (bench/taming_convert.py measures both).
_encode = jax.jit(_encode_fn, static_argnums=(0, 1))
_decode_latents = jax.jit(_decode_latents_fn, static_argnums=(0, 1))
_latents = jax.jit(_latents_fn, static_argnums=0)
_decode = jax.jit(_decode_fn, static_argnums=0)


class Tokenizer:
    """A VQ autoencoder with its quantizer: encode, decode, decode_indices, reconstruct.

    Attributes: `config` (the ml-collections config it was built from), `model` (the flax
    module), `quantizer` (a `vqjax.quantizers.Quantizer`), `params` ({'net', 'quantizer'}),
    `quantizer_state`, `codebook` ([K, D]: the vector of every code), `step` (the checkpoint
    step it was read from).
    """

    def __init__(self, config, params: Any, quantizer_state: Any = None, step: Optional[int] = None):
        self.config = config
        self.step = step
        self.model = nets.build_autoencoder(**config.model)
        self.quantizer = quantizers.build(config.quantizer, dim=config.model.embed_dim)
        self.params = jax.tree.map(jnp.asarray, params)
        self.quantizer_state = jax.tree.map(jnp.asarray, {} if quantizer_state is None else quantizer_state)

    @property
    def num_codes(self) -> int:
        return int(self.quantizer.num_codes)

    @property
    def weights(self) -> tuple:
        """The arrays `encode_fn` and `reconstruct_fn` take: (params, quantizer state)."""
        return self.params, self.quantizer_state

    @property
    def index_tail(self) -> tuple:
        """The axes of a code map after (h, w): () with one code per position, (depth,) for a
        residual quantizer's stacked codes."""
        return tuple(self.quantizer.index_shape((1, 1, self.quantizer.dim)))[2:]

    def code_shape(self, image_size: int) -> tuple:
        """The shape of one code map of `image_size` x `image_size` images: (h, w, *index_tail)."""
        side = image_size // self.downsampling_factor
        return (side, side, *self.index_tail)

    @functools.cached_property
    def codebook(self) -> jax.Array:
        if self.index_tail:
            raise ValueError(f"A {self.config.quantizer.kind!r} quantizer's code is a tuple of "
                             f"{self.index_tail} indices, not one row of a codebook; use decode_indices.")
        variables = {"params": self.params["quantizer"], "state": self.quantizer_state}
        return self.quantizer.lookup(variables, jnp.arange(self.num_codes, dtype=jnp.int32))

    @property
    def downsampling_factor(self) -> int:
        """Image side / code-map side."""
        return nets.downsampling_factor(self.model)

    @property
    def compiler_options(self) -> dict:
        """The compile options of the run that trained it (`train.cpu_convolutions`)."""
        return parallel.step_compiler_options(self.config.get("train", {}).get("cpu_convolutions", "ynnpack"))

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
        """Images [B, H, W, C] in [-1, 1] -> (quantized vectors [B, h, w, D], code indices
        [B, h, w, *index_tail])."""
        return _encode(self.model, self.quantizer, self.weights, self._check_images(images))

    def decode(self, z_q) -> jax.Array:
        """Quantized vectors [B, h, w, D] -> images [B, H, W, C] (the decoder's output, unclipped)."""
        z_q = jnp.asarray(z_q)
        if z_q.ndim != 4 or z_q.shape[-1] != self.quantizer.dim:
            raise ValueError(f"Code vectors have shape {z_q.shape}; this model decodes [batch, h, w, "
                             f"{self.quantizer.dim}].")
        return _decode(self.model, self.params, z_q)

    def decode_indices(self, indices) -> jax.Array:
        """Code indices [B, h, w, *index_tail] (ints in [0, num_codes)) -> images [B, H, W, C]."""
        indices = jnp.asarray(indices)
        tail = self.index_tail
        if (indices.ndim != 3 + len(tail) or tuple(indices.shape[3:]) != tail
                or not jnp.issubdtype(indices.dtype, jnp.integer)):
            expected = ", ".join(["batch", "h", "w", *map(str, tail)])
            raise ValueError(f"Indices have shape {indices.shape} and dtype {indices.dtype}; pass integer "
                             f"code maps of shape [{expected}].")
        low, high = int(jnp.min(indices)), int(jnp.max(indices))
        if low < 0 or high >= self.num_codes:
            raise ValueError(f"Indices range over [{low}, {high}] but the codebook has {self.num_codes} "
                             "codes.")
        variables = {"params": self.params["quantizer"], "state": self.quantizer_state}
        return self.decode(self.quantizer.lookup(variables, indices))

    def encode_fn(self):
        """A pure `encode(weights, images) -> indices [B, h, w]`, to be compiled over a mesh
        with `self.weights`."""
        model, quantizer = self.model, self.quantizer

        def encode(weights, images):
            return _encode_fn(model, quantizer, weights, images)[1]

        return encode

    def decode_latents(self, z) -> jax.Array:
        """Encoder-output-like latents [B, h, w, D] -> images: quantised to their nearest codes,
        then decoded (unclipped)."""
        z = jnp.asarray(z, jnp.float32)
        if z.ndim != 4 or z.shape[-1] != self.quantizer.dim:
            raise ValueError(f"Latents have shape {z.shape}; this model decodes [batch, h, w, {self.quantizer.dim}].")
        return _decode_latents(self.model, self.quantizer, self.weights, z)

    def latents(self, images) -> jax.Array:
        """Images [B, H, W, C] in [-1, 1] -> the encoder's output before quantisation [B, h, w, D]."""
        return _latents(self.model, self.weights, self._check_images(images))

    def latents_fn(self):
        """A pure `latents(weights, images) -> z [B, h, w, D]`, the encoder's output before
        quantisation (latent diffusion's data), to be compiled with `self.weights`."""
        return functools.partial(_latents_fn, self.model)

    def reconstruct_fn(self):
        """A pure `reconstruct(weights, images) -> (reconstruction, indices)` for
        `vqjax.eval.reconstruction`, to be compiled over a mesh with `self.weights`."""
        model, quantizer = self.model, self.quantizer

        def reconstruct(weights, images):
            z_q, indices = _encode_fn(model, quantizer, weights, images)
            return _decode_fn(model, weights[0], z_q), indices

        return reconstruct

    def reconstruct(self, images) -> jax.Array:
        """encode -> decode, clipped to [-1, 1] as the trainer's reconstructions are."""
        z_q, _ = self.encode(images)
        return jnp.clip(self.decode(z_q), -1.0, 1.0)


def load(directory: str) -> Tokenizer:
    """The tokenizer in `directory`: a vqjax training workdir, or a model directory written by
    `python -m vqjax.convert taming`. Both hold `config.json` and `checkpoints/`."""
    config = legacy.read_model_config(directory)
    if config.family == "prior":
        raise ValueError(f"{directory} holds a prior, not a tokenizer; load it with vqjax.prior.load.")
    if config.family not in ("vqvae", "vqgan"):
        raise ValueError(f"{directory} holds a {config.family} model, not a tokenizer (a vqvae or vqgan "
                         "workdir, or `python -m vqjax.convert taming` output).")
    step, saved = checkpoints.read_latest(directory, "vqjax.pretrained.load's directory")
    model = nets.build_autoencoder(**config.model)
    quantizer = quantizers.build(config.quantizer, dim=config.model.embed_dim)
    saved = legacy.upgrade_tokenizer_tree(saved, quantizer)
    params = saved.get("ema_params") or saved["params"]
    size = config.model.get("resolution", config.data.image_size)
    images = jax.ShapeDtypeStruct((1, size, size, config.data.get("channels", 3)), jnp.float32)
    expected_net = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    z = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode"), expected_net, images)
    expected_quantizer = jax.eval_shape(quantizer.init, jax.random.key(0), z)
    problem = checkpoints.first_mismatch(
        {"params": params, "state": saved["extra"]["quantizer"]},
        {"params": {"net": expected_net, "quantizer": expected_quantizer["params"]},
         "state": expected_quantizer["state"]})
    if problem:
        raise ValueError(f"The checkpoint in {directory} does not fit its config.json ({problem}).")
    quantizer_state = checkpoints.restructure(saved["extra"]["quantizer"], expected_quantizer["state"])
    return Tokenizer(config, params, quantizer_state, step=step)
