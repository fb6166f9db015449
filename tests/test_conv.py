"""The nets' convolution layer: tiny maps go through patches + one matmul on CPUs, with the
function and the gradients of `lax.conv_general_dilated` (the reference here)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vqjax.nets import conv

NHWC = ("NHWC", "HWIO", "NHWC")

# (input side, channels in, channels out, kernel, stride, padding): the shapes of LPIPS' last
# VGG stage at 32x32 (2x2 and, at 16x16, 1x1 maps), the PatchGAN's 4x4 stride-2 convolutions, a
# VALID 3x3 to 1x1, a 1x1 head, asymmetric and negative padding.
SMALL = [
    (2, 16, 24, 3, 1, "SAME"),
    (1, 8, 8, 3, 1, "SAME"),
    (4, 8, 16, 4, 2, ((1, 1), (1, 1))),
    (3, 8, 4, 3, 1, "VALID"),
    (2, 16, 1, 1, 1, "VALID"),
    (5, 8, 8, 3, 2, ((0, 1), (0, 1))),
    (4, 8, 8, 3, 1, ((-1, 0), (0, -1))),
    (2, 8, 8, (1, 3), 1, "SAME"),
]


def _uses_lax_conv(fn, *args) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("side, cin, cout, kernel, stride, padding", SMALL)
def test_small_maps_match_lax_convolution_and_its_gradients(side, cin, cout, kernel, stride, padding):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, side, side + 1, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)) / np.sqrt(kh * kw * cin), jnp.float32)
    strides = (stride, stride)

    def ours(x, k):
        return conv.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)

    def reference(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC,
                                        precision=lax.Precision.HIGHEST)

    assert not _uses_lax_conv(ours, x, k), "a tiny map should take the patches path"
    chex.assert_trees_all_close(ours(x, k), reference(x, k), rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=reference(x, k).shape), jnp.float32)
    loss = lambda f: lambda x, k: jnp.sum(f(x, k) * cotangent)  # noqa: E731
    chex.assert_trees_all_close(jax.grad(loss(ours), (0, 1))(x, k), jax.grad(loss(reference), (0, 1))(x, k),
                                rtol=1e-4, atol=1e-4)


def test_larger_maps_dilation_and_groups_stay_on_lax_convolution():
    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    assert _uses_lax_conv(lambda x, k: conv.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC), x, k)
    small = jnp.ones((2, 2, 2, 4))
    assert _uses_lax_conv(lambda x, k: conv.conv_general_dilated(
        x, k, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC), small, k)
    grouped = jnp.ones((3, 3, 2, 4))
    assert _uses_lax_conv(lambda x, k: conv.conv_general_dilated(
        x, k, (1, 1), "SAME", feature_group_count=2, dimension_numbers=NHWC), small, grouped)


def test_layer_has_flax_conv_parameters_and_function():
    x = jax.random.normal(jax.random.key(0), (2, 2, 2, 6))
    ours, flax_conv = conv.Conv(5, (3, 3), name="c"), conv.nn.Conv(5, (3, 3), name="c")
    params = flax_conv.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes(ours.init(jax.random.key(1), x), params)
    chex.assert_trees_all_close(ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-5, atol=1e-5)
