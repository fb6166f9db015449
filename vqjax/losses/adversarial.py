"""Adversarial losses (hinge, non-saturating, least squares), taming's adaptive weight, the
warm-up switch and the discriminator's regularisers (LeCam, R1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------------------
# Adversarial losses. Logits are patch logits of any shape; every loss is a mean.

GAN_LOSSES = ("hinge", "non_saturating", "least_squares")


def check_gan_loss(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"config.loss.gan_loss is {kind!r}; choose one of {GAN_LOSSES}.")


def discriminator_loss(kind: str, logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator loss, halved as in taming: hinge, non-saturating ('vanilla') or LSGAN."""
    check_gan_loss(kind)
    real, fake = logits_real.astype(jnp.float32), logits_fake.astype(jnp.float32)
    if kind == "hinge":
        terms = jnp.mean(jax.nn.relu(1.0 - real)), jnp.mean(jax.nn.relu(1.0 + fake))
    elif kind == "non_saturating":
        terms = jnp.mean(jax.nn.softplus(-real)), jnp.mean(jax.nn.softplus(fake))
    else:
        terms = jnp.mean(jnp.square(real - 1.0)), jnp.mean(jnp.square(fake))
    return 0.5 * (terms[0] + terms[1])


def generator_loss(kind: str, logits_fake: jax.Array) -> jax.Array:
    """Generator loss: `-E[D(x_hat)]` for hinge (taming's choice), `E[softplus(-D)]` for the
    non-saturating loss, `E[(D - 1)^2] / 2` for least squares."""
    check_gan_loss(kind)
    fake = logits_fake.astype(jnp.float32)
    if kind == "hinge":
        return -jnp.mean(fake)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake))
    return 0.5 * jnp.mean(jnp.square(fake - 1.0))


def warmup_factor(step: jax.Array, start: int) -> jax.Array:
    """1 from `start` on, 0 before it (taming's `adopt_weight`), traced without a Python branch."""
    return (jnp.asarray(step) >= start).astype(jnp.float32)


def adaptive_weight(rec_grads, gan_grads, disc_weight: float, *, max_weight: float = 1e4,
                    eps: float = 1e-4) -> jax.Array:
    """taming's adaptive weight: ||grad rec|| / (||grad gan|| + eps), clipped to [0, max],
    times `disc_weight`, with both gradients taken at the decoder's last layer.

    Norms are computed in float32 (a bf16 square sum overflows); the weight carries no
    gradient, and a non-finite value (a non-finite gradient) becomes 0 rather than NaN.
    """
    def norm(tree):
        leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
        return jnp.sqrt(sum(leaves))

    weight = norm(rec_grads) / (norm(gan_grads) + eps)
    weight = jnp.clip(weight, 0.0, max_weight)
    weight = jnp.where(jnp.isfinite(weight), weight, 0.0)
    return jax.lax.stop_gradient(weight * disc_weight)


# ----------------------------------------------------------------------------------------
# Regularisers.


def lecam_regularization(logits_real: jax.Array, logits_fake: jax.Array,
                         ema_real: jax.Array, ema_fake: jax.Array) -> jax.Array:
    """LeCam regulariser (Tseng et al. 2021, eq. 3): `E[relu(D(x) - a_F)^2] + E[relu(a_R -
    D(G(z)))^2]` with `a_R`, `a_F` EMAs of the mean real and fake logits."""
    real, fake = logits_real.astype(jnp.float32), logits_fake.astype(jnp.float32)
    return (jnp.mean(jnp.square(jax.nn.relu(real - ema_fake)))
            + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake))))


def r1_penalty(discriminator_fn, images: jax.Array) -> jax.Array:
    """R1 (Mescheder et al. 2018): mean over examples of `||grad_x D(x)||^2` on real images.

    Multiply by gamma / 2 for the usual weighting."""
    grads = jax.grad(lambda x: jnp.sum(discriminator_fn(x).astype(jnp.float32)))(images)
    return jnp.mean(jnp.sum(jnp.reshape(jnp.square(grads.astype(jnp.float32)), (grads.shape[0], -1)), -1))
