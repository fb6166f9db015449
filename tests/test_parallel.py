"""Compilation options of vqjax.parallel: what they switch, and that results do not change."""

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import parallel, steps
from tests.helpers import load_config


def test_cpu_options_only_on_cpu():
    assert parallel.compiler_options("gpu") == {}
    assert parallel.compiler_options("tpu") == {}
    cpu = parallel.compiler_options("cpu")
    # This jaxlib knows the option (the test suite pins one); it keeps YNNPACK off convolutions.
    assert set(cpu) == {"xla_cpu_experimental_ynn_fusion_type"}
    assert "CONVOLUTION" not in cpu["xla_cpu_experimental_ynn_fusion_type"]


def test_cpu_options_change_speed_not_values():
    """The autoencoder's loss and gradients are the same compiled with and without them."""
    config = load_config("vqgan_quickstart", "smoke")
    model = steps.build_model(config.model)
    images = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1.0, maxval=1.0)
    params = model.init(jax.random.key(1), images)["params"]

    def loss(params):
        return jnp.mean(jnp.abs(model.apply({"params": params}, images) - images))

    grad = jax.value_and_grad(loss)
    plain = jax.jit(grad)(params)
    tuned = jax.jit(grad, compiler_options=parallel.compiler_options("cpu"))(params)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(tuned)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
