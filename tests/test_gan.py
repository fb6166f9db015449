"""The VQGAN train step: G and D in one compiled step, warm-ups, discriminator state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import load_config
from vqjax.core import parallel
from vqjax.families.vqgan import VQGANFamily
from vqjax.nets import lpips
from vqjax.train import experiment


def _config(norm="batch", **loss):
    config = load_config("vqgan_quickstart", "smoke")
    config.quantizer.kind = "ema"
    config.quantizer.num_codes = 16
    config.quantizer.init = "uniform"
    config.quantizer.legacy_beta = False
    config.loss.update(dict(
        reconstruction="l1", perceptual_weight=0.0, gan_loss="hinge", disc_weight=0.8,
        adaptive_weight=True, disc_start=2, gen_adv_delay=1,
        lecam_weight=0.1, lecam_decay=0.9, r1_gamma=0.0))
    config.loss.update(loss)
    # One level (no resampling) keeps every kind of block, attention included, at the
    # smallest compile time: these tests compile whole GAN steps several times.
    config.data.image_size = 16
    config.model.update(name="vqgan", ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(16,),
                        z_channels=8, embed_dim=8, resolution=16, dropout=0.0, remat=False)
    config.disc.update(ndf=8, n_layers=2, norm=norm)
    # Adam(1e-3, 0.5, 0.9) for both networks.
    for optim_cfg in (config.optim, config.optim_d):
        optim_cfg.update(name="adam", learning_rate=1e-3, b1=0.5, b2=0.9, schedule="constant",
                         warmup_steps=0, grad_clip_norm=0.0, scale_lr_by_batch=False, params_ema_decay=0.0)
    return config


def _reference_forward(family, params, codebook, images, rng):
    """encoder -> nearest codebook row, straight-through -> decoder: written here from the nets'
    encode / decode and the VQ-VAE formulas, not with vqjax's tokenizer.forward or quantizers,
    so that the step is checked against an independent computation. (reconstruction, z, q)"""
    rngs = {"dropout": rng}
    z = family.model.apply({"params": params["net"]}, images, train=True, method="encode", rngs=rngs)
    flat = z.reshape(-1, z.shape[-1])
    distances = (jnp.sum(flat ** 2, 1, keepdims=True) - 2 * flat @ codebook.T + jnp.sum(codebook ** 2, 1))
    q = codebook[jnp.argmin(distances, 1)].reshape(z.shape)
    quantized = z + jax.lax.stop_gradient(q - z)
    reconstruction = family.model.apply({"params": params["net"]}, quantized, train=True, method="decode", rngs=rngs)
    return reconstruction, z, q


def _setup(config, perceptual_params=None):
    family = VQGANFamily(config, mesh=parallel.make_mesh(), perceptual_params=perceptual_params)
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(4, 16, 16, 3)), jnp.float32)
    state = jax.jit(family.create)(jax.random.key(0), {"image": images})
    return family, state, images


@pytest.fixture(scope="module")
def five_steps():
    """Five steps of `_config()` (the discriminator learns from step 2, the generator's
    adversarial term is on from step 3) by one compiled step: (family, images, history), where
    history[i] = (the state before step i, the metrics of step i)."""
    family, state, images = _setup(_config())
    step_fn = jax.jit(chex.assert_max_traces(family.train_step, n=1))
    history = []
    for _ in range(5):
        before = state
        state, metrics = step_fn(state, {"image": images})
        history.append((before, jax.device_get(metrics)))
    return family, images, history


def test_generator_and_discriminator_step_together_compiled_once(five_steps):
    _, _, history = five_steps
    # Steps 0 and 1: the discriminator is frozen (params, moments, batch statistics).
    chex.assert_trees_all_equal(history[1][0].extra["disc_params"], history[0][0].extra["disc_params"])
    chex.assert_trees_all_equal(history[2][0].extra["disc_params"], history[0][0].extra["disc_params"])
    chex.assert_trees_all_equal(history[2][0].extra["disc_batch_stats"], history[0][0].extra["disc_batch_stats"])
    assert history[0][1]["d_loss"] == 0.0
    # From step 2 it learns; the generator's adversarial term switches on at step 3.
    assert not np.allclose(history[3][0].extra["disc_params"]["conv_0"]["kernel"],
                           history[0][0].extra["disc_params"]["conv_0"]["kernel"])
    assert history[2][1]["d_loss"] > 0.0
    np.testing.assert_allclose(history[2][1]["g_loss"], history[2][1]["recon_loss"] + history[2][1]["vq_loss"], rtol=1e-5)
    m = history[4][1]
    np.testing.assert_allclose(m["g_loss"], m["recon_loss"] + m["vq_loss"] + m["adaptive_weight"] * m["g_adv_loss"], rtol=1e-5)
    assert all(np.isfinite(v) for _, metrics in history for v in metrics.values())


def test_batch_statistics_come_from_the_discriminator_pass_only(five_steps):
    family, images, history = five_steps
    disc = family.disc
    # Step 3 of the shared steps: the discriminator learns and the generator's adversarial term
    # (its own pass of the reconstructions through the discriminator) is on.
    (state, metrics), (new_state, _) = history[3], history[4]
    assert metrics["d_loss"] > 0 and metrics["adaptive_weight"] * metrics["g_adv_loss"] != 0
    # Recompute: real images, then this step's reconstructions, through the pre-step discriminator.
    @jax.jit  # one compiled reference, not one compilation per eager operation
    def batch_stats_after_step(state):
        reconstruction, _, _ = _reference_forward(family, state.params, state.extra["quantizer"].embedding, images,
                                                  jax.random.fold_in(state.step_rng(), 0))
        variables = {"params": state.extra["disc_params"], "batch_stats": state.extra["disc_batch_stats"]}
        _, upd = disc.apply(variables, images, train=True, mutable=["batch_stats"])
        _, upd = disc.apply({"params": state.extra["disc_params"], **upd}, reconstruction, train=True,
                            mutable=["batch_stats"])
        return upd["batch_stats"]

    assert not np.allclose(jax.tree.leaves(new_state.extra["disc_batch_stats"])[0],
                           jax.tree.leaves(state.extra["disc_batch_stats"])[0])  # they moved at this step
    chex.assert_trees_all_close(new_state.extra["disc_batch_stats"], batch_stats_after_step(state), rtol=1e-5, atol=1e-6)


@pytest.mark.extended
def test_no_running_statistics_with_group_norm_and_r1():
    config = _config(norm="group", disc_start=0, gen_adv_delay=0, r1_gamma=1.0, gan_loss="non_saturating")
    family, state, images = _setup(config)
    assert state.extra["disc_batch_stats"] == {}
    _, metrics = jax.jit(family.train_step)(state, {"image": images})
    assert metrics["r1"] > 0 and np.isfinite(metrics["d_loss"])


def test_warmup_order_is_checked():
    config = _config(gen_adv_delay=-1)
    with pytest.raises(ValueError, match="gen_adv_delay"):
        VQGANFamily(config, mesh=parallel.make_mesh())


def test_adaptive_weight_and_gradients_against_explicit_differentiation():
    config = _config(norm="group", disc_start=0, gen_adv_delay=0, lecam_weight=0.0)
    family, state, images = _setup(config)
    disc = family.disc
    _, metrics = jax.jit(family.train_step)(state, {"image": images})
    rng = jax.random.fold_in(state.step_rng(), 0)

    def terms(params):
        reconstruction, z, q = _reference_forward(family, params, state.extra["quantizer"].embedding, images, rng)
        rec = jnp.mean(jnp.abs(reconstruction - images))
        g_adv = -jnp.mean(disc.apply({"params": state.extra["disc_params"]}, reconstruction, train=True))
        commitment = jnp.mean((z - jax.lax.stop_gradient(q)) ** 2)
        return rec, 0.25 * commitment, g_adv  # EMA codebook: only beta * commitment

    # The three terms' gradients in one compiled program (rows of the Jacobian); the total
    # is their combination, by linearity of the gradient.
    jacobian = jax.jit(jax.jacrev(lambda p: jnp.stack(terms(p))))(state.params)
    rec_grads, commit_grads, adv_grads = (jax.tree.map(lambda g, i=i: g[i], jacobian) for i in range(3))
    last = lambda g: g["net"]["decoder"]["conv_out"]["kernel"]  # taming's decoder.conv_out.weight
    expected = 0.8 * np.linalg.norm(last(rec_grads)) / (np.linalg.norm(last(adv_grads)) + 1e-4)
    np.testing.assert_allclose(metrics["adaptive_weight"], expected, rtol=1e-4)
    total_grads = jax.tree.map(lambda r, c, a: r + c + expected * a, rec_grads, commit_grads, adv_grads)
    np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(total_grads), rtol=1e-4)


@pytest.mark.extended
def test_perceptual_term_in_the_step(tmp_path):
    config = _config(perceptual_weight=0.5)
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(4, 16, 16, 3)), jnp.float32)
    perceptual = lpips.LPIPS()
    # Random positive heads: a real file's layout without the download.
    params = jax.jit(perceptual.init)(jax.random.key(3), images, images)["params"]
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: jnp.abs(x) if p[0].key.startswith("lin_") else x, params)
    with pytest.raises(ValueError, match="LPIPS"):
        VQGANFamily(config, mesh=parallel.make_mesh())
    family, state, images = _setup(config, perceptual_params=params)
    step = jax.jit(family.train_step)
    _, metrics = step(state, {"image": images}, params)

    @jax.jit
    def perceptual_loss(state, params):
        reconstruction, _, _ = _reference_forward(family, state.params, state.extra["quantizer"].embedding, images,
                                                  jax.random.fold_in(state.step_rng(), 0))
        return jnp.mean(perceptual.apply({"params": params}, images, reconstruction))

    expected = perceptual_loss(state, params)
    np.testing.assert_allclose(metrics["perceptual_loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(metrics["recon_loss"], metrics["pixel_loss"] + 0.5 * expected, rtol=1e-5)
    assert metrics["perceptual_loss"] > 0


def test_trainer_without_lpips_weights_says_how_to_make_them(tmp_path):
    config = load_config("vqgan_quickstart", "smoke")
    config.loss.perceptual_weight = 1.0
    with pytest.raises(ValueError, match="python -m vqjax.convert lpips"):
        experiment.train_and_evaluate(config, str(tmp_path))
    config.loss.lpips_path = str(tmp_path / "missing.msgpack")
    with pytest.raises(ValueError, match="not a file"):
        experiment.train_and_evaluate(config, str(tmp_path))
