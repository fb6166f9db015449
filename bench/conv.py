r"""3x3 convolutions at the shapes of the nets (LPIPS' VGG16 at 32x32 input, taming's autoencoder
at CIFAR size), forward and forward + backward: XLA's convolution (`lax.conv_general_dilated`)
beside vqjax's layer (`vqjax.nets.conv`: patches + one matmul for outputs of at most 2 pixels a
side, XLA's convolution elsewhere), jit-compiled with the CPU options of the VQGAN configs
(`--cpu_convolutions=ynnpack` for XLA's defaults).

  python bench/conv.py [--repeats=5]    # about a minute on 2 CPU cores
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import median_seconds  # pylint: disable=wrong-import-position
from vqjax.core import parallel  # pylint: disable=wrong-import-position
from vqjax.nets import conv  # pylint: disable=wrong-import-position

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per implementation and shape.")
_CPU_CONVOLUTIONS = flags.DEFINE_enum("cpu_convolutions", "xla", parallel.CPU_CONVOLUTIONS,
                                      "XLA:CPU compile options, as config.train.cpu_convolutions.")

# (batch, side, channels in, channels out): VGG16's stages 5, 4, 3 at 32x32 input (LPIPS runs
# twice the training batch of 32), the same at 1x1 (16x16 input), and the autoencoder's 8x8 maps.
SHAPES = ((64, 2, 512, 512), (64, 4, 256, 512), (64, 4, 512, 512), (64, 8, 256, 256),
          (64, 1, 512, 512), (32, 8, 128, 128), (32, 3, 512, 512))
NHWC = ("NHWC", "HWIO", "NHWC")


def xla_conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)


def vqjax_conv(x, k):
    return conv.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)


def timed_ms(fn, *args) -> float:
    compiled = jax.jit(fn, compiler_options=parallel.step_compiler_options(_CPU_CONVOLUTIONS.value))
    return 1e3 * median_seconds(lambda: compiled(*args), _REPEATS.value)


def main(argv):
    del argv
    print(f"3x3 convolution, stride 1, SAME; jax {jax.__version__} on {jax.devices()[0].device_kind}, "
          f"CPU convolutions {_CPU_CONVOLUTIONS.value}")
    for batch, side, cin, cout in SHAPES:
        x = jax.random.normal(jax.random.key(0), (batch, side, side, cin))
        k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / (3 * cin ** 0.5)
        gflop = 2 * batch * side * side * 9 * cin * cout / 1e9
        line = []
        for label, fn in (("forward", lambda f: f),
                          ("+ backward", lambda f: jax.grad(lambda x, k: jnp.sum(jnp.square(f(x, k))), (0, 1)))):
            xla_ms, ours_ms = timed_ms(fn(xla_conv), x, k), timed_ms(fn(vqjax_conv), x, k)
            line.append(f"{label} XLA {xla_ms:7.1f} ms, vqjax {ours_ms:7.1f} ms ({xla_ms / ours_ms:4.1f}x)")
            if label == "forward":
                line[-1] += f" [{gflop / xla_ms * 1e3:.0f} vs {gflop / ours_ms * 1e3:.0f} GFLOP/s]"
        print(f"  [{batch}, {side}, {side}, {cin}] -> {cout}: " + "; ".join(line), flush=True)


if __name__ == "__main__":
    app.run(main)
