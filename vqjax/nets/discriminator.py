"""PatchGAN discriminator: taming's `NLayerDiscriminator` (after pix2pix).

conv4x4/2 -> LeakyReLU(0.2), then `n_layers - 1` blocks conv4x4/2 -> norm -> LeakyReLU with
widths ndf * min(2^n, 8), one more conv4x4/1 block, and a conv4x4/1 to one logit per patch.
Convolutions are initialised from normal(0, 0.02) and batch-norm scales from normal(1, 0.02),
as taming's `weights_init` does.

`norm='batch'` is taming's choice; its running statistics live in the `batch_stats`
collection, which the train step keeps in `TrainState` (explicit state). `norm='group'`
(GroupNorm, 32 groups) and `norm='none'` need no running statistics, so the discriminator
is a pure function of its parameters.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.nets import blocks
from vqjax.nets.conv import Conv

NORMS = ("batch", "group", "none")


def _conv_init(rng, shape, dtype=jnp.float32):
    return 0.02 * jax.random.normal(rng, shape, dtype)


def _scale_init(rng, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(rng, shape, dtype)


class NLayerDiscriminator(nn.Module):
    """Images `[B, H, W, C]` -> patch logits `[B, h, w, 1]` (30x30 for 256x256 and n_layers=3)."""

    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"
    dtype: jnp.dtype = jnp.float32

    def _conv(self, features, stride, use_bias, name):
        return Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                       use_bias=use_bias, kernel_init=_conv_init, dtype=self.dtype, name=name)

    def _norm(self, h, train, name):
        if self.norm == "batch":
            # PyTorch's momentum 0.1 is flax's 0.9; epsilon as torch's default.
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                scale_init=_scale_init, dtype=self.dtype, name=name)(h)
        if self.norm == "group":
            # 32 groups where the width allows; fewer for the narrow test-sized models.
            return blocks.GroupNorm(num_groups=math.gcd(32, h.shape[-1]), dtype=self.dtype, name=name)(h)
        return h

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        if self.norm not in NORMS:
            raise ValueError(f"Discriminator norm is {self.norm!r}; use one of {NORMS}.")
        # A conv followed by a normalization with its own shift needs no bias (taming drops it
        # for batch norm only; we follow it exactly for 'batch' and keep it otherwise).
        use_bias = self.norm != "batch"
        h = nn.leaky_relu(self._conv(self.ndf, 2, True, "conv_0")(images.astype(self.dtype)), 0.2)
        for n in range(1, self.n_layers + 1):
            stride = 2 if n < self.n_layers else 1
            h = self._conv(self.ndf * min(2**n, 8), stride, use_bias, f"conv_{n}")(h)
            h = nn.leaky_relu(self._norm(h, train, f"norm_{n}"), 0.2)
        logits = self._conv(1, 1, True, "conv_out")(h)
        return logits.astype(jnp.float32)
