"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), version 0.1 with the VGG16 backbone: the perceptual loss of taming-transformers.

    d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

with f_l the VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the inputs after
LPIPS' fixed scaling layer, n(.) the unit-normalisation over channels and w_l >= 0 the learned
1x1 "linear" heads. Images are NHWC in [-1, 1]; the output is one distance per example.

The weights are not trained here: they come from a file made from PyTorch's torchvision VGG16
and the `lpips` package's heads (`python -m vqjax.convert lpips ...`): a msgpack of this module's
parameters, `{"vgg": {"conv1_1": {"kernel", "bias"}, ...}, "lin_0": {"kernel"}, ...}`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqjax.core import paths
from vqjax.nets import weights_file
from vqjax.nets.conv import Conv

# torchvision's vgg16().features up to relu5_3: conv widths per stage; each stage's last ReLU is
# a tap, and stages after the first start with a 2x2 max-pool.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS' ScalingLayer: inputs in [-1, 1] are shifted and scaled to ImageNet statistics.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor


def conv_names() -> list[str]:
    """Names of the 13 VGG16 convolutions, in torchvision's order."""
    return [f"conv{s + 1}_{i + 1}" for s, widths in enumerate(VGG16_STAGES) for i in range(len(widths))]


class VGG16Features(nn.Module):
    """The five LPIPS taps of VGG16, from images already passed through the scaling layer."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for s, widths in enumerate(VGG16_STAGES):
            if s > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for i, width in enumerate(widths):
                x = nn.relu(Conv(width, (3, 3), dtype=self.dtype, name=f"conv{s + 1}_{i + 1}")(x))
            taps.append(x)
        return taps


def _unit_normalize(x: jax.Array) -> jax.Array:
    return x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)) + EPS)


class LPIPS(nn.Module):
    """`LPIPS()(x, y) -> [B]` distances; parameters `{"vgg": ..., "lin": ...}`."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        vgg = VGG16Features(self.dtype, name="vgg")

        def features(images):
            scaled = (images.astype(jnp.float32) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
            return vgg(scaled.astype(self.dtype))

        # One VGG pass per input, not one over both concatenated: as a loss, LPIPS(images,
        # reconstruction) is differentiated with respect to the reconstruction only, and a
        # separate pass of the images is left out of the backward pass (a concatenated batch
        # would be pulled back whole, half of it for nothing).
        distance = 0.0
        for level, (fx, fy) in enumerate(zip(features(x), features(y))):
            fx, fy = fx.astype(jnp.float32), fy.astype(jnp.float32)
            diff = jnp.square(_unit_normalize(fx) - _unit_normalize(fy))
            head = Conv(1, (1, 1), use_bias=False, dtype=jnp.float32, name=f"lin_{level}")
            distance = distance + jnp.mean(head(diff), axis=(1, 2, 3))
        return distance


def load_params(path: str) -> dict:
    """LPIPS parameters from a weights file; a missing or wrong file is one sentence."""
    how = ("make one from PyTorch weights with `python -m vqjax.convert lpips --vgg vgg16.pth "
           "--lin vgg.pth --out FILE` (torchvision's vgg16-397923af.pth and the lpips package's "
           "weights/v0.1/vgg.pth), or set config.loss.perceptual_weight=0")
    if not path:
        raise ValueError(f"The perceptual loss needs LPIPS weights but config.loss.lpips_path is empty; {how}.")
    if not paths.is_file(path):
        raise ValueError(f"config.loss.lpips_path is {path!r}, which is not a file; {how}.")
    expected = jax.eval_shape(LPIPS().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                              jnp.zeros((1, 32, 32, 3)))["params"]
    return weights_file.read(path, expected, "LPIPS", how)
