"""The U-Net of denoising diffusion models (Ho et al. 2020), with the improved-DDPM / ADM options
(Nichol & Dhariwal 2021; Dhariwal & Nichol 2021).

Layouts are NHWC. The structure is that of DDPM's and of diffusers' `UNet2DModel` (which holds the
released google/ddpm-* weights), so converted weights give the same function:
- a sinusoidal timestep embedding -> Dense -> swish -> Dense (`time_embed`), plus an optional
  class embedding added to it;
- `conv_in`, then per resolution level `num_res_blocks` residual blocks (each followed by
  self-attention where the feature map's side is in `attention_resolutions`) and, except at the
  last level, a downsampling; every block's output is kept for the skip connections;
- a middle of residual block, attention, residual block;
- per level in reverse, `num_res_blocks + 1` residual blocks on [h, skip] concatenations (with
  attention at the same resolutions) and, except at the last, an upsampling;
- GroupNorm -> swish -> `conv_out`.

Options: scale-shift norm (the timestep embedding sets GroupNorm's scale and shift instead of being
added), multi-head attention (`num_heads` or `head_channels`), residual blocks that resample
(`resblock_updown`), class conditioning (`num_classes`, with one extra "no class" row for
classifier-free guidance) and extra input channels (`cond`, e.g. the upsampled low-resolution image
of super-resolution, concatenated with the input).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.nets.blocks import GroupNorm
from vqjax.nets.conv import Conv


def timestep_embedding(t: jax.Array, dim: int, *, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1.0, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embeddings [B, dim] of (possibly fractional) timesteps t [B].

    Frequencies are max_period^(-i / (dim/2 - freq_shift)), i < dim/2: DDPM's (sin, cos) with
    freq_shift 1; improved DDPM / ADM's (cos, sin) with freq_shift 0 and flip_sin_to_cos.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    angles = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    parts = (jnp.cos(angles), jnp.sin(angles)) if flip_sin_to_cos else (jnp.sin(angles), jnp.cos(angles))
    embedding = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


def _nearest_upsample(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _average_pool(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
    """norm -> swish -> [resample] -> conv3x3 -> timestep conditioning -> norm -> swish -> dropout
    -> conv3x3, plus the (resampled, 1x1-projected when the width changes) input.

    The timestep embedding is added after `conv1` (DDPM), or with `scale_shift_norm` it sets the
    second norm's output to norm(h) * (1 + scale) + shift (ADM).
    """

    out_channels: int
    dropout: float = 0.0
    scale_shift_norm: bool = False
    resample: Optional[str] = None  # None, "up" (nearest) or "down" (2x2 average)
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        norm = lambda name, swish: GroupNorm(self.norm_groups, self.norm_eps, swish, self.dtype, name=name)
        h = norm("norm1", True)(x)
        if self.resample is not None:
            resample = _nearest_upsample if self.resample == "up" else _average_pool
            h, x = resample(h), resample(x)
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv1")(h)
        emb_width = 2 * self.out_channels if self.scale_shift_norm else self.out_channels
        emb = nn.Dense(emb_width, dtype=self.dtype, name="emb_proj")(nn.swish(emb))[:, None, None, :]
        if self.scale_shift_norm:
            scale, shift = jnp.split(emb, 2, axis=-1)
            h = norm("norm2", False)(h) * (1 + scale) + shift
            h = nn.swish(h)
        else:
            h = norm("norm2", True)(h + emb)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, (1, 1), dtype=self.dtype, name="shortcut")(x)
        return x + h


class Attention(nn.Module):
    """Multi-head self-attention over all positions of a feature map, with a residual connection.
    `head_channels` (if > 0) sets the heads' width, otherwise `num_heads` sets their number."""

    num_heads: int = 1
    head_channels: int = -1
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        heads = channels // self.head_channels if self.head_channels > 0 else self.num_heads
        if heads < 1 or channels % heads:
            raise ValueError(f"Attention {self.name!r}: {channels} channels do not split into {heads} heads; "
                             "change num_heads / head_channels.")
        h = GroupNorm(self.norm_groups, self.norm_eps, False, self.dtype, name="norm")(x)
        h = h.reshape(batch, height * width, channels)
        split = lambda t: t.reshape(batch, height * width, heads, channels // heads)
        q, k, v = (split(nn.Dense(channels, dtype=self.dtype, name=name)(h)) for name in ("q", "k", "v"))
        logits = jnp.einsum("bihd,bjhd->bhij", q, k) * ((channels // heads) ** -0.5)
        # Softmax in float32: bf16 logits over a thousand positions lose the small weights.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("bhij,bjhd->bihd", weights, v).reshape(batch, height * width, channels)
        h = nn.Dense(channels, dtype=self.dtype, name="proj_out")(h)
        return x + h.reshape(batch, height, width, channels)


class Downsample(nn.Module):
    """A 3x3 stride-2 convolution; `padding` 0 pads only the bottom and right by one pixel
    (DDPM, TensorFlow's SAME), 1 pads every side (ADM)."""

    padding: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((0, 1), (0, 1)) if self.padding == 0 else ((self.padding, self.padding),) * 2
        return Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=pad, dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 convolution."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return Conv(x.shape[-1], (3, 3), dtype=self.dtype, name="conv")(_nearest_upsample(x))


class UNet(nn.Module):
    """eps (or x_0, v, and with `out_channels` 2x the input's, the variance's interpolation
    weights) from x_t [B, H, W, C] and timesteps t [B]. H and W must be divisible by
    2^(len(channel_mult) - 1)."""

    out_channels: int = 3
    channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    head_channels: int = -1
    scale_shift_norm: bool = False
    resblock_updown: bool = False
    num_classes: int = 0  # > 0: labels in [0, num_classes]; num_classes means "no class"
    downsample_padding: int = 0
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    norm_groups: int = 32
    norm_eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def check_input(self, height: int, width: int):
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"The U-Net halves its input {len(self.channel_mult) - 1} times, so image sides must be "
                f"multiples of {self.factor}; got {height}x{width}. Resize or crop the images, or use a "
                "channel_mult with fewer levels."
            )

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: Optional[jax.Array] = None,
                 cond: Optional[jax.Array] = None, *, train: bool = False) -> jax.Array:
        self.check_input(x.shape[1], x.shape[2])
        if cond is not None:
            x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
        emb_width = 4 * self.channels
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        emb = timestep_embedding(t, self.channels, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift)
        emb = nn.Dense(emb_width, dtype=self.dtype, name="time_embed_1")(emb)
        emb = nn.Dense(emb_width, dtype=self.dtype, name="time_embed_2")(nn.swish(emb))
        if self.num_classes:
            if labels is None:
                labels = jnp.full((x.shape[0],), self.num_classes, jnp.int32)  # no class
            emb = emb + nn.Embed(self.num_classes + 1, emb_width, dtype=self.dtype, name="class_embed")(labels)

        norm_args = dict(norm_groups=self.norm_groups, norm_eps=self.norm_eps, dtype=self.dtype)

        def res_block(width, name, resample=None):
            return ResBlock(width, self.dropout, self.scale_shift_norm, resample, name=name, **norm_args)

        def attention(name):
            return Attention(self.num_heads, self.head_channels, name=name, **norm_args)

        h = Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_in")(x)
        skips = [h]
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for block in range(self.num_res_blocks):
                h = res_block(self.channels * mult, f"down_{level}_res_{block}")(h, emb, train)
                if h.shape[1] in self.attention_resolutions:
                    h = attention(f"down_{level}_attn_{block}")(h)
                skips.append(h)
            if level != last:
                if self.resblock_updown:
                    h = res_block(h.shape[-1], f"down_{level}_downsample", "down")(h, emb, train)
                else:
                    h = Downsample(self.downsample_padding, self.dtype, name=f"down_{level}_downsample")(h)
                skips.append(h)

        h = res_block(h.shape[-1], "mid_res_1")(h, emb, train)
        h = attention("mid_attn")(h)
        h = res_block(h.shape[-1], "mid_res_2")(h, emb, train)

        for level in reversed(range(len(self.channel_mult))):
            for block in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res_block(self.channels * self.channel_mult[level], f"up_{level}_res_{block}")(h, emb, train)
                if h.shape[1] in self.attention_resolutions:
                    h = attention(f"up_{level}_attn_{block}")(h)
            if level != 0:
                if self.resblock_updown:
                    h = res_block(h.shape[-1], f"up_{level}_upsample", "up")(h, emb, train)
                else:
                    h = Upsample(self.dtype, name=f"up_{level}_upsample")(h)

        h = GroupNorm(self.norm_groups, self.norm_eps, True, self.dtype, name="norm_out")(h)
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv_out")(h)
        return h.astype(jnp.float32)
