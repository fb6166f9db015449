"""Building blocks of the taming-transformers autoencoder (Esser et al. 2021).

Layouts are NHWC. Each block mirrors `taming.modules.diffusionmodules.model` so that a
converted checkpoint gives the same function: GroupNorm(32, eps 1e-6) with affine
parameters, swish, 3x3 convolutions, single-head spatial self-attention, downsampling by a
3x3 stride-2 convolution after padding one pixel on the bottom and right only, and nearest
upsampling followed by a 3x3 convolution.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.nets.conv import Conv


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, *, num_groups: int,
               epsilon: float, swish: bool = False) -> jax.Array:
    """GroupNorm over [batch, ..., channels] in float32, optionally followed by swish.

    The statistics are reduced in two stages, per channel over the spatial axes and then per
    group, and the normalisation is one multiply-add per element with per-channel factors.
    """
    channels = x.shape[-1]
    spatial = tuple(range(1, x.ndim - 1))
    x = x.astype(jnp.float32)

    def group_mean(per_channel):  # [B, C] -> [B, G]
        return jnp.mean(per_channel.reshape(x.shape[0], num_groups, -1), axis=-1)

    mean = group_mean(jnp.mean(x, axis=spatial))
    mean_of_squares = group_mean(jnp.mean(jnp.square(x), axis=spatial))
    variance = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)  # round-off can go < 0

    def per_channel(per_group):  # [B, G] -> [B, 1, ..., 1, C]
        values = jnp.repeat(per_group, channels // num_groups, axis=-1)
        return values.reshape(x.shape[0], *(1,) * len(spatial), channels)

    multiplier = per_channel(jax.lax.rsqrt(variance + epsilon)) * scale
    y = x * multiplier + (bias - per_channel(mean) * multiplier)
    return nn.swish(y) if swish else y


class GroupNorm(nn.Module):
    """GroupNorm (torch.nn.GroupNorm's function: biased variance, affine per channel) with flax
    `nn.GroupNorm`'s parameters (`scale`, `bias`), and `swish=True` for taming's
    `nonlinearity(norm(x))`. Statistics are float32 whatever `dtype`.

    Rematerialised: the backward pass recomputes the normalised values (and swish) from the
    input, which is kept anyway, instead of storing them and reading them back: passes over
    whole feature maps, bound by memory bandwidth, are most of a norm's cost. With the
    two-stage statistics of `group_norm`, forward + backward run faster than flax's GroupNorm
    and swish on XLA:CPU at the VQGAN feature-map sizes (`bench/group_norm.py` measures it),
    and fewer activations are kept for the backward pass on any device.
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    swish: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(f"GroupNorm {self.name!r} has {channels} channels, not a multiple of "
                             f"its {self.num_groups} groups; change the width or num_groups.")
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        normalize_fn = jax.checkpoint(functools.partial(
            group_norm, num_groups=self.num_groups, epsilon=self.epsilon, swish=self.swish))
        return normalize_fn(x, scale, bias).astype(self.dtype)


def normalize(name: str | None = None, dtype: jnp.dtype = jnp.float32, swish: bool = False) -> GroupNorm:
    """taming's `Normalize` (GroupNorm with 32 groups and epsilon 1e-6), and with `swish=True`
    its `nonlinearity(Normalize(x))`."""
    return GroupNorm(num_groups=32, epsilon=1e-6, swish=swish, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3 -> norm -> swish -> dropout -> conv3x3, plus a shortcut
    (a 1x1 convolution, taming's `nin_shortcut`, when the width changes)."""

    out_channels: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    # `train` is positional so that `nn.remat` can mark it static (see `block_classes`).
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = normalize("norm1", self.dtype, swish=True)(x)
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv1")(h)
        h = normalize("norm2", self.dtype, swish=True)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, (1, 1), dtype=self.dtype, name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        h = normalize("norm", self.dtype)(x)
        q = Conv(channels, (1, 1), dtype=self.dtype, name="q")(h)
        k = Conv(channels, (1, 1), dtype=self.dtype, name="k")(h)
        v = Conv(channels, (1, 1), dtype=self.dtype, name="v")(h)
        q, k, v = (t.reshape(batch, height * width, channels) for t in (q, k, v))
        logits = jnp.einsum("bic,bjc->bij", q, k) * (channels ** -0.5)
        # Softmax in float32: bf16 logits over thousands of positions lose the small weights.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("bij,bjc->bic", weights, v).reshape(batch, height, width, channels)
        return x + Conv(channels, (1, 1), dtype=self.dtype, name="proj_out")(h)


class Downsample(nn.Module):
    """Halves height and width: pad (0, 1) on both spatial axes, 3x3 convolution with stride 2."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID", dtype=self.dtype,
                       name="conv")(x)


class Upsample(nn.Module):
    """Doubles height and width: nearest-neighbour repeat, then a 3x3 convolution."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return Conv(x.shape[-1], (3, 3), dtype=self.dtype, name="conv")(x)


def block_classes(remat: bool) -> tuple[type[nn.Module], type[nn.Module]]:
    """`(ResnetBlock, AttnBlock)`, or with `remat` their rematerialised versions: the backward
    pass recomputes each block's activations instead of keeping them, trading about a third
    more compute for memory that no longer grows with the number of blocks (on GPUs and TPUs;
    XLA:CPU's scheduler does not turn it into a saving). Parameter names and values are the
    same either way."""
    if not remat:
        return ResnetBlock, AttnBlock
    return nn.remat(ResnetBlock, static_argnums=(2,)), nn.remat(AttnBlock)


class MidBlock(nn.Module):
    """The bottleneck shared by encoder and decoder: ResnetBlock, AttnBlock, ResnetBlock at
    constant width (taming's `mid.block_1`, `mid.attn_1`, `mid.block_2`)."""

    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        resnet_block, attn_block = block_classes(self.remat)
        width = x.shape[-1]
        x = resnet_block(width, self.dropout, self.dtype, name="block_1")(x, train)
        x = attn_block(self.dtype, name="attn_1")(x)
        return resnet_block(width, self.dropout, self.dtype, name="block_2")(x, train)
