"""The InceptionV3 of FID (Heusel et al. 2017) and the Inception Score, as pytorch-fid runs it.

This is the network of TensorFlow's `inception-2015-12-05` graph, which differs from torchvision's
InceptionV3 in four places: 1008 classes, average pools that leave the zero padding out of the
mean (Mixed_5b-d, Mixed_6b-e, Mixed_7b), and a max pool in the pool branch of Mixed_7c.
`InceptionV3()(images)` takes NHWC images in [-1, 1] of any size, resizes them bilinearly to
299x299 (as `F.interpolate(mode='bilinear', align_corners=False)`, no antialiasing) and returns
the 2048 pooled features (the statistics of FID) and the 1008 logits of `fc` (the Inception Score).

The weights are not trained here: they come from pytorch-fid's port of the TensorFlow graph,
`pt_inception-2015-12-05-6726825d.pth` (a release asset of github.com/mseitzer/pytorch-fid),
converted with `python -m vqjax.convert inception --pth pt_inception-2015-12-05-6726825d.pth
--out inception.msgpack` into a msgpack of `{"params": ..., "batch_stats": ...}` whose module
names are PyTorch's (`Conv2d_1a_3x3/conv`, `Mixed_5b/branch1x1/bn`, ..., `fc`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from vqjax.core import paths
from vqjax.nets import weights_file
from vqjax.nets.conv import Conv

IMAGE_SIZE = 299
NUM_CLASSES = 1008  # 1000 ImageNet classes plus 8 unused ones of the TensorFlow graph
BN_EPS = 1e-3  # torchvision's BasicConv2d, the value of the TensorFlow graph


@struct.dataclass
class InceptionOutput:
    """Per-image outputs; float32 whatever the compute dtype."""

    pool: jax.Array  # [B, 2048] final average pool: pytorch-fid's dims=2048 features
    logits: jax.Array  # [B, 1008] of `fc`, for the Inception Score


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm with inference statistics, ReLU."""

    features: int
    kernel_size: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (ph, pw), s = self.padding, self.strides
        x = Conv(self.features, self.kernel_size, strides=(s, s), padding=((ph, ph), (pw, pw)),
                    use_bias=False, dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # TensorFlow's average pool, which the FID graph was trained with, leaves the padding out of
    # the mean; torchvision's counts it (pytorch-fid patches this in its FIDInception* blocks).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
    padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
    """Mixed_5b-d: 1x1, 5x5, double 3x3 and pooled branches at 35x35."""

    pool_features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, dtype=self.dtype)
        b1 = conv(64, name="branch1x1")(x)
        b5 = conv(48, name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: 35x35 -> 17x17."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, dtype=self.dtype)
        b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = conv(64, name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 branches at 17x17."""

    channels_7x7: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, dtype=self.dtype)
        c7 = self.channels_7x7
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        b1 = conv(192, name="branch1x1")(x)
        b7 = conv(c7, name="branch7x7_1")(x)
        b7 = conv(c7, **row, name="branch7x7_2")(b7)
        b7 = conv(192, **col, name="branch7x7_3")(b7)
        bd = conv(c7, name="branch7x7dbl_1")(x)
        bd = conv(c7, **col, name="branch7x7dbl_2")(bd)
        bd = conv(c7, **row, name="branch7x7dbl_3")(bd)
        bd = conv(c7, **col, name="branch7x7dbl_4")(bd)
        bd = conv(192, **row, name="branch7x7dbl_5")(bd)
        bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: 17x17 -> 8x8."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, dtype=self.dtype)
        b3 = conv(192, name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = conv(192, name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (average pool branch) and Mixed_7c (max pool branch) at 8x8."""

    max_pool: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(BasicConv2d, dtype=self.dtype)
        row, col = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
        b1 = conv(320, name="branch1x1")(x)
        b3 = conv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3),
                              conv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, **row, name="branch3x3dbl_3a")(bd),
                              conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        # The FID graph's last block max-pools here where the paper (and torchvision) average.
        pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
        bp = conv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_to_inception(images: jax.Array) -> jax.Array:
    """NHWC images -> 299x299, bilinear with half-pixel centres and no antialiasing.

    This is torch's `F.interpolate(mode='bilinear', align_corners=False)` that pytorch-fid uses,
    also when shrinking: without antialiasing each output pixel mixes only its two nearest input
    rows and columns, as in torch.
    """
    b, _, _, c = images.shape
    return jax.image.resize(images, (b, IMAGE_SIZE, IMAGE_SIZE, c), "bilinear", antialias=False)


class InceptionV3(nn.Module):
    """`InceptionV3()(images) -> InceptionOutput`; images NHWC in [-1, 1], any size."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> InceptionOutput:
        conv = functools.partial(BasicConv2d, dtype=self.dtype)
        x = resize_to_inception(images.astype(jnp.float32)).astype(self.dtype)
        x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, stride=2)
        x = conv(80, name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, stride=2)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, dtype=self.dtype, name=name)(x)
        x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, dtype=self.dtype, name=name)(x)
        x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, dtype=self.dtype, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, dtype=self.dtype, name="Mixed_7c")(x)
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(NUM_CLASSES, dtype=jnp.float32, name="fc")(pool)
        return InceptionOutput(pool=pool, logits=logits)


def abstract_variables() -> dict:
    """Shapes and dtypes of `{"params", "batch_stats"}`, without computing anything."""
    images = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
    return jax.eval_shape(InceptionV3().init, jax.random.key(0), images)


_HOW = ("make one from pytorch-fid's weights with `python -m vqjax.convert inception "
        "--pth pt_inception-2015-12-05-6726825d.pth --out inception.msgpack`")


def load_variables(path: str) -> dict:
    """`{"params", "batch_stats"}` from a file of the converter; a missing or wrong file is one sentence."""
    if not path:
        raise ValueError(f"The FID InceptionV3 needs a weights file but the path is empty; {_HOW}.")
    if not paths.is_file(path):
        raise ValueError(f"The FID InceptionV3 weights path {path!r} is not a file; {_HOW}.")
    return weights_file.read(path, abstract_variables(), "InceptionV3", _HOW)
