"""Sampling code maps from the priors of `vqjax.nets.transformer`; all jit-compiled with
static shapes.

  - `filter_logits`: temperature, top-k and top-p (nucleus) filtering of next-token logits.
  - `sample_gpt`: raster-order sampling, one token per step, with a key/value cache (or full
    recomputation, the reference the cache is tested against); known tokens can be forced
    (completions of a partial code map).
  - `sample_maskgit`: MaskGIT's iterative parallel decoding (Chang et al. 2022, Sec. 3.2):
    at step t of T every masked position is sampled, and the `floor(n * gamma((t+1)/T))`
    least confident new tokens are masked again (gamma the mask schedule, n the masked count at
    the start); confidence is the log-probability of the sampled token plus Gumbel noise scaled
    by `choice_temperature * (1 - (t+1)/T)` (annealed to 0).
  - classifier-free guidance in both: logits = uncond + scale * (cond - uncond), the two
    passes batched together.
  - `token_mask_from_pixels`: a pixel mask projected onto (dilated) token positions, for
    inpainting and outpainting with `sample_maskgit(..., tokens=known, token_mask=...)`.
Every sampler takes one rng and folds in the step number, so a given rng gives one result.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.nets.transformer import Transformer

NEG_INF = -1e30  # a finite -inf: softmax of an all-filtered row stays defined


# ----------------------------------------------------------------------------------------
# Logit processing.


def _ranks(logits: jax.Array) -> jax.Array:
    """Rank of each entry along the last axis in descending order (0 = largest; ties by index)."""
    order = jnp.argsort(-logits, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1)


def top_k_mask(logits: jax.Array, k) -> jax.Array:
    """True for the k largest logits of each row (exactly k, ties broken by index); k <= 0 keeps all."""
    k = jnp.asarray(k)
    return (_ranks(logits) < k) | (k <= 0)


def top_p_mask(logits: jax.Array, p) -> jax.Array:
    """True for the smallest set of most probable entries whose probability reaches p
    (nucleus sampling, Holtzman et al. 2020); the most probable entry is always kept."""
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_probs = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), order, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    # p >= 1 keeps everything: the float32 mass before a tiny-probability entry rounds to 1.0.
    keep_sorted = (mass_before < p) | (jnp.asarray(p) >= 1.0)
    keep_sorted = keep_sorted.at[..., 0].set(True)
    return jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)


def filter_logits(logits: jax.Array, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """logits / temperature, with entries outside top-k, then outside the top-p nucleus of what
    remains, set to -inf (the order of Hugging Face's and taming's samplers)."""
    logits = logits.astype(jnp.float32) / temperature
    logits = jnp.where(top_k_mask(logits, top_k), logits, NEG_INF)
    return jnp.where(top_p_mask(logits, top_p), logits, NEG_INF)


def guide(cond_logits: jax.Array, uncond_logits: jax.Array, scale) -> jax.Array:
    """Classifier-free guidance (Ho & Salimans 2022): scale 0 = unconditional, 1 = conditional."""
    return uncond_logits + scale * (cond_logits - uncond_logits)


def _with_null(labels: jax.Array, null_label: int) -> jax.Array:
    return jnp.concatenate([labels, jnp.full_like(labels, null_label)])


def _guided(logits: jax.Array, scale) -> jax.Array:
    """Logits of a [cond; uncond] batch -> guided logits of the first half."""
    cond, uncond = jnp.split(logits, 2)
    return guide(cond, uncond, scale)


def check_codes(codes, num_codes: int, what: str, used=None) -> None:
    """A ValueError naming `what` when concrete `codes` hold indices outside 0..num_codes-1 (where
    `used` is True, if given): an embedding lookup would read out of range (NaNs, or -1 wrapping
    to the last code) in silence."""
    if codes is None or any(isinstance(x, jax.core.Tracer) for x in (codes, used)):
        return
    codes = np.asarray(codes).reshape(-1)
    if used is not None:
        codes = np.where(np.asarray(used, bool).reshape(-1), codes, 0)
    bad = np.flatnonzero((codes < 0) | (codes >= num_codes))
    if bad.size:
        raise ValueError(f"{what} hold codes outside 0..{num_codes - 1} (the model's {num_codes} codes): "
                         f"{codes[bad[:5]].tolist()} at flat positions {bad[:5].tolist()}"
                         f"{' and more' if len(bad) > 5 else ''}; pass code maps of this model's tokenizer.")


def _check_labels(model: Transformer, labels: jax.Array) -> jax.Array:
    labels = jnp.asarray(labels, jnp.int32)
    if labels.ndim != 1:
        raise ValueError(f"Labels have shape {labels.shape}; pass one class label per sample, shape [batch].")
    return labels


# ----------------------------------------------------------------------------------------
# Autoregressive (GPT) sampling.


def sample_gpt(model: Transformer, params, rng: jax.Array, labels: jax.Array, **options) -> jax.Array:
    """`sample_gpt_jit` after checking the known tokens' range (on concrete arrays)."""
    check_codes(options.get("known_tokens"), model.vocab_size, "known_tokens", used=options.get("known_mask"))
    return sample_gpt_jit(model, params, rng, labels, **options)


@functools.partial(jax.jit, static_argnames=("model", "use_cache", "guidance"))
def sample_gpt_jit(model: Transformer, params, rng: jax.Array, labels: jax.Array, *, temperature=1.0,
               top_k=0, top_p=1.0, guidance: bool = False, guidance_scale=1.0,
               known_tokens: Optional[jax.Array] = None, known_mask: Optional[jax.Array] = None,
               use_cache: bool = True) -> jax.Array:
    """Samples code maps token by token in raster order -> int32 [B, seq_len].

    labels [B]: class labels (`model.null_label` for unconditional samples). With `guidance`,
    logits are guided towards `labels` by `guidance_scale`. `known_tokens` / `known_mask`
    ([B, seq_len]) force the tokens where the mask is True (a completion of a partial code map:
    the model reads them, they are never resampled). `use_cache=False` recomputes the whole
    sequence every step: the reference the key/value cache is tested against.
    """
    labels = _check_labels(model, labels)
    batch, length = labels.shape[0], model.seq_len
    if known_tokens is None:
        known_tokens = jnp.zeros((batch, length), jnp.int32)
        known_mask = jnp.zeros((batch, length), bool)
    model_labels = _with_null(labels, model.null_label) if guidance else labels
    pair = (lambda x: jnp.concatenate([x, x])) if guidance else (lambda x: x)

    def choose(position, logits, tokens):
        logits = _guided(logits, guidance_scale) if guidance else logits
        logits = filter_logits(logits, temperature, top_k, top_p)
        sampled = jax.random.categorical(jax.random.fold_in(rng, position), logits).astype(jnp.int32)
        chosen = jnp.where(known_mask[:, position], known_tokens[:, position], sampled)
        return jax.lax.dynamic_update_slice_in_dim(tokens, chosen[:, None], position, axis=1)

    tokens = jnp.zeros((batch, length), jnp.int32)
    if not use_cache:
        def full_step(position, tokens):
            logits = model.apply({"params": params}, pair(tokens), model_labels)
            return choose(position, jax.lax.dynamic_index_in_dim(logits, position, 1, keepdims=False), tokens)

        return jax.lax.fori_loop(0, length, full_step, tokens)

    def cached_logits(cache, position, tokens):
        previous = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(position - 1, 0), 1, keepdims=False)
        variables = {"params": params} if cache is None else {"params": params, "cache": cache}
        logits, updated = model.apply(variables, pair(previous), model_labels, position,
                                      method=Transformer.decode_step, mutable=["cache"])
        return logits, updated["cache"]

    logits, cache = cached_logits(None, 0, tokens)  # creates the cache
    tokens = choose(0, logits, tokens)

    def cached_step(position, carry):
        tokens, cache = carry
        logits, cache = cached_logits(cache, position, tokens)
        return choose(position, logits, tokens), cache

    tokens, _ = jax.lax.fori_loop(1, length, cached_step, (tokens, cache))
    return tokens


# ----------------------------------------------------------------------------------------
# MaskGIT decoding.

SCHEDULES = {
    "cosine": lambda r: jnp.cos(r * jnp.pi / 2),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r ** 2,
    "cubic": lambda r: 1.0 - r ** 3,
    "sqrt": lambda r: 1.0 - jnp.sqrt(r),
}


def mask_ratio(ratio, schedule: str = "cosine") -> jax.Array:
    """gamma(r): the fraction of tokens still masked after a fraction r of the decoding (MaskGIT
    Sec. 3.3; training draws r ~ U(0, 1) and masks that fraction). Clipped to [1e-6, 1]."""
    if schedule not in SCHEDULES:
        raise ValueError(f"The mask schedule is {schedule!r}; use one of {sorted(SCHEDULES)}.")
    return jnp.clip(SCHEDULES[schedule](jnp.asarray(ratio, jnp.float32)), 1e-6, 1.0)


def _target_masked(unknown_at_start, ratio, schedule: str) -> jax.Array:
    """floor(n * gamma(r)) as an int32, shared by the sampler and `masked_counts`; the 1e-4
    keeps an exact product (e.g. 4 * cos(pi / 3) = 2) from flooring one lower in float32."""
    product = jnp.asarray(unknown_at_start, jnp.float32) * mask_ratio(ratio, schedule)
    return jnp.floor(product + 1e-4).astype(jnp.int32)


def masked_counts(num_unknown: int, num_steps: int, schedule: str = "cosine") -> np.ndarray:
    """Tokens left masked after each decoding step for `num_unknown` masked at the start (the
    last step reveals all): the numbers `sample_maskgit` follows, as plain integers."""
    counts = []
    unknown = num_unknown
    for step in range(num_steps):
        if step == num_steps - 1 or unknown == 0:
            unknown = 0
        else:
            target = int(_target_masked(num_unknown, (step + 1) / num_steps, schedule))
            unknown = max(1, min(unknown - 1, target))
        counts.append(unknown)
    return np.asarray(counts)


def sample_maskgit(model: Transformer, params, rng: jax.Array, labels: jax.Array, **options):
    """`sample_maskgit_jit` after checking the range of the tokens it keeps (on concrete arrays)."""
    tokens, regenerate = options.get("tokens"), options.get("token_mask")
    if tokens is not None and not isinstance(regenerate, jax.core.Tracer):
        kept = None if regenerate is None else ~np.asarray(regenerate, bool)
        check_codes(tokens, model.vocab_size, "tokens", used=kept)
    return sample_maskgit_jit(model, params, rng, labels, **options)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "schedule", "guidance", "return_history"))
def sample_maskgit_jit(model: Transformer, params, rng: jax.Array, labels: jax.Array, *,
                   tokens: Optional[jax.Array] = None, token_mask: Optional[jax.Array] = None,
                   num_steps: int = 8, schedule: str = "cosine", temperature=1.0,
                   choice_temperature=4.5, guidance: bool = False, guidance_scale=1.0,
                   return_history: bool = False):
    """MaskGIT iterative decoding -> int32 code maps [B, seq_len].

    Without `tokens` every position starts masked (generation). With `tokens` [B, seq_len]
    and `token_mask` [B, seq_len] (True = regenerate), the unmasked tokens are kept exactly
    (inpainting / outpainting). Each step samples every masked position at `temperature`, keeps
    the most confident, and masks the rest again following `masked_counts`.
    With `return_history`, also returns the token maps after each step [T, B, seq_len]
    (masked positions hold `model.mask_token`).
    """
    labels = _check_labels(model, labels)
    batch, length, mask_token = labels.shape[0], model.seq_len, model.mask_token
    if tokens is None:
        tokens = jnp.full((batch, length), mask_token, jnp.int32)
    else:
        tokens = jnp.where(token_mask, mask_token, jnp.asarray(tokens, jnp.int32))
    unknown_at_start = jnp.sum(tokens == mask_token, axis=-1, keepdims=True)
    model_labels = _with_null(labels, model.null_label) if guidance else labels

    def step_fn(step, carry):
        tokens, history = carry
        step_rng = jax.random.fold_in(rng, step)
        sample_rng, choice_rng = jax.random.split(step_rng)
        inputs = jnp.concatenate([tokens, tokens]) if guidance else tokens
        logits = model.apply({"params": params}, inputs, model_labels)
        logits = _guided(logits, guidance_scale) if guidance else logits
        logits = logits.astype(jnp.float32) / temperature
        unknown = tokens == mask_token
        sampled = jax.random.categorical(sample_rng, logits).astype(jnp.int32)
        sampled = jnp.where(unknown, sampled, tokens)

        ratio = (step + 1) / num_steps
        num_unknown = jnp.sum(unknown, axis=-1, keepdims=True)
        target = _target_masked(unknown_at_start, ratio, schedule)
        still_masked = jnp.maximum(1, jnp.minimum(num_unknown - 1, target))
        still_masked = jnp.where((step == num_steps - 1) | (num_unknown == 0), 0, still_masked)

        log_probs = jax.nn.log_softmax(logits, axis=-1)
        chosen_log_prob = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]
        gumbel = jax.random.gumbel(choice_rng, chosen_log_prob.shape)
        confidence = chosen_log_prob + choice_temperature * (1.0 - ratio) * gumbel
        confidence = jnp.where(unknown, confidence, jnp.inf)  # known tokens are never re-masked
        # Exactly `still_masked` positions, the least confident, are masked again.
        remask = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1) < still_masked
        tokens = jnp.where(remask, mask_token, sampled)
        history = jax.lax.dynamic_update_index_in_dim(history, tokens, step, 0) if return_history else history
        return tokens, history

    history = jnp.zeros((num_steps if return_history else 0, batch, length), jnp.int32)
    tokens, history = jax.lax.fori_loop(0, num_steps, step_fn, (tokens, history))
    return (tokens, history) if return_history else tokens


# ----------------------------------------------------------------------------------------
# Inpainting masks.


def token_mask_from_pixels(pixel_mask, factor: int, dilation: int = 0) -> jax.Array:
    """Pixel mask [B, H, W] (True = regenerate) -> token mask [B, H/f, W/f]: a token is
    regenerated when any pixel of its f x f patch is, and `dilation` tokens around those too
    (a token's decoder footprint is wider than its patch, so edges blend better)."""
    pixel_mask = jnp.asarray(pixel_mask, bool)
    if pixel_mask.ndim != 3:
        raise ValueError(f"The pixel mask has shape {pixel_mask.shape}; pass [batch, height, width].")
    _, height, width = pixel_mask.shape
    if height % factor or width % factor:
        raise ValueError(f"The pixel mask is {height}x{width}, not a multiple of the tokenizer's "
                         f"downsampling factor {factor}.")
    patches = pixel_mask.reshape(-1, height // factor, factor, width // factor, factor)
    tokens = patches.any(axis=(2, 4))
    if dilation > 0:
        size = 2 * dilation + 1
        tokens = jax.lax.reduce_window(tokens, False, jax.lax.bitwise_or, (1, size, size), (1, 1, 1),
                                       "SAME")
    return tokens
