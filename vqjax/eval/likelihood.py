"""Likelihood of code maps under a prior: exact for GPT, an any-order upper bound for
MaskGIT; bits per token and bits per image dimension."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from vqjax.core import parallel
from vqjax.data import codes as codes_lib
from vqjax.nets.transformer import Transformer


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """-log p(token) per position, in nats (float32)."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), tokens[..., None], -1)[..., 0]


def make_eval_step(model: Transformer) -> Callable:
    """eval_step(params, batch, rng) -> sums of per-sequence negative log-likelihoods (nats).

    GPT: the exact -log p(x) = sum_i -log p(x_i | x_<i, c). MaskGIT defines no likelihood of its
    own; we report the any-order bound it supports (Uria et al. 2014; Hoogeboom et al. 2022,
    ARDMs): -log p(x) <= E_m [L / m * sum over m random masked positions of -log p(x_j | rest)],
    m ~ U{1..L}, estimated with one draw per sequence (fixed rng, so runs compare).
    """

    def eval_step(params, batch: dict, rng: jax.Array):
        tokens, labels, mask = batch["tokens"], batch["label"], batch["mask"]
        batch_size, length = tokens.shape
        if model.causal:
            nll = jnp.sum(token_nll(model.apply({"params": params}, tokens, labels), tokens), axis=-1)
        else:
            count_rng, order_rng = jax.random.split(rng)
            count = jax.random.randint(count_rng, (batch_size, 1), 1, length + 1)
            ranks = jnp.argsort(jnp.argsort(jax.random.uniform(order_rng, (batch_size, length)), -1), -1)
            masked = ranks < count
            logits = model.apply({"params": params}, jnp.where(masked, model.mask_token, tokens), labels)
            nll = length / count[:, 0] * jnp.sum(token_nll(logits, tokens) * masked, axis=-1)
        return {"nll_sum": jnp.sum(nll * mask), "num_examples": jnp.sum(mask)}

    return eval_step


def likelihood_metrics(nll_sum: float, num_examples: float, seq_len: int, image_shape: tuple) -> dict:
    """Mean NLL per sequence (nats) -> bits per token and bits per image dimension (H * W * C
    sub-pixels: the VQ-VAE paper's latent term of bits/dim)."""
    bits_per_image = nll_sum / max(num_examples, 1.0) / math.log(2)
    return {"bits_per_token": bits_per_image / seq_len,
            "bits_per_dim": bits_per_image / math.prod(image_shape)}


def evaluate(eval_step: Callable, params, codes: dict, *, batch_size: int, num_batches: int, seed: int, mesh,
             seq_len: int, image_shape: tuple) -> dict:
    """Bits per token and per dimension of the code maps `codes` (one padded pass of
    `num_batches` batches, -1 = all); batch i's rng is fold_in(key(seed), i)."""
    sums = None
    for i, batch in enumerate(codes_lib.eval_batches(codes, batch_size, num_batches)):
        rng = jax.random.fold_in(jax.random.key(seed), i)
        out = eval_step(params, parallel.to_global(batch, mesh), rng)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    result = likelihood_metrics(float(sums["nll_sum"]), float(sums["num_examples"]), seq_len, image_shape)
    result["num_eval_examples"] = int(sums["num_examples"])
    return result


def describe(model: Transformer) -> str:
    """What the reported likelihood is, for metrics.json."""
    return "exact" if model.causal else "any-order upper bound (one draw per code map)"
