"""Pure train step for the VQ-VAE family, and the model builder, codebook update and
reconstruction that the VQGAN family (gan.py) and evaluation (evaluation.py) share.

`train_step(state, batch) -> (state, metrics)`: one gradient step of the encoder/decoder
(and of the codebook when it is learned by loss), then, outside `jax.grad`, the EMA update of
the codebook and the restart of dead codes. Metrics are a flat dict of float32 scalars.
The functions close over the model, the optimizer and plain config values, so the trainer
compiles each of them once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vqjax import losses, quantizers
from vqjax.nets.autoencoder import VQAutoencoder
from vqjax.nets.vqvae import VQVAE
from vqjax.state import (TrainState, init_ema_params, is_learned_codebook, trainable,
                         update_ema_params)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODELS = {"vqvae": VQVAE, "vqgan": VQAutoencoder}


def parse_dtype(name: str, field: str = "config.model.dtype") -> jnp.dtype:
    if name not in DTYPES:
        raise ValueError(f"{field} is {name!r}; use one of {sorted(DTYPES)}.")
    return DTYPES[name]


def build_model(model_cfg):
    """The network named by `config.model.name` (its other fields splatted into the
    constructor): 'vqvae' (van den Oord et al.) or 'vqgan' (taming's autoencoder)."""
    fields = dict(model_cfg)
    name = fields.pop("name", "vqvae")
    if name not in MODELS:
        raise ValueError(f"config.model.name is {name!r}; use one of {sorted(MODELS)}.")
    dtype = parse_dtype(fields.pop("dtype", "float32"))
    try:
        return MODELS[name](dtype=dtype, **fields)
    except TypeError as err:  # an unknown field: the TypeError names it
        raise ValueError(f"config.model does not fit model {name!r} ({err}).") from None


def downsampling_factor(model) -> int:
    """Image side / code-map side."""
    if isinstance(model, VQAutoencoder):
        return 2 ** (len(model.ch_mult) - 1)
    return 2 ** model.num_downsamples


def init_state(config, model, tx: optax.GradientTransformation, rng: jax.Array,
               images: jax.Array) -> TrainState:
    """A fresh TrainState; with `quantizer.init='kmeans++'` the codebook is fitted to the
    encoder outputs of `images` (the first training batch)."""
    qcfg = config.quantizer
    net_rng, codebook_rng = jax.random.split(rng)
    params = model.init(net_rng, images)["params"]
    if qcfg.init == "uniform":
        embedding = quantizers.uniform_codebook(codebook_rng, qcfg.num_codes, model.embed_dim)
    elif qcfg.init == "kmeans++":
        z = model.apply({"params": params}, images, method="encode")
        embedding = quantizers.init_codebook_from_data(
            z, qcfg.num_codes, codebook_rng, kmeans_iters=qcfg.kmeans_iters)
    else:
        raise ValueError(f"config.quantizer.init is {qcfg.init!r}; use 'uniform' or 'kmeans++'.")
    codebook = quantizers.CodebookState.from_embedding(embedding, qcfg.initial_count)
    learned = is_learned_codebook(qcfg)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        seed=jnp.asarray(config.seed, jnp.uint32),
        params=params,
        opt_state=tx.init(trainable(params, codebook, learned)),
        codebook=codebook,
        ema_params=init_ema_params(params, config.optim.get("params_ema_decay", 0.0)),
    )


def forward(model, params: Any, codebook: jax.Array, images: jax.Array, *,
            train: bool = False, rng: jax.Array | None = None):
    """encode -> quantize (straight-through) -> decode, for any model with encode/decode."""
    rngs = {"dropout": rng} if rng is not None else {}
    z = model.apply({"params": params}, images, train=train, method="encode", rngs=rngs)
    quantized = quantizers.quantize(z, codebook)
    reconstruction = model.apply({"params": params}, quantized.quantized, train=train,
                                 method="decode", rngs=rngs)
    return reconstruction, z, quantized


def update_codebook(codebook: quantizers.CodebookState, learned_embedding, z: jax.Array,
                    indices: jax.Array, step: jax.Array, rng: jax.Array, qcfg):
    """After the gradient step: EMA update (or the optimizer's new embedding), usage
    statistics, dead-code restarts. Returns (codebook, number of codes restarted)."""
    if learned_embedding is not None:
        codebook = codebook.replace(embedding=learned_embedding)
    else:
        codebook = quantizers.ema_update(
            codebook, z, indices, decay=qcfg.decay, epsilon=qcfg.epsilon, debias=qcfg.debias)
    codebook = quantizers.update_usage(codebook, indices, step, decay=qcfg.usage_decay)
    if qcfg.dead_code_threshold <= 0:
        return codebook, jnp.zeros((), jnp.int32)
    # For a learned codebook this moves the parameter too: the optimizer reads the embedding
    # from `codebook` at the next step.
    return quantizers.restart_dead_codes(codebook, z, rng, threshold=qcfg.dead_code_threshold,
                                         reset_count=qcfg.initial_count)


def make_train_step(config, model, tx: optax.GradientTransformation) -> Callable:
    qcfg = config.quantizer
    ema_decay = float(config.optim.get("params_ema_decay", 0.0))
    learned = is_learned_codebook(qcfg)
    reconstruction_loss = losses.reconstruction_loss(config.loss.reconstruction)
    beta = float(qcfg.beta)

    def loss_fn(weights, codebook_state, images):
        codebook = weights["codebook"] if learned else codebook_state.embedding
        reconstruction, z, q = forward(model, weights["net"], codebook, images)
        recon = jnp.mean(reconstruction_loss(reconstruction, images))
        commitment = jnp.mean(q.commitment_loss)
        codebook_loss = jnp.mean(q.codebook_loss)
        loss = recon + beta * commitment + (codebook_loss if learned else 0.0)
        return loss, (z, q.indices, recon, commitment, codebook_loss)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        weights = trainable(state.params, state.codebook, learned)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (z, indices, recon, commitment, codebook_loss)), grads = grad_fn(
            weights, state.codebook, batch["image"])
        updates, opt_state = tx.update(grads, state.opt_state, weights)
        weights = optax.apply_updates(weights, updates)

        step = state.step + 1  # steps done after this one; 0 in `last_used` means never
        codebook, num_restarted = update_codebook(
            state.codebook, weights["codebook"] if learned else None, z, indices, step,
            jax.random.fold_in(state.step_rng(), 1), qcfg)

        counts = quantizers.code_counts(indices, qcfg.num_codes)
        metrics = {
            "loss": loss,
            "recon_loss": recon,
            "commitment_loss": commitment,
            "codebook_loss": codebook_loss,
            "perplexity": quantizers.perplexity(counts),
            "codes_used_recent": quantizers.recent_usage(codebook, step, qcfg.usage_window),
            "codes_restarted": num_restarted.astype(jnp.float32),
            "grad_norm": optax.global_norm(grads),
        }
        new_state = state.replace(
            step=step, params=weights["net"], opt_state=opt_state, codebook=codebook,
            ema_params=update_ema_params(state.ema_params, weights["net"], ema_decay))
        return new_state, metrics

    return train_step


def make_reconstruct(model) -> Callable:
    """`reconstruct(weights, images) -> (reconstruction, code indices)` with weights
    `(params, codebook embedding)` (`eval_weights(state)`): the function evaluation runs."""

    def reconstruct(weights, images: jax.Array):
        params, codebook = weights
        reconstruction, _, q = forward(model, params, codebook, images)
        return reconstruction, q.indices

    return reconstruct


def eval_weights(state: TrainState) -> tuple:
    """What evaluation and reconstructions use: the weight average when kept, and the codebook."""
    return state.eval_params, state.codebook.embedding
