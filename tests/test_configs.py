"""Every config file loads, locks, and builds its model (full size as shapes, smoke for real)."""

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import config_names, load_config
from vqjax import state as state_lib, steps


@pytest.mark.parametrize("name", config_names())
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_builds_its_model(name, arg):
    config = load_config(name, arg)
    config.lock()
    model = steps.build_model(config.model)
    tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
    images = jnp.zeros((2, config.data.image_size, config.data.image_size, config.data.channels))
    config.quantizer.init = "uniform"  # shapes only: k-means needs real encoder outputs
    abstract = jax.eval_shape(lambda: steps.init_state(config, model, tx, jax.random.key(0), images))
    assert abstract.codebook.embedding.shape == (config.quantizer.num_codes, config.model.embed_dim)
    latent = config.data.image_size // 2**config.model.num_downsamples
    z = jax.eval_shape(lambda p: model.apply({"params": p}, images, method=model.encode), abstract.params)
    assert z.shape == (2, latent, latent, config.model.embed_dim)
    with pytest.raises(AttributeError):
        config.train.num_stepz = 3  # locked: a typo is an error


def test_cifar10_config_has_the_papers_settings():
    config = load_config("vqvae_cifar10")
    assert config.model.hidden_channels == 256
    assert config.quantizer.num_codes == 512 and config.model.embed_dim == 64
    assert config.quantizer.beta == 0.25 and config.quantizer.decay == 0.99
    assert config.quantizer.kind == "ema"
    assert config.optim.name == "adam" and config.optim.learning_rate == 2e-4
    assert config.data.batch_size == 128
