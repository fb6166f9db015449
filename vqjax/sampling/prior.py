"""A prior's samples with a config's `sampling` settings: code maps, the classes they are
drawn for, and the in/outpainting rows of `inpainting.png`."""

from __future__ import annotations

import jax
import numpy as np

from vqjax.nets.transformer import Transformer
from vqjax.sampling import decode


def sample_tokens(model: Transformer, params, rng: jax.Array, labels: jax.Array, sampling_cfg,
                  **maskgit_start) -> jax.Array:
    """Code maps [B, L] from the prior with `config.sampling`'s settings; keyword `tokens` and
    `token_mask` (MaskGIT) inpaint."""
    guidance = model.num_classes > 0 and float(sampling_cfg.guidance_scale) != 1.0
    common = dict(temperature=float(sampling_cfg.temperature), guidance=guidance,
                  guidance_scale=float(sampling_cfg.guidance_scale))
    if model.causal:
        return decode.sample_gpt(model, params, rng, labels, top_k=int(sampling_cfg.top_k),
                                   top_p=float(sampling_cfg.top_p), **common)
    return decode.sample_maskgit(model, params, rng, labels, num_steps=int(sampling_cfg.num_steps),
                                   schedule=sampling_cfg.schedule,
                                   choice_temperature=float(sampling_cfg.choice_temperature),
                                   **common, **maskgit_start)


def sample_labels(model: Transformer, count: int, start: int = 0) -> np.ndarray:
    """Classes start, start + 1, ... in turn (mod the class count) for a class-conditional
    prior, else the null label."""
    if model.num_classes == 0:
        return np.full((count,), model.null_label, np.int32)
    return ((start + np.arange(count)) % model.num_classes).astype(np.int32)


def centre_square(batch: int, size: int, keep_inside: bool) -> np.ndarray:
    """Pixel masks [B, S, S], True = regenerate: the centre half-size square (inpainting), or
    everything but it (outpainting)."""
    mask = np.zeros((batch, size, size), bool)
    lo, hi = size // 4, size - size // 4
    mask[:, lo:hi, lo:hi] = True
    return ~mask if keep_inside else mask


def inpainting_rows(model, params, tokenizer, images: np.ndarray, labels: np.ndarray, rng,
                    sampling_cfg) -> list[np.ndarray]:
    """Rows of `inpainting.png`: originals; for a centre hole and then a kept centre, the input
    with the regenerated region greyed, and the completion."""
    _, codes = tokenizer.encode(images)
    code_shape = codes.shape[1:]
    codes = codes.reshape(len(images), -1)
    rows = [images]
    for keep_inside in (False, True):
        pixel_mask = centre_square(len(images), images.shape[1], keep_inside)
        position_mask = decode.token_mask_from_pixels(pixel_mask, tokenizer.downsampling_factor,
                                                      int(sampling_cfg.inpaint_dilation))
        # Every code of a regenerated position (all the stages of a residual quantizer's code).
        tail = code_shape[position_mask.ndim - 1:]
        token_mask = np.broadcast_to(position_mask.reshape(position_mask.shape + (1,) * len(tail)),
                                     (len(images), *code_shape)).reshape(len(images), -1)
        completed = sample_tokens(model, params, rng, labels, sampling_cfg, tokens=codes, token_mask=token_mask)
        decoded = np.asarray(tokenizer.decode_indices(completed.reshape(-1, *code_shape)))
        rows += [np.where(pixel_mask[..., None], 0.0, images), decoded]
    return rows
