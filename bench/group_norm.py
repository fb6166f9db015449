r"""GroupNorm + swish, forward and backward, at the VQGAN feature-map sizes (batch 32): vqjax's
`blocks.GroupNorm(swish=True)` beside flax's `nn.GroupNorm` followed by `nn.swish`, in the same
process, both jit-compiled with the CPU compile options the trainer uses.

  python bench/group_norm.py [--repeats=15]
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import median_seconds  # pylint: disable=wrong-import-position
from vqjax.core import parallel  # pylint: disable=wrong-import-position
from vqjax.nets import blocks  # pylint: disable=wrong-import-position

_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed calls per implementation and size.")

SHAPES = ((32, 32, 32, 64), (32, 32, 32, 128), (32, 16, 16, 128), (32, 8, 8, 128))


def flax_group_norm_swish(x, scale, bias):
    norm = nn.GroupNorm(num_groups=32, epsilon=1e-6)
    return nn.swish(norm.apply({"params": {"scale": scale, "bias": bias}}, x))


def vqjax_group_norm_swish(x, scale, bias):
    norm = blocks.GroupNorm(num_groups=32, epsilon=1e-6, swish=True)
    return norm.apply({"params": {"scale": scale, "bias": bias}}, x)


def gradients_fn(norm_fn, cotangent):
    """The jit-compiled gradients of <norm_fn(x), cotangent> in x, scale and bias."""
    loss = lambda x, scale, bias: jnp.sum(norm_fn(x, scale, bias) * cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)), compiler_options=parallel.compiler_options())


def main(argv):
    del argv
    print(f"GroupNorm(32) + swish, forward + backward, jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}")
    for shape in SHAPES:
        keys = jax.random.split(jax.random.key(0), 3)
        x = 2.0 * jax.random.normal(keys[0], shape) + 1.0
        scale, bias = 1.0 + 0.1 * jax.random.normal(keys[1], (2, shape[-1]))
        cotangent = jax.random.normal(keys[2], shape)
        results, ms = {}, {}
        for name, norm_fn in (("flax", flax_group_norm_swish), ("vqjax", vqjax_group_norm_swish)):
            grads = gradients_fn(norm_fn, cotangent)
            results[name] = grads(x, scale, bias)
            ms[name] = 1e3 * median_seconds(lambda: grads(x, scale, bias), _REPEATS.value)
        error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
                    for a, b in zip(results["flax"], results["vqjax"]))
        print(f"  {str(shape):18s} flax {ms['flax']:6.2f} ms, vqjax {ms['vqjax']:6.2f} ms: "
              f"{ms['flax'] / ms['vqjax']:.1f}x (gradients agree to {error:.0e} relative)")


if __name__ == "__main__":
    app.run(main)
