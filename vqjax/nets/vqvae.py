"""The VQ-VAE encoder and decoder of van den Oord et al. 2017 ("Neural Discrete
Representation Learning", section 4.2 and appendix).

Encoder: `num_downsamples` strided 4x4 convolutions (stride 2, ReLU), a 3x3 convolution, a
stack of residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) and a 1x1 projection to the code
dimension. The decoder mirrors it with 4x4 transposed convolutions. With two downsamplings a
32x32 image becomes an 8x8 grid of codes, the paper's CIFAR-10 setting.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.nets.conv import Conv


class ResidualStack(nn.Module):
    """`num_blocks` residual blocks `x + conv1x1(relu(conv3x3(relu(x))))`, then a ReLU."""

    channels: int
    residual_channels: int
    num_blocks: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_blocks):
            h = nn.relu(x)
            h = Conv(self.residual_channels, (3, 3), dtype=self.dtype, name=f"res{i}_conv3x3")(h)
            h = nn.relu(h)
            h = Conv(self.channels, (1, 1), dtype=self.dtype, name=f"res{i}_conv1x1")(h)
            x = x + h
        return nn.relu(x)


class Encoder(nn.Module):
    """Images `[B, H, W, C]` to continuous codes `[B, H / 2^n, W / 2^n, embed_dim]`."""

    hidden_channels: int = 256
    residual_channels: int = 256
    num_residual_blocks: int = 2
    num_downsamples: int = 2
    embed_dim: int = 64
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        for i in range(self.num_downsamples):
            x = Conv(self.hidden_channels, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        name=f"down{i}")(x)
            x = nn.relu(x)
        x = Conv(self.hidden_channels, (3, 3), dtype=self.dtype, name="conv_in")(x)
        x = ResidualStack(self.hidden_channels, self.residual_channels, self.num_residual_blocks,
                          dtype=self.dtype, name="residual")(x)
        # Codes are compared in float32 whatever the compute dtype.
        return Conv(self.embed_dim, (1, 1), dtype=jnp.float32, name="to_codes")(x)


class Decoder(nn.Module):
    """Code vectors `[B, h, w, embed_dim]` back to images `[B, h * 2^n, w * 2^n, C]`."""

    hidden_channels: int = 256
    residual_channels: int = 256
    num_residual_blocks: int = 2
    num_downsamples: int = 2
    out_channels: int = 3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = Conv(self.hidden_channels, (3, 3), dtype=self.dtype, name="conv_in")(z.astype(self.dtype))
        x = ResidualStack(self.hidden_channels, self.residual_channels, self.num_residual_blocks,
                          dtype=self.dtype, name="residual")(x)
        for i in range(self.num_downsamples):
            last = i == self.num_downsamples - 1
            width = self.out_channels if last else self.hidden_channels
            x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME",
                                 dtype=jnp.float32 if last else self.dtype, name=f"up{i}")(x)
            if not last:
                x = nn.relu(x)
        return x.astype(jnp.float32)


class VQVAE(nn.Module):
    """Encoder and decoder of a VQ-VAE; the codebook is passed in, not owned.

    The codebook is an argument so that the train step can keep it either as a parameter
    (learned by loss) or as explicit EMA state (`quantizers.CodebookState`).
    """

    hidden_channels: int = 256
    residual_channels: int = 256
    num_residual_blocks: int = 2
    num_downsamples: int = 2
    embed_dim: int = 64
    out_channels: int = 3
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        sizes = dict(hidden_channels=self.hidden_channels, residual_channels=self.residual_channels,
                     num_residual_blocks=self.num_residual_blocks,
                     num_downsamples=self.num_downsamples, dtype=self.dtype)
        self.encoder = Encoder(embed_dim=self.embed_dim, **sizes)
        self.decoder = Decoder(out_channels=self.out_channels, **sizes)

    def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout or normalization statistics in this network
        return self.encoder(images)

    def decode(self, codes: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        return self.decoder(codes)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Decodes the *unquantized* encoding: builds every parameter (for `init`)."""
        return self.decode(self.encode(images))
