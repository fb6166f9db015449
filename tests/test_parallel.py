"""Compilation options of vqjax.core.parallel: what they switch, and that results do not change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.core import parallel
from vqjax.nets.blocks import ResnetBlock


def test_cpu_options_only_on_cpu():
    assert parallel.compiler_options("gpu") == {}
    assert parallel.compiler_options("tpu") == {}
    cpu = parallel.compiler_options("cpu")
    # This jaxlib knows the option (the test suite pins one); it keeps YNNPACK off convolutions of their own.
    assert set(cpu) == {"xla_cpu_experimental_ynn_fusion_type"}
    assert "CONVOLUTION" not in cpu["xla_cpu_experimental_ynn_fusion_type"]


def test_cpu_options_change_speed_not_values():
    """A residual block's output gradients are the same compiled with and without them."""
    block = ResnetBlock(64)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 32))
    params = block.init(jax.random.key(1), x)["params"]

    def loss(params, x):
        return jnp.mean(jnp.square(block.apply({"params": params}, x)))

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    plain = jax.jit(grad)(params, x)
    tuned = jax.jit(grad, compiler_options=parallel.compiler_options("cpu"))(params, x)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(tuned)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_the_config_chooses_the_cpu_convolutions():
    from tests.helpers import load_config

    assert parallel.step_compiler_options(load_config("vqvae_quickstart").train.cpu_convolutions) == {}
    assert parallel.step_compiler_options(load_config("vqgan_quickstart").train.cpu_convolutions) == parallel.compiler_options()
    config = load_config("vqvae_quickstart")
    config.train.cpu_convolutions = "onednn"
    with pytest.raises(ValueError, match="cpu_convolutions is 'onednn'; use one of"):
        parallel.step_compiler_options(config.train.cpu_convolutions)
