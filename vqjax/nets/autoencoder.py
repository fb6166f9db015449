"""The VQGAN autoencoder of taming-transformers (Esser et al. 2021): Encoder, Decoder and
the 1x1 `quant_conv` / `post_quant_conv` around the quantizer.

Field names follow taming's `ddconfig` (`ch`, `ch_mult`, `num_res_blocks`,
`attn_resolutions`, `z_channels`, `resolution`, `dropout`) plus `embed_dim`, and the
parameter count equals taming's for the same settings. Attention levels are chosen from the
configured `resolution`, as taming does, not from the size of the input. The codebook is
not owned by the model: it is an argument, so an EMA codebook can live in explicit state.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.nets.blocks import Downsample, MidBlock, Upsample, block_classes, normalize
from vqjax.nets.conv import Conv


class Encoder(nn.Module):
    """Images `[B, H, W, C]` -> `[B, H / 2^(L-1), W / 2^(L-1), z_channels]`, L = len(ch_mult)."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    z_channels: int = 256
    resolution: int = 256
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        resnet_block, attn_block = block_classes(self.remat)
        h = Conv(self.ch, (3, 3), dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        resolution = self.resolution
        for level, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                h = resnet_block(self.ch * mult, self.dropout, self.dtype,
                                 name=f"down_{level}_block_{i}")(h, train)
                if resolution in self.attn_resolutions:
                    h = attn_block(self.dtype, name=f"down_{level}_attn_{i}")(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(self.dtype, name=f"down_{level}_downsample")(h)
                resolution //= 2
        h = MidBlock(self.dropout, self.dtype, self.remat, name="mid")(h, train=train)
        h = normalize("norm_out", self.dtype, swish=True)(h)
        return Conv(self.z_channels, (3, 3), dtype=self.dtype, name="conv_out")(h)


class Decoder(nn.Module):
    """`[B, h, w, z_channels]` -> images `[B, h * 2^(L-1), w * 2^(L-1), out_ch]`."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    z_channels: int = 256
    resolution: int = 256
    out_ch: int = 3
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        resnet_block, attn_block = block_classes(self.remat)
        width = self.ch * self.ch_mult[-1]
        resolution = self.resolution // 2 ** (len(self.ch_mult) - 1)
        h = Conv(width, (3, 3), dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
        h = MidBlock(self.dropout, self.dtype, self.remat, name="mid")(h, train=train)
        for level in reversed(range(len(self.ch_mult))):
            for i in range(self.num_res_blocks + 1):
                h = resnet_block(self.ch * self.ch_mult[level], self.dropout, self.dtype,
                                 name=f"up_{level}_block_{i}")(h, train)
                if resolution in self.attn_resolutions:
                    h = attn_block(self.dtype, name=f"up_{level}_attn_{i}")(h)
            if level != 0:
                h = Upsample(self.dtype, name=f"up_{level}_upsample")(h)
                resolution *= 2
        h = normalize("norm_out", self.dtype, swish=True)(h)
        # The last layer is float32: the adaptive GAN weight differentiates through it.
        h = Conv(self.out_ch, (3, 3), dtype=jnp.float32, name="conv_out")(h)
        return h.astype(jnp.float32)


class VQAutoencoder(nn.Module):
    """encode: images -> pre-quantization vectors `[..., embed_dim]` (Encoder + quant_conv);
    decode: quantized vectors -> images (post_quant_conv + Decoder)."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    # Rematerialise every res/attention block in the backward pass (memory for compute).
    remat: bool = False

    def setup(self):
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % 32 for w in widths):
            raise ValueError(f"The autoencoder's widths ch * ch_mult = {widths} must be multiples "
                             "of 32 (GroupNorm with 32 groups); change ch or ch_mult.")
        sizes = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                     attn_resolutions=tuple(self.attn_resolutions), z_channels=self.z_channels,
                     resolution=self.resolution, dropout=self.dropout, dtype=self.dtype,
                     remat=self.remat)
        self.encoder = Encoder(**sizes)
        self.decoder = Decoder(out_ch=self.out_ch, **sizes)
        # Codes are compared in float32 whatever the compute dtype.
        self.quant_conv = Conv(self.embed_dim, (1, 1), dtype=jnp.float32)
        self.post_quant_conv = Conv(self.z_channels, (1, 1), dtype=self.dtype)

    def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        return self.quant_conv(self.encoder(images, train=train))

    def decode(self, codes: jax.Array, *, train: bool = False) -> jax.Array:
        return self.decoder(self.post_quant_conv(codes), train=train)

    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Decodes the *unquantized* encoding: builds every parameter (for `init`)."""
        return self.decode(self.encode(images, train=train), train=train)
