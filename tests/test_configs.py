"""Every config file loads, locks, and builds its model (full size as shapes, smoke for real)."""

import jax
import jax.numpy as jnp
import pytest

from tests.helpers import config_names, load_config, prior_config_names
from vqjax import quantizers
from vqjax.core import optim as state_lib
from vqjax.families import tokenizer as tokenizer_lib
from vqjax.nets import build as nets
from vqjax.train.state import TrainState


@pytest.mark.parametrize("name", config_names())
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_builds_its_model(name, arg):
    config = load_config(name, arg)
    config.lock()
    model = nets.build_autoencoder(**config.model)
    tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
    images = jnp.zeros((2, config.data.image_size, config.data.image_size, config.data.channels))
    config.quantizer.init = "uniform"  # shapes only: k-means needs real encoder outputs
    quantizer = quantizers.build(config.quantizer, dim=config.model.embed_dim)

    def init_state():
        params, quantizer_state = tokenizer_lib.init_params(model, quantizer, jax.random.key(0), images)
        return TrainState.create(seed=config.seed, params=params, tx=tx, extra={"quantizer": quantizer_state},
                                 params_ema_decay=config.optim.get("params_ema_decay", 0.0))

    abstract = jax.eval_shape(init_state)
    codebook = jax.eval_shape(
        lambda s: quantizer.lookup({"params": s.params["quantizer"], "state": s.extra["quantizer"]},
                                   jnp.arange(config.quantizer.num_codes)), abstract)
    assert codebook.shape == (config.quantizer.num_codes, config.model.embed_dim)
    latent = config.data.image_size // nets.downsampling_factor(model)
    z = jax.eval_shape(lambda p: model.apply({"params": p}, images, method=model.encode), abstract.params["net"])
    assert z.shape == (2, latent, latent, config.model.embed_dim)


def test_cifar10_config_has_the_papers_settings():
    config = load_config("vqvae_cifar10")
    assert config.model.hidden_channels == 256
    assert config.quantizer.num_codes == 512 and config.model.embed_dim == 64
    assert config.quantizer.beta == 0.25 and config.quantizer.decay == 0.99
    assert config.quantizer.kind == "ema"
    assert config.optim.name == "adam" and config.optim.learning_rate == 2e-4
    assert config.data.batch_size == 128


def test_vqgan_configs_have_tamings_settings():
    for name in ("vqgan_imagenet_f16_1024", "vqgan_imagenet_f16_16384", "vqgan_ffhq_f16_1024"):
        config = load_config(name)
        assert config.optim.b1 == config.optim_d.b1 == 0.5 and config.optim.b2 == config.optim_d.b2 == 0.9
        assert config.optim.learning_rate == 4.5e-6 and config.optim.scale_lr_by_batch
        assert state_lib.peak_learning_rate(config.optim, 12) == pytest.approx(5.4e-5)
        assert config.loss.reconstruction == "l1" and config.loss.perceptual_weight == 1.0
        assert config.loss.gan_loss == "hinge" and config.loss.adaptive_weight
        assert config.quantizer.kind == "vq" and config.quantizer.beta == 0.25 and config.quantizer.legacy_beta
    f16_16384 = load_config("vqgan_imagenet_f16_16384")
    assert (f16_16384.loss.disc_start, f16_16384.loss.disc_weight, f16_16384.disc.n_layers) == (0, 0.75, 2)
    assert load_config("vqgan_imagenet_f16_1024").loss.disc_start == 250_001
    assert load_config("vqgan_ffhq_f16_1024").loss.disc_start == 30_001


@pytest.mark.parametrize("lr_scaled", [False, True])
def test_learning_rate_scaling_by_global_batch(lr_scaled):
    config = load_config("vqgan_quickstart")
    config.optim.scale_lr_by_batch = lr_scaled
    schedule = state_lib.make_schedule(config.optim, 10, global_batch_size=32)
    expected = config.optim.learning_rate * (32 if lr_scaled else 1)
    assert float(schedule(0)) == pytest.approx(expected)


@pytest.mark.parametrize("name", prior_config_names())
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_prior_config_builds_its_model(name, arg):
    config = load_config(name, arg)
    config.lock()
    model = nets.build_transformer(num_codes=1024, seq_len=64, **config.model)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 64), jnp.int32),
                                               jnp.zeros((2,), jnp.int32))["params"])
    tx = state_lib.make_optimizer(config.optim, config.train.num_steps, config.data.batch_size,
                                  decay_mask=state_lib.decay_kernels_only)
    jax.eval_shape(tx.init, params)
    assert model.embed_dim % model.num_heads == 0


def test_prior_configs_have_the_references_settings():
    cin = load_config("gpt_imagenet_cin")
    model = nets.build_transformer(num_codes=16384, seq_len=256, **cin.model)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 256), jnp.int32),
                                               jnp.zeros((1,), jnp.int32))["params"])
    # taming's cIN transformer: 48 layers of width 1536 over 16384 codes, about 1.4 B parameters.
    assert 1.35e9 < state_lib.count_params(params) < 1.45e9
    assert (cin.optim.b1, cin.optim.b2, cin.optim.weight_decay) == (0.9, 0.95, 0.01)
    assert (cin.sampling.top_k, cin.sampling.top_p) == (600, 0.92)
    maskgit = load_config("maskgit_imagenet")
    assert (maskgit.model.num_layers, maskgit.model.num_heads, maskgit.model.embed_dim, maskgit.model.mlp_dim) == (24, 16, 768, 3072)
    assert (maskgit.optim.learning_rate, maskgit.optim.b2, maskgit.optim.weight_decay, maskgit.optim.warmup_steps) == (1e-4, 0.96, 0.045, 5000)
    assert maskgit.loss.label_smoothing == 0.1 and maskgit.sampling.choice_temperature == 4.5
