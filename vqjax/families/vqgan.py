"""The VQGAN family (`config.family='vqgan'`): generator (autoencoder + quantizer) and
discriminator updated in one jit-compiled step, as in taming-transformers'
`VQLPIPSWithDiscriminator`.

Generator loss: `rec + w_p * LPIPS + vq + lambda * f_G(step) * L_G`, with lambda taming's
adaptive weight (gradient norms of the two terms at the decoder's last layer). Discriminator
loss: `f_D(step) * (L_D + w_lecam * LeCam) + gamma / 2 * R1`. The warm-ups f_D and f_G switch
on at `loss.disc_start` and `loss.gen_adv_delay` steps later: with a delay > 0 the
discriminator learns before its signal reaches the generator (taming: no delay).

`TrainState.extra`: the quantizer's state, `disc_params`, `disc_opt_state`,
`disc_batch_stats` ({} unless the discriminator uses batch norm) and `lecam_ema` ([2]: EMAs of
the mean real and fake logits). Batch-norm statistics change only in the discriminator's own
pass (real, then fake, as taming calls it) and only once it trains.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from vqjax import quantizers
from vqjax.core import optim
from vqjax.families.tokenizer import TokenizerFamily, forward, loss_metrics, quantizer_step
from vqjax.losses import adversarial, reconstruction as reconstruction_losses
from vqjax.nets import lpips
from vqjax.nets.build import parse_dtype
from vqjax.nets.discriminator import NLayerDiscriminator
from vqjax.train.state import TrainState


def last_decoder_layer(grads: Any) -> Any:
    """The kernel of the decoder's output convolution (taming's `decoder.conv_out.weight`),
    where the adaptive weight is measured."""
    try:
        return grads["decoder"]["conv_out"]["kernel"]
    except (KeyError, TypeError):
        raise ValueError("The adaptive GAN weight needs a decoder whose last layer is "
                         "`decoder/conv_out` (the VQGAN autoencoder, model.name='vqgan').") from None


def check_loss_config(lcfg) -> None:
    adversarial.check_gan_loss(lcfg.gan_loss)
    if lcfg.gen_adv_delay < 0:
        raise ValueError(
            f"config.loss.gen_adv_delay is {lcfg.gen_adv_delay}; it counts the steps the "
            "discriminator trains before its signal reaches the generator, 0 or more."
        )


def build_discriminator(disc_cfg) -> NLayerDiscriminator:
    fields = dict(disc_cfg)
    dtype = parse_dtype(fields.pop("dtype", "float32"), "config.disc.dtype")
    return NLayerDiscriminator(dtype=dtype, **fields)


class VQGANFamily(TokenizerFamily):
    """Reads `config.disc`, `config.optim_d` and `config.loss` besides the tokenizer's
    sections. `perceptual_params` replaces the LPIPS weights of `loss.lpips_path`
    (benchmarks time the step with random ones)."""

    name = "vqgan"
    watched = ("loss", "grad_norm", "d_loss", "disc_grad_norm")
    progress = {"loss": "loss", "d_loss": "d", "adaptive_weight": "w", "perplexity": "ppl",
                "codes_used_recent": "used"}
    final_train_metrics = ("g_loss", "d_loss")
    init_from_extra = {"quantizer": True, "disc_params": False, "disc_batch_stats": False}

    def __init__(self, config, *, mesh, workdir: str = "", perceptual_params: Any = None):
        super().__init__(config, mesh=mesh, workdir=workdir)
        self.lcfg = config.loss
        check_loss_config(self.lcfg)
        self.disc = build_discriminator(config.disc)
        global_batch = int(config.data.batch_size)
        self.tx_d = optim.make_optimizer(config.optim_d, self.num_steps, global_batch)
        self.schedules = {**self.schedules,
                          "learning_rate_d": optim.make_schedule(config.optim_d, self.num_steps, global_batch)}
        self.pixel_loss = reconstruction_losses.pixel_loss(self.lcfg.reconstruction)
        self.perceptual = None
        if self.lcfg.perceptual_weight > 0:
            self.perceptual = lpips.LPIPS()
            if perceptual_params is None:
                perceptual_params = lpips.load_params(self.lcfg.lpips_path)
        self.frozen = (perceptual_params,)
        # Before the first step: a decoder without `conv_out` cannot take the adaptive weight.
        if self.lcfg.adaptive_weight:
            shapes = jax.eval_shape(self.model.init, jax.random.key(0),
                                    jnp.zeros((1, config.data.image_size, config.data.image_size,
                                               config.data.channels)))
            last_decoder_layer(shapes["params"])

    def create(self, rng: jax.Array, batch: dict) -> TrainState:
        model_rng, disc_rng = jax.random.split(rng)
        state = self.create_base(model_rng, batch)
        variables = self.disc.init(disc_rng, batch["image"])
        disc_params = variables["params"]
        return state.replace(extra={
            **state.extra,
            "disc_params": disc_params,
            "disc_opt_state": self.tx_d.init(disc_params),
            "disc_batch_stats": variables.get("batch_stats", {}),
            "lecam_ema": jnp.zeros((2,), jnp.float32),
        })

    def run_disc(self, params, batch_stats, images):
        """Discriminator in training mode: logits and the batch statistics it would store."""
        if getattr(self.disc, "norm", None) != "batch":
            return self.disc.apply({"params": params}, images, train=True), batch_stats
        logits, updates = self.disc.apply({"params": params, "batch_stats": batch_stats}, images,
                                          train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]

    def reconstruction_terms(self, reconstruction, images, perceptual_params):
        """taming's nll: mean of |x - x'| + w_p * LPIPS(x, x')."""
        pixel = jnp.mean(self.pixel_loss(reconstruction, images))
        p_loss = jnp.zeros(())
        if self.lcfg.perceptual_weight > 0:
            p_loss = jnp.mean(self.perceptual.apply({"params": perceptual_params}, images, reconstruction))
        return pixel + self.lcfg.perceptual_weight * p_loss, (pixel, p_loss)

    def train_step(self, state: TrainState, batch: dict, perceptual_params: Any = None) -> tuple[TrainState, dict]:
        lcfg, extra = self.lcfg, state.extra
        images = batch["image"]
        rng = state.step_rng()

        def generator_forward(params):
            """(reconstruction, vq loss), with the codes as auxiliary outputs."""
            reconstruction, z, out = forward(self.model, self.quantizer, params, extra["quantizer"], images,
                                             train=True, rng=jax.random.fold_in(rng, 0))
            return (reconstruction, quantizers.total_loss(out.losses)), (z, out)

        def adversarial_term(reconstruction):
            # The generator's pass leaves the discriminator's statistics alone.
            logits_fake, _ = self.run_disc(extra["disc_params"], extra["disc_batch_stats"], reconstruction)
            return adversarial.generator_loss(lcfg.gan_loss, logits_fake)

        # --- Generator: one forward and one full backward pass. Both loss terms are
        # differentiated up to the reconstruction only; pulled back to the decoder's last
        # layer for the adaptive weight (XLA drops the rest of those two backward passes as
        # dead code), and once, combined, through the whole network.
        (reconstruction, vq), pull_back, (z, out) = jax.vjp(generator_forward, state.params, has_aux=True)
        (rec, (pixel_loss, p_loss)), rec_cotangent = jax.value_and_grad(
            self.reconstruction_terms, has_aux=True)(reconstruction, images, perceptual_params)
        g_adv, adv_cotangent = jax.value_and_grad(adversarial_term)(reconstruction)
        no_vq = jnp.zeros_like(vq)
        if lcfg.adaptive_weight:
            (rec_grads,) = pull_back((rec_cotangent, no_vq))
            (adv_grads,) = pull_back((adv_cotangent, no_vq))
            d_weight = adversarial.adaptive_weight(last_decoder_layer(rec_grads["net"]),
                                                   last_decoder_layer(adv_grads["net"]), lcfg.disc_weight)
        else:
            d_weight = jnp.float32(lcfg.disc_weight)
        g_factor = adversarial.warmup_factor(state.step, lcfg.disc_start + lcfg.gen_adv_delay)
        adv_scale = d_weight * g_factor
        (g_grads,) = pull_back((rec_cotangent + adv_scale * adv_cotangent, jnp.ones_like(vq)))
        updates, opt_state = self.tx.update(g_grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        # --- Discriminator, on the reconstructions of this step (no gradient to G).
        d_factor = adversarial.warmup_factor(state.step, lcfg.disc_start)
        fake = jax.lax.stop_gradient(reconstruction)

        def d_loss_fn(disc_params):
            logits_real, stats = self.run_disc(disc_params, extra["disc_batch_stats"], images)
            logits_fake, stats = self.run_disc(disc_params, stats, fake)
            d_loss = adversarial.discriminator_loss(lcfg.gan_loss, logits_real, logits_fake)
            total = d_factor * d_loss
            lecam = jnp.zeros(())
            if lcfg.lecam_weight > 0:
                lecam = adversarial.lecam_regularization(logits_real, logits_fake, *extra["lecam_ema"])
                total = total + d_factor * lcfg.lecam_weight * lecam
            r1 = jnp.zeros(())
            if lcfg.r1_gamma > 0:
                r1 = adversarial.r1_penalty(
                    lambda x: self.run_disc(disc_params, extra["disc_batch_stats"], x)[0], images)
                total = total + d_factor * 0.5 * lcfg.r1_gamma * r1
            return total, (logits_real, logits_fake, stats, d_loss, lecam, r1)

        (_, (logits_real, logits_fake, new_stats, d_loss, lecam, r1)), d_grads = (
            jax.value_and_grad(d_loss_fn, has_aux=True)(extra["disc_params"]))
        d_updates, disc_opt_state = self.tx_d.update(d_grads, extra["disc_opt_state"], extra["disc_params"])
        active = d_factor > 0
        # Before disc_start nothing of the discriminator moves, statistics and moments included.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
        means = jnp.stack([jnp.mean(logits_real), jnp.mean(logits_fake)]).astype(jnp.float32)
        disc_extra = {
            "disc_params": keep(optax.apply_updates(extra["disc_params"], d_updates), extra["disc_params"]),
            "disc_opt_state": keep(disc_opt_state, extra["disc_opt_state"]),
            "disc_batch_stats": keep(new_stats, extra["disc_batch_stats"]),
            "lecam_ema": jnp.where(active, lcfg.lecam_decay * extra["lecam_ema"] + (1 - lcfg.lecam_decay) * means,
                                   extra["lecam_ema"]),
        }

        # --- Quantizer (outside jax.grad).
        step = state.step + 1
        params, quantizer_state, quantizer_metrics = quantizer_step(
            self.quantizer, params, extra["quantizer"], z, out, step, jax.random.fold_in(rng, 1))

        g_loss = rec + vq + adv_scale * g_adv
        metrics = {
            "loss": g_loss,
            "g_loss": g_loss,
            "d_loss": d_factor * d_loss,
            "recon_loss": rec,  # pixel + perceptual_weight * perceptual
            "pixel_loss": pixel_loss,
            "perceptual_loss": p_loss,
            "vq_loss": vq,
            **loss_metrics(out.losses),
            "g_adv_loss": g_adv,
            "adaptive_weight": d_weight,
            "logits_real": means[0],
            "logits_fake": means[1],
            "lecam": lecam,
            "r1": r1,
            **out.metrics,
            **quantizer_metrics,
            "grad_norm": optax.global_norm(g_grads),
            "disc_grad_norm": optax.global_norm(d_grads),
        }
        new_state = state.replace(
            step=step, params=params, opt_state=opt_state,
            extra={**extra, "quantizer": quantizer_state, **disc_extra},
            ema_params=optim.update_ema_params(state.ema_params, params, self.params_ema_decay))
        return new_state, metrics
