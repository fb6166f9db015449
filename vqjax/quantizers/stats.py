"""Code statistics: counts, perplexity, usage, and the usage state every codebook keeps for
its health (which codes are alive, when each was last used, which to restart)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from vqjax.quantizers.search import flatten_vectors



def code_counts(indices: jax.Array, num_codes: int, weights: Optional[jax.Array] = None) -> jax.Array:
    """How often each code is used, float32 `[K]` (a segment sum, no one-hot matrix)."""
    flat = jnp.reshape(indices, (-1,))
    ones = jnp.ones(flat.shape, jnp.float32) if weights is None else jnp.reshape(weights, (-1,))
    return jax.ops.segment_sum(ones.astype(jnp.float32), flat, num_segments=num_codes)


def perplexity(counts: jax.Array) -> jax.Array:
    """exp(entropy) of the code distribution given by `counts`: K when all codes are equally used."""
    probs = counts / jnp.maximum(jnp.sum(counts), 1e-12)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
    return jnp.exp(entropy)


def usage_fraction(counts: jax.Array) -> jax.Array:
    """Fraction of codes used at least once."""
    return jnp.mean((counts > 0).astype(jnp.float32))


@struct.dataclass
class CodeUsage:
    """The usage half of a codebook's state, for a codebook learned by loss (an EMA codebook's
    `CodebookState` carries the same two fields).

    `usage` is an EMA of each code's share of the vectors relative to a uniform share (1.0 =
    used as often as 1/K of all vectors, 0 = never), so its scale does not depend on the batch
    size; `last_used` is the step at which each code was last assigned a vector (0 = never).
    """

    usage: jax.Array  # [K] float32
    last_used: jax.Array  # [K] int32

    @classmethod
    def fresh(cls, num_codes: int) -> "CodeUsage":
        return cls(usage=jnp.ones((num_codes,), jnp.float32), last_used=jnp.zeros((num_codes,), jnp.int32))


def update_usage(state, indices: jax.Array, step: jax.Array, *, decay: float = 0.9):
    """Updates `usage` (EMA of each code's share relative to uniform) and `last_used` of
    `state` (a `CodeUsage` or a `CodebookState`).

    Separate from the EMA codebook update because it serves every kind of codebook, and
    because dead-code detection wants a shorter memory than the codebook EMA.
    """
    num_codes = state.usage.shape[0]
    counts = code_counts(indices, num_codes)
    share = counts * (num_codes / jnp.maximum(jnp.sum(counts), 1.0))
    return state.replace(
        usage=decay * state.usage + (1.0 - decay) * share,
        last_used=jnp.where(counts > 0, jnp.asarray(step, jnp.int32), state.last_used),
    )


def dead_codes(usage: jax.Array, threshold: float) -> jax.Array:
    """True for the codes whose usage EMA fell below `threshold` (relative to a uniform share)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"The dead-code threshold is {threshold}; it is a fraction of a uniform code's share "
            "of the vectors and must lie strictly between 0 and 1 (0.03 is a good start)."
        )
    return usage < threshold


def restart_candidates(z: jax.Array, rng: jax.Array, num_codes: int) -> jax.Array:
    """One random vector of `z` per code [K, D]: where a dead code restarts. `rng` must be the
    same on every device (derive it from the step)."""
    flat = flatten_vectors(jax.lax.stop_gradient(z)).astype(jnp.float32)
    picks = jax.random.randint(rng, (num_codes,), 0, flat.shape[0])
    return jnp.take(flat, picks, axis=0)


def recent_usage(state, step: jax.Array, window: int) -> jax.Array:
    """Fraction of codes assigned at least one vector in the steps (step - window, step]."""
    used = (step - state.last_used < window) & (state.last_used > 0)
    return jnp.mean(used.astype(jnp.float32))


def batch_perplexity(indices: jax.Array) -> jax.Array:
    """exp(entropy) of the batch's empirical code distribution, without a [K] count vector:
    the indices are sorted and counted by runs, so memory grows with the number of vectors,
    not with K (2^30 LFQ codes). Equals `stats.perplexity(stats.code_counts(indices, K))`."""
    flat = jnp.sort(jnp.reshape(indices, (-1,)))
    starts_run = jnp.concatenate([jnp.ones((1,), bool), flat[1:] != flat[:-1]])
    run = jnp.cumsum(starts_run.astype(jnp.int32)) - 1
    counts = jax.ops.segment_sum(jnp.ones(flat.shape, jnp.float32), run, num_segments=flat.shape[0])
    return perplexity(counts)
