"""Loss functions against hand computations in numpy (and taming's own where it has them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax.losses import adversarial, reconstruction, vq

rng = np.random.default_rng(0)
REAL = rng.normal(size=(4, 6, 6, 1)).astype(np.float32)
FAKE = rng.normal(size=(4, 6, 6, 1)).astype(np.float32)


def _softplus(x):
    return np.log1p(np.exp(x))


def test_reconstruction_losses():
    a, b = rng.normal(size=(3, 4, 4, 3)), rng.normal(size=(3, 4, 4, 3))
    np.testing.assert_allclose(reconstruction.l2_reconstruction(a, b), ((a - b) ** 2).mean((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(reconstruction.l1_reconstruction(a, b), np.abs(a - b).mean((1, 2, 3)), rtol=1e-5)
    with pytest.raises(ValueError, match="config.loss.reconstruction"):
        reconstruction.pixel_loss("l3")


def test_vq_loss_beta_placement():
    codebook, commitment = jnp.asarray([1.0, 3.0]), jnp.asarray([2.0, 4.0])
    vq_loss = lambda *args, **kwargs: sum(vq.vq_loss_terms(*args, **kwargs).values())
    np.testing.assert_allclose(vq_loss(codebook, commitment, beta=0.25), 2.0 + 0.25 * 3.0)
    np.testing.assert_allclose(vq_loss(codebook, commitment, beta=0.25, legacy=True), 0.25 * 2.0 + 3.0)


def test_discriminator_losses():
    np.testing.assert_allclose(
        adversarial.discriminator_loss("hinge", REAL, FAKE),
        0.5 * (np.maximum(0, 1 - REAL).mean() + np.maximum(0, 1 + FAKE).mean()), rtol=1e-5)
    np.testing.assert_allclose(
        adversarial.discriminator_loss("non_saturating", REAL, FAKE),
        0.5 * (_softplus(-REAL).mean() + _softplus(FAKE).mean()), rtol=1e-5)
    np.testing.assert_allclose(
        adversarial.discriminator_loss("least_squares", REAL, FAKE),
        0.5 * (((REAL - 1) ** 2).mean() + (FAKE**2).mean()), rtol=1e-5)
    with pytest.raises(ValueError, match="gan_loss"):
        adversarial.discriminator_loss("wasserstein", REAL, FAKE)


def test_discriminator_losses_equal_taming():
    torch = pytest.importorskip("torch")
    vqperceptual = pytest.importorskip("taming.modules.losses.vqperceptual")
    real, fake = torch.from_numpy(REAL), torch.from_numpy(FAKE)
    np.testing.assert_allclose(adversarial.discriminator_loss("hinge", REAL, FAKE),
                               vqperceptual.hinge_d_loss(real, fake).item(), rtol=1e-5)
    np.testing.assert_allclose(adversarial.discriminator_loss("non_saturating", REAL, FAKE),
                               vqperceptual.vanilla_d_loss(real, fake).item(), rtol=1e-5)


def test_generator_losses():
    np.testing.assert_allclose(adversarial.generator_loss("hinge", FAKE), -FAKE.mean(), rtol=1e-5)
    np.testing.assert_allclose(adversarial.generator_loss("non_saturating", FAKE), _softplus(-FAKE).mean(), rtol=1e-5)
    np.testing.assert_allclose(adversarial.generator_loss("least_squares", FAKE), 0.5 * ((FAKE - 1) ** 2).mean(), rtol=1e-5)


def test_warmup_factor():
    np.testing.assert_array_equal([adversarial.warmup_factor(s, 10) for s in (0, 9, 10, 11)], [0, 0, 1, 1])
    assert jax.jit(adversarial.warmup_factor, static_argnums=1)(jnp.asarray(12), 10) == 1.0


def test_adaptive_weight_against_explicit_gradient_norms():
    # A last layer w (a conv kernel and bias) and two losses that depend on it.
    w = {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 3)), jnp.float32), "bias": jnp.zeros((3,))}
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 4)), jnp.float32)

    def out(w):
        return jax.lax.conv_general_dilated(x, w["kernel"], (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + w["bias"]

    rec_grads = jax.grad(lambda w: jnp.mean(jnp.abs(out(w) - 1.0)))(w)
    gan_grads = jax.grad(lambda w: -jnp.mean(jnp.tanh(out(w))))(w)
    flat = lambda g: np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree.leaves(g)])
    expected = np.linalg.norm(flat(rec_grads)) / (np.linalg.norm(flat(gan_grads)) + 1e-4)
    expected = np.clip(expected, 0, 1e4) * 0.8
    np.testing.assert_allclose(adversarial.adaptive_weight(rec_grads, gan_grads, 0.8), expected, rtol=1e-5)


def test_adaptive_weight_edge_cases_are_finite():
    ones = {"k": jnp.ones((4,))}
    zeros = {"k": jnp.zeros((4,))}
    np.testing.assert_allclose(adversarial.adaptive_weight(ones, zeros, 1.0), 1e4)  # clipped
    np.testing.assert_allclose(adversarial.adaptive_weight({"k": jnp.full((4,), jnp.nan)}, ones, 1.0), 0.0)
    big_bf16 = {"k": jnp.full((1024,), 3e4, jnp.bfloat16)}  # its square sum overflows in bf16
    w = adversarial.adaptive_weight(big_bf16, big_bf16, 1.0)
    assert np.isfinite(w) and abs(float(w) - 1.0) < 1e-3
    grad = jax.grad(lambda s: adversarial.adaptive_weight({"k": s * jnp.ones(3)}, ones, 1.0))(2.0)
    assert grad == 0.0  # no gradient flows through the weight


def test_lecam_regularization():
    ema_real, ema_fake = 0.3, -0.2
    expected = (np.maximum(0, REAL - ema_fake) ** 2).mean() + (np.maximum(0, ema_real - FAKE) ** 2).mean()
    np.testing.assert_allclose(adversarial.lecam_regularization(REAL, FAKE, ema_real, ema_fake), expected, rtol=1e-5)


def test_r1_penalty_closed_form():
    # D(x) = sum(a * x) per example has gradient a everywhere: R1 = ||a||^2.
    a = jnp.asarray(rng.normal(size=(1, 3, 3, 2)), jnp.float32)
    disc = lambda x: jnp.sum(a * x, axis=(1, 2, 3))
    images = jnp.asarray(rng.normal(size=(5, 3, 3, 2)), jnp.float32)
    np.testing.assert_allclose(adversarial.r1_penalty(disc, images), float(jnp.sum(a**2)), rtol=1e-5)


def test_codebook_entropy_loss():
    d = rng.uniform(0, 1, size=(6, 5)).astype(np.float32)
    t = 0.5
    logits = -d / t
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    per_vector = (-(p * np.log(p)).sum(1)).mean()
    avg = p.mean(0)
    expected = per_vector - (-(avg * np.log(avg)).sum())
    np.testing.assert_allclose(vq.codebook_entropy_loss(d, t), expected, rtol=1e-5, atol=1e-6)
    # Confident, evenly spread assignments reach the minimum, -log K.
    confident = np.where(np.eye(5, dtype=bool), 0.0, 100.0).astype(np.float32)
    np.testing.assert_allclose(vq.codebook_entropy_loss(confident, 0.01), -np.log(5), rtol=1e-5)
