"""The vector-quantization loss (van den Oord et al. 2017, eq. 3): its two terms per vector
and their weighting, for every nearest-code quantizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def codebook_and_commitment_losses(z: jax.Array, z_q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-vector `(||sg[z] - e||^2, ||z - sg[e]||^2)`, averaged over the code dimension.

    The first trains the codebook, the second (times beta) the encoder: the two last terms
    of eq. 3 of van den Oord et al. Shapes are `z.shape[:-1]`.
    """
    z = z.astype(jnp.float32)
    z_q = z_q.astype(jnp.float32)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - z_q), axis=-1)
    commitment_loss = jnp.mean(jnp.square(z - jax.lax.stop_gradient(z_q)), axis=-1)
    return codebook_loss, commitment_loss


def vq_loss_terms(codebook_loss: jax.Array, commitment_loss: jax.Array, *, beta: float,
                  legacy: bool = False, learned_codebook: bool = True) -> dict:
    """The weighted terms `{'commitment': beta ||z - sg[e]||^2, 'codebook': ||sg[z] - e||^2}`
    (means over vectors); the codebook term only for a codebook learned by loss (an EMA
    codebook moves by its statistics instead).

    `legacy=True` is taming's `VectorQuantizer2(legacy=True)` placement, the one its released
    checkpoints were trained with: beta on the codebook term instead.
    """
    commitment_weight, codebook_weight = (1.0, beta) if legacy else (beta, 1.0)
    terms = {"commitment": commitment_weight * jnp.mean(commitment_loss)}
    if learned_codebook:
        terms["codebook"] = codebook_weight * jnp.mean(codebook_loss)
    return terms


def codebook_entropy_loss(squared_distances: jax.Array, temperature: float = 0.01) -> jax.Array:
    """Entropy penalty on soft code assignments (as in MaskGIT/MAGVIT): the mean per-vector
    entropy minus the entropy of the average assignment. Minimising it makes each vector
    confident and the codebook as a whole evenly used. `squared_distances` is `[N, K]`."""
    logits = -squared_distances.astype(jnp.float32) / temperature
    probs = jax.nn.softmax(logits, axis=-1)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    per_vector = jnp.mean(-jnp.sum(probs * log_probs, axis=-1))
    average = jnp.mean(probs, axis=0)
    codebook = -jnp.sum(average * jnp.log(jnp.maximum(average, 1e-30)))
    return per_vector - codebook
