"""The VQGAN train step: generator (autoencoder + codebook) and discriminator updated in one
jit-compiled function, as in taming-transformers' `VQLPIPSWithDiscriminator`.

Generator loss: `rec + w_p * LPIPS + vq + lambda * f_G(step) * L_G`, with lambda taming's
adaptive weight (gradient norms of the two terms at the decoder's last layer). Discriminator
loss: `f_D(step) * (L_D + w_lecam * LeCam) + gamma / 2 * R1`. The warm-ups f_D and f_G switch
on at `loss.disc_start` and `loss.gen_adv_delay` steps later: with a delay > 0 the
discriminator learns before its signal reaches the generator (taming: no delay).

Batch-norm statistics of the discriminator are explicit state; they change only in the
discriminator's own pass (real, then fake, as taming calls it) and only once it trains.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from vqjax import losses, quantizers
from vqjax.nets.discriminator import NLayerDiscriminator
from vqjax.state import TrainState, is_learned_codebook, trainable, update_ema_params
from vqjax.steps import forward, parse_dtype, update_codebook


@struct.dataclass
class GANTrainState(TrainState):
    """`TrainState` plus the discriminator and the LeCam anchors."""

    disc_params: Any = None
    disc_opt_state: Any = None
    disc_batch_stats: Any = None  # {} unless the discriminator uses batch norm
    lecam_ema: jax.Array = None  # [2]: EMAs of the mean real and fake logits


def last_decoder_layer(grads: Any) -> Any:
    """The kernel of the decoder's output convolution (taming's `decoder.conv_out.weight`),
    where the adaptive weight is measured."""
    try:
        return grads["decoder"]["conv_out"]["kernel"]
    except (KeyError, TypeError):
        raise ValueError("The adaptive GAN weight needs a decoder whose last layer is "
                         "`decoder/conv_out` (the VQGAN autoencoder, model.name='vqgan').") from None


def check_loss_config(lcfg) -> None:
    losses.check_gan_loss(lcfg.gan_loss)
    if lcfg.gen_adv_delay < 0:
        raise ValueError(
            f"config.loss.gen_adv_delay is {lcfg.gen_adv_delay}; it counts the steps the "
            "discriminator trains before its signal reaches the generator, 0 or more."
        )


def build_discriminator(disc_cfg) -> NLayerDiscriminator:
    fields = dict(disc_cfg)
    dtype = parse_dtype(fields.pop("dtype", "float32"), "config.disc.dtype")
    return NLayerDiscriminator(dtype=dtype, **fields)


def init_gan_state(base_state: TrainState, disc: nn.Module, tx_d: optax.GradientTransformation,
                   rng: jax.Array, images: jax.Array) -> GANTrainState:
    """Adds a fresh discriminator to `base_state` (the autoencoder and codebook)."""
    variables = disc.init(rng, images)
    disc_params = variables["params"]
    return GANTrainState(
        **{f: getattr(base_state, f)
           for f in ("step", "seed", "params", "opt_state", "codebook", "ema_params")},
        disc_params=disc_params,
        disc_opt_state=tx_d.init(disc_params),
        disc_batch_stats=variables.get("batch_stats", {}),
        lecam_ema=jnp.zeros((2,), jnp.float32),
    )


def make_gan_train_step(config, model: nn.Module, disc: nn.Module,
                        tx_g: optax.GradientTransformation,
                        tx_d: optax.GradientTransformation,
                        perceptual: nn.Module | None = None) -> Callable:
    """`train_step(state, batch, perceptual_params=None) -> (state, metrics)`.

    `perceptual` (an `LPIPS` module) is needed when `config.loss.perceptual_weight > 0`; its
    frozen weights are an argument rather than a closure, so they are not baked into the
    compiled program as constants.
    """
    lcfg, qcfg = config.loss, config.quantizer
    check_loss_config(lcfg)
    if lcfg.perceptual_weight > 0 and perceptual is None:
        raise ValueError("config.loss.perceptual_weight > 0 but no LPIPS network was given to "
                         "the train step; load one with vqjax.nets.lpips.load_params.")
    ema_decay = float(config.optim.get("params_ema_decay", 0.0))
    learned = is_learned_codebook(qcfg)
    reconstruction_loss = losses.reconstruction_loss(lcfg.reconstruction)
    uses_batch_stats = getattr(disc, "norm", None) == "batch"

    def run_disc(params, batch_stats, images):
        """Discriminator in training mode: logits and the batch statistics it would store."""
        if not uses_batch_stats:
            return disc.apply({"params": params}, images, train=True), batch_stats
        logits, updates = disc.apply({"params": params, "batch_stats": batch_stats}, images,
                                     train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    def generator_forward(weights, state, images, rng):
        """(reconstruction, vq loss), with the codes as auxiliary outputs."""
        codebook = weights["codebook"] if learned else state.codebook.embedding
        reconstruction, z, q = forward(model, weights["net"], codebook, images, train=True, rng=rng)
        codebook_term = q.codebook_loss if learned else jnp.zeros_like(q.codebook_loss)
        vq = losses.vq_loss(codebook_term, q.commitment_loss, qcfg.beta, lcfg.legacy_beta)
        return (reconstruction, vq), (z, q.indices)

    def reconstruction_terms(reconstruction, images, perceptual_params):
        """taming's nll: mean of |x - x'| + w_p * LPIPS(x, x')."""
        pixel = jnp.mean(reconstruction_loss(reconstruction, images))
        p_loss = jnp.zeros(())
        if lcfg.perceptual_weight > 0:
            p_loss = jnp.mean(perceptual.apply({"params": perceptual_params}, images, reconstruction))
        return pixel + lcfg.perceptual_weight * p_loss, (pixel, p_loss)

    def adversarial_term(reconstruction, state):
        # The generator's pass leaves the discriminator's statistics alone.
        logits_fake, _ = run_disc(state.disc_params, state.disc_batch_stats, reconstruction)
        return losses.generator_loss(lcfg.gan_loss, logits_fake)

    def train_step(state: GANTrainState, batch: dict,
                   perceptual_params: Any = None) -> tuple[GANTrainState, dict]:
        images = batch["image"]
        rng = state.step_rng()
        weights = trainable(state.params, state.codebook, learned)

        # --- Generator: one forward and one full backward pass. Both loss terms are
        # differentiated up to the reconstruction only; pulled back to the decoder's last
        # layer for the adaptive weight (XLA drops the rest of those two backward passes as
        # dead code), and once, combined, through the whole network.
        (reconstruction, vq), pull_back, (z, indices) = jax.vjp(
            lambda w: generator_forward(w, state, images, jax.random.fold_in(rng, 0)),
            weights, has_aux=True)
        (rec, (pixel_loss, p_loss)), rec_cotangent = jax.value_and_grad(
            reconstruction_terms, has_aux=True)(reconstruction, images, perceptual_params)
        g_adv, adv_cotangent = jax.value_and_grad(adversarial_term)(reconstruction, state)
        no_vq = jnp.zeros_like(vq)
        if lcfg.adaptive_weight:
            (rec_grads,) = pull_back((rec_cotangent, no_vq))
            (adv_grads,) = pull_back((adv_cotangent, no_vq))
            d_weight = losses.adaptive_weight(last_decoder_layer(rec_grads["net"]),
                                              last_decoder_layer(adv_grads["net"]), lcfg.disc_weight)
        else:
            d_weight = jnp.float32(lcfg.disc_weight)
        g_factor = losses.warmup_factor(state.step, lcfg.disc_start + lcfg.gen_adv_delay)
        adv_scale = d_weight * g_factor
        (g_grads,) = pull_back((rec_cotangent + adv_scale * adv_cotangent, jnp.ones_like(vq)))
        updates, opt_state = tx_g.update(g_grads, state.opt_state, weights)
        weights = optax.apply_updates(weights, updates)

        # --- Discriminator, on the reconstructions of this step (no gradient to G).
        d_factor = losses.warmup_factor(state.step, lcfg.disc_start)
        fake = jax.lax.stop_gradient(reconstruction)

        def d_loss_fn(disc_params):
            logits_real, stats = run_disc(disc_params, state.disc_batch_stats, images)
            logits_fake, stats = run_disc(disc_params, stats, fake)
            d_loss = losses.discriminator_loss(lcfg.gan_loss, logits_real, logits_fake)
            total = d_factor * d_loss
            lecam = jnp.zeros(())
            if lcfg.lecam_weight > 0:
                lecam = losses.lecam_regularization(logits_real, logits_fake, *state.lecam_ema)
                total = total + d_factor * lcfg.lecam_weight * lecam
            r1 = jnp.zeros(())
            if lcfg.r1_gamma > 0:
                r1 = losses.r1_penalty(lambda x: run_disc(disc_params, state.disc_batch_stats, x)[0], images)
                total = total + d_factor * 0.5 * lcfg.r1_gamma * r1
            return total, (logits_real, logits_fake, stats, d_loss, lecam, r1)

        (_, (logits_real, logits_fake, new_stats, d_loss, lecam, r1)), d_grads = (
            jax.value_and_grad(d_loss_fn, has_aux=True)(state.disc_params))
        d_updates, disc_opt_state = tx_d.update(d_grads, state.disc_opt_state, state.disc_params)
        active = d_factor > 0
        # Before disc_start nothing of the discriminator moves, statistics and moments included.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
        disc_params = keep(optax.apply_updates(state.disc_params, d_updates), state.disc_params)
        disc_opt_state = keep(disc_opt_state, state.disc_opt_state)
        disc_batch_stats = keep(new_stats, state.disc_batch_stats)
        means = jnp.stack([jnp.mean(logits_real), jnp.mean(logits_fake)]).astype(jnp.float32)
        lecam_ema = jnp.where(active, lcfg.lecam_decay * state.lecam_ema + (1 - lcfg.lecam_decay) * means,
                              state.lecam_ema)

        # --- Codebook (outside jax.grad).
        step = state.step + 1
        codebook, num_restarted = update_codebook(
            state.codebook, weights["codebook"] if learned else None, z, indices, step,
            jax.random.fold_in(rng, 1), qcfg)

        counts = quantizers.code_counts(indices, qcfg.num_codes)
        g_loss = rec + vq + adv_scale * g_adv
        metrics = {
            "loss": g_loss,
            "g_loss": g_loss,
            "d_loss": d_factor * d_loss,
            "recon_loss": rec,  # pixel + perceptual_weight * perceptual
            "pixel_loss": pixel_loss,
            "perceptual_loss": p_loss,
            "vq_loss": vq,
            "g_adv_loss": g_adv,
            "adaptive_weight": d_weight,
            "logits_real": means[0],
            "logits_fake": means[1],
            "lecam": lecam,
            "r1": r1,
            "perplexity": quantizers.perplexity(counts),
            "codes_used_recent": quantizers.recent_usage(codebook, step, qcfg.usage_window),
            "codes_restarted": num_restarted.astype(jnp.float32),
            "grad_norm": optax.global_norm(g_grads),
            "disc_grad_norm": optax.global_norm(d_grads),
        }
        new_state = state.replace(
            step=step, params=weights["net"], opt_state=opt_state, codebook=codebook,
            ema_params=update_ema_params(state.ema_params, weights["net"], ema_decay),
            disc_params=disc_params, disc_opt_state=disc_opt_state,
            disc_batch_stats=disc_batch_stats, lecam_ema=lecam_ema)
        return new_state, metrics

    return train_step
