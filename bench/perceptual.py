r"""LPIPS (VGG16, v0.1) forward, and its gradient with respect to the reconstruction (the loss'
backward pass), beside the `lpips` package (PyTorch) in the same process, random VGG weights in
both (the same cost as ImageNet's). vqjax jit-compiles with the CPU options of the VQGAN configs.

  python bench/perceptual.py [--repeats=5]    # about a minute on 2 CPU cores; needs the [interop] extra
"""

from __future__ import annotations

import os
import sys

# PyTorch before TensorFlow-using imports (see bench/train_step.py).
import torch
import torch._dynamo  # pylint: disable=unused-import

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import median_seconds  # pylint: disable=wrong-import-position
from vqjax.core import parallel  # pylint: disable=wrong-import-position
from vqjax.nets import lpips  # pylint: disable=wrong-import-position

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per implementation and size.")

SIZES = ((32, 32), (16, 64))  # (batch, side): vqgan_cifar10's training batch, and a larger image


def torch_ms(fn) -> float:
    """Median ms of a PyTorch call (median_seconds waits on JAX values; torch's CPU calls return done)."""
    return 1e3 * median_seconds(fn, _REPEATS.value)


def main(argv):
    del argv
    import lpips as lpips_torch  # pylint: disable=import-outside-toplevel
    torch.manual_seed(0)
    reference = lpips_torch.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    options = parallel.step_compiler_options("xla")
    print(f"LPIPS (VGG16), jax {jax.__version__} on {jax.devices()[0].device_kind}; PyTorch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    for batch, side in SIZES:
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (batch, side, side, 3)).astype(np.float32)
        y = np.clip(x + rng.normal(scale=0.3, size=x.shape), -1, 1).astype(np.float32)
        model = lpips.LPIPS()
        params = model.init(jax.random.key(0), x[:1], y[:1])["params"]
        distance = lambda params, x, y: jnp.sum(model.apply({"params": params}, x, y))  # noqa: E731
        forward = jax.jit(distance, compiler_options=options)
        gradient = jax.jit(jax.grad(distance, argnums=2), compiler_options=options)
        ours = {"forward": 1e3 * median_seconds(lambda: forward(params, x, y), _REPEATS.value),
                "gradient": 1e3 * median_seconds(lambda: gradient(params, x, y), _REPEATS.value)}

        tx, ty = (torch.from_numpy(a.transpose(0, 3, 1, 2)).contiguous() for a in (x, y))

        def torch_forward():
            with torch.no_grad():
                return reference(tx, ty).sum()

        def torch_gradient():
            target = ty.clone().requires_grad_(True)
            reference(tx, target).sum().backward()
            return target.grad

        theirs = {"forward": torch_ms(torch_forward), "gradient": torch_ms(torch_gradient)}
        line = [f"{k} vqjax {ours[k]:6.0f} ms, lpips {theirs[k]:6.0f} ms ({theirs[k] / ours[k]:.2f}x)"
                for k in ours]
        print(f"  batch {batch} at {side}x{side}: " + "; ".join(line), flush=True)


if __name__ == "__main__":
    app.run(main)
