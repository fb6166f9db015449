"""The convolution layer every vqjax net uses: flax's `nn.Conv`, with tiny feature maps computed
as patches times one matmul on CPUs.

XLA:CPU runs a convolution whose output is at most 2 pixels high or wide 10-90x slower than the
same FLOPs elsewhere (a 3x3, 512 -> 512 convolution of 2x2 maps at batch 64: ~1 GFLOP/s, where
4x4 and 8x8 maps run at 65-115; `python bench/conv.py`). VGG16's last stage in LPIPS at 32x32
input is such a convolution, three times over. For those shapes `conv_general_dilated` gathers
the kernel's taps into the channel axis (`[B, h, w, kh * kw * C]`) and contracts them with the
kernel in one `dot_general`: the same function (every product and sum of the convolution, in
another order), and a gradient made of a matmul and pads. Elsewhere it is `lax`'s convolution.

Parameters, names and initialisers are `nn.Conv`'s, so converted checkpoints load unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

# Output side (pixels) at or below which XLA:CPU's convolution is pathological (measured at
# 1x1, 2x2 and 3x3 outputs over 64-512 channels: 3x3 runs at normal speed).
SMALL_OUTPUT_SIDE = 2


def _is_nhwc(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> bool:
    if lhs.ndim != 4:
        return False
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return given == nhwc


def output_size(size: int, window: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - window) // stride + 1


def patches_conv(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                 pads: Sequence[tuple[int, int]], precision: Any = None,
                 preferred_element_type: Any = None) -> jax.Array:
    """An NHWC x HWIO convolution (no dilation, one group) as patches times one matmul."""
    kh, kw, cin, cout = rhs.shape
    (sh, sw), ((top, bottom), (left, right)) = strides, pads
    # lax.pad, unlike jnp.pad, takes the negative padding that lax's convolution accepts.
    padded = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    batch, height, width, _ = padded.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    # Taps in the kernel's (row, column, channel) order, so that HWIO reshapes to its rows.
    taps = [lax.slice(padded, (0, i, j, 0), (batch, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return lax.dot_general(patches, rhs.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
    """`lax.conv_general_dilated`, taking `patches_conv` for tiny NHWC outputs on a CPU."""
    plain = lambda: lax.conv_general_dilated(  # noqa: E731
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    undilated = all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
    if (jax.default_backend() != "cpu" or not undilated or feature_group_count != 1
            or batch_group_count != 1 or not _is_nhwc(lhs, rhs, dimension_numbers)):
        return plain()
    window, spatial = rhs.shape[:2], lhs.shape[1:3]
    pads = (lax.padtype_to_pads(spatial, window, window_strides, padding) if isinstance(padding, str)
            else [tuple(p) for p in padding])
    out = [output_size(n, k, s, p) for n, k, s, p in zip(spatial, window, window_strides, pads)]
    if min(out) > SMALL_OUTPUT_SIDE:
        return plain()
    return patches_conv(lhs, rhs, window_strides, pads, precision, preferred_element_type)


class Conv(nn.Conv):
    """`nn.Conv` (same fields, parameters and names) computed by `conv_general_dilated`."""

    conv_general_dilated: Callable | None = conv_general_dilated
