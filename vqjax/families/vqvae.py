"""The VQ-VAE family (`config.family='vqvae'`): an autoencoder and a quantizer trained on a
reconstruction loss plus the quantizer's loss terms (van den Oord et al. 2017, eq. 3).

`train_step(state, batch) -> (state, metrics)`: one gradient step of the network and the
quantizer's parameters, then, outside the gradient, the quantizer's update (EMA statistics,
usage, dead-code restarts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vqjax import quantizers
from vqjax.core import optim
from vqjax.families.tokenizer import TokenizerFamily, forward, loss_metrics, quantizer_step
from vqjax.losses import reconstruction as reconstruction_losses
from vqjax.train.state import TrainState


class VQVAEFamily(TokenizerFamily):
    name = "vqvae"

    def __init__(self, config, *, mesh, workdir: str = ""):
        super().__init__(config, mesh=mesh, workdir=workdir)
        self.reconstruction_loss = reconstruction_losses.pixel_loss(config.loss.reconstruction)

    def create(self, rng: jax.Array, batch: dict) -> TrainState:
        return self.create_base(rng, batch)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        model, quantizer = self.model, self.quantizer
        images = batch["image"]
        rng = state.step_rng()

        def loss_fn(params):
            reconstruction, z, out = forward(model, quantizer, params, state.extra["quantizer"], images,
                                             train=True, rng=jax.random.fold_in(rng, 0))
            recon = jnp.mean(self.reconstruction_loss(reconstruction, images))
            return recon + quantizers.total_loss(out.losses), (z, out, recon)

        (loss, (z, out, recon)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        step = state.step + 1  # steps done after this one; 0 in `last_used` means never
        params, quantizer_state, quantizer_metrics = quantizer_step(
            quantizer, params, state.extra["quantizer"], z, out, step, jax.random.fold_in(rng, 1))
        metrics = {"loss": loss, "recon_loss": recon, **loss_metrics(out.losses), **out.metrics,
                   **quantizer_metrics, "grad_norm": optax.global_norm(grads)}
        new_state = state.replace(
            step=step, params=params, opt_state=opt_state, extra={**state.extra, "quantizer": quantizer_state},
            ema_params=optim.update_ema_params(state.ema_params, params, self.params_ema_decay))
        return new_state, metrics
