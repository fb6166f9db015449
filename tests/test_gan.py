"""The VQGAN train step: G and D in one compiled step, warm-ups, discriminator state."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.helpers import load_config
from vqjax import gan, steps
from vqjax.nets.autoencoder import VQAutoencoder
from vqjax.nets.discriminator import NLayerDiscriminator


def _config(**loss):
    config = load_config("vqvae_quickstart", "smoke")
    config.quantizer.num_codes = 16
    config.quantizer.init = "uniform"
    config.loss = ml_collections.ConfigDict(dict(
        reconstruction="l1", perceptual_weight=0.0, gan_loss="hinge", disc_weight=0.8,
        adaptive_weight=True, disc_start=2, gen_adv_start=3, legacy_beta=False,
        lecam_weight=0.1, lecam_decay=0.9, r1_gamma=0.0))
    config.loss.update(loss)
    return config


def _setup(config, norm="batch"):
    model = VQAutoencoder(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                          z_channels=8, embed_dim=8, resolution=16)
    config.model.embed_dim = 8
    disc = NLayerDiscriminator(ndf=8, n_layers=2, norm=norm)
    tx_g, tx_d = optax.adam(1e-3, 0.5, 0.9), optax.adam(1e-3, 0.5, 0.9)
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(4, 16, 16, 3)), jnp.float32)
    base = steps.init_state(config, model, tx_g, jax.random.key(0), images)
    state = gan.init_gan_state(base, disc, tx_d, jax.random.key(1), images)
    return model, disc, tx_g, tx_d, state, images


def test_generator_and_discriminator_step_together_compiled_once():
    config = _config()
    model, disc, tx_g, tx_d, state, images = _setup(config)
    step_fn = jax.jit(chex.assert_max_traces(gan.make_gan_train_step(config, model, disc, tx_g, tx_d), n=1))
    history = []
    for _ in range(5):
        before = state
        state, metrics = step_fn(state, {"image": images})
        history.append((before, jax.device_get(metrics)))
    # Steps 0 and 1: the discriminator is frozen (params, moments, batch statistics).
    chex.assert_trees_all_equal(history[1][0].disc_params, history[0][0].disc_params)
    chex.assert_trees_all_equal(history[2][0].disc_params, history[0][0].disc_params)
    chex.assert_trees_all_equal(history[2][0].disc_batch_stats, history[0][0].disc_batch_stats)
    assert history[0][1]["d_loss"] == 0.0
    # From step 2 it learns; the generator's adversarial term switches on at step 3.
    assert not np.allclose(history[3][0].disc_params["conv_0"]["kernel"], history[0][0].disc_params["conv_0"]["kernel"])
    assert history[2][1]["d_loss"] > 0.0
    np.testing.assert_allclose(history[2][1]["g_loss"], history[2][1]["recon_loss"] + history[2][1]["vq_loss"], rtol=1e-5)
    m = history[4][1]
    np.testing.assert_allclose(m["g_loss"], m["recon_loss"] + m["vq_loss"] + m["adaptive_weight"] * m["g_adv_loss"], rtol=1e-5)
    assert all(np.isfinite(v) for _, metrics in history for v in metrics.values())


def test_batch_statistics_come_from_the_discriminator_pass_only():
    config = _config(disc_start=0, gen_adv_start=0)
    model, disc, tx_g, tx_d, state, images = _setup(config)
    new_state, _ = jax.jit(gan.make_gan_train_step(config, model, disc, tx_g, tx_d))(state, {"image": images})
    # Recompute: real images, then this step's reconstructions, through the pre-step discriminator.
    reconstruction, _, _ = steps.forward(model, state.params, state.codebook.embedding, images, train=True,
                                         rng=jax.random.fold_in(state.step_rng(), 0))
    variables = {"params": state.disc_params, "batch_stats": state.disc_batch_stats}
    _, upd = disc.apply(variables, images, train=True, mutable=["batch_stats"])
    _, upd = disc.apply({"params": state.disc_params, **upd}, reconstruction, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_close(new_state.disc_batch_stats, upd["batch_stats"], rtol=1e-5, atol=1e-6)


def test_no_running_statistics_with_group_norm_and_r1():
    config = _config(disc_start=0, gen_adv_start=0, r1_gamma=1.0, gan_loss="non_saturating")
    model, disc, tx_g, tx_d, state, images = _setup(config, norm="group")
    assert state.disc_batch_stats == {}
    _, metrics = jax.jit(gan.make_gan_train_step(config, model, disc, tx_g, tx_d))(state, {"image": images})
    assert metrics["r1"] > 0 and np.isfinite(metrics["d_loss"])


def test_warmup_order_and_missing_lpips_are_sentences():
    config = _config(disc_start=5, gen_adv_start=2)
    model, disc, tx_g, tx_d, _, _ = _setup(config)
    with pytest.raises(ValueError, match="gen_adv_start"):
        gan.make_gan_train_step(config, model, disc, tx_g, tx_d)
    config = _config(perceptual_weight=1.0)
    with pytest.raises(ValueError, match="perceptual_weight"):
        gan.make_gan_train_step(config, model, disc, tx_g, tx_d)
