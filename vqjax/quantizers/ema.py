"""The EMA codebook (van den Oord et al. 2017, appendix A.1): codes moved by exponential
moving averages of the vectors assigned to them, as explicit state outside the gradient."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from vqjax.losses.vq import vq_loss_terms
from vqjax.quantizers import stats
from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers.init import initial_codebook
from vqjax.quantizers.search import check_gradient_estimator, flatten_vectors, lookup, quantize
from vqjax.quantizers.stats import code_counts, dead_codes, restart_candidates




@struct.dataclass
class CodebookState:
    """An EMA codebook and its statistics: the quantizer's state, outside the gradient.

    `cluster_size` and `embed_sum` are the exponential moving averages of the per-step code
    counts and of the summed vectors assigned to each code (the biased averages when
    `ema_update(..., debias=True)` is used); `num_updates` counts `ema_update` calls.
    `usage` and `last_used` are the codebook's health statistics (`stats.CodeUsage`).
    """

    embedding: jax.Array  # [K, D] float32
    cluster_size: jax.Array  # [K] float32
    embed_sum: jax.Array  # [K, D] float32
    num_updates: jax.Array  # [] int32
    usage: jax.Array  # [K] float32
    last_used: jax.Array  # [K] int32

    @classmethod
    def from_embedding(cls, embedding: jax.Array, initial_count: float = 1.0) -> "CodebookState":
        """A fresh state whose statistics agree with `embedding`.

        Every code starts as if it had been assigned `initial_count` vectors equal to itself,
        so `embed_sum / cluster_size` is the embedding: a code that is not used keeps its
        place instead of being blown up (zero counts, taming's EMA quantizer) or zeroed
        (zero sums, haiku's on the first step). `initial_count=0` gives haiku's state.
        """
        embedding = jnp.asarray(embedding, jnp.float32)
        num_codes = embedding.shape[0]
        return cls(
            embedding=embedding,
            cluster_size=jnp.full((num_codes,), initial_count, jnp.float32),
            embed_sum=embedding * initial_count,
            num_updates=jnp.zeros((), jnp.int32),
            usage=jnp.ones((num_codes,), jnp.float32),
            last_used=jnp.zeros((num_codes,), jnp.int32),
        )

    @property
    def num_codes(self) -> int:
        return self.embedding.shape[0]


def laplace_smoothing(cluster_size: jax.Array, epsilon: float) -> jax.Array:
    """`(c_k + eps) / (n + K eps) * n`: no code has a zero count, the total stays n."""
    total = jnp.sum(cluster_size)
    num_codes = cluster_size.shape[0]
    return (cluster_size + epsilon) / (total + num_codes * epsilon) * total


def ema_update(
    state: CodebookState,
    z: jax.Array,
    indices: jax.Array,
    *,
    decay: float,
    epsilon: float = 1e-5,
    debias: bool = False,
) -> CodebookState:
    """One EMA step of the codebook (van den Oord et al., appendix A.1), a pure function.

    Call it outside `jax.grad`; the statistics are under `stop_gradient`. With `z` a global
    array sharded over devices, the sums below are global sums, so the result does not
    depend on the number of devices.

    `debias=True` keeps the biased averages in the state and normalises them by
    `1 - decay**t` before use, exactly as `hk.nets.VectorQuantizerEMA` does (start that
    mode from `from_embedding(e, initial_count=0)` to reproduce haiku).
    """
    z = flatten_vectors(jax.lax.stop_gradient(z)).astype(jnp.float32)
    flat_indices = jnp.reshape(indices, (-1,))
    counts = code_counts(flat_indices, state.num_codes)
    sums = jax.ops.segment_sum(z, flat_indices, num_segments=state.num_codes)

    cluster_size = decay * state.cluster_size + (1.0 - decay) * counts
    embed_sum = decay * state.embed_sum + (1.0 - decay) * sums
    num_updates = state.num_updates + 1

    if debias:
        correction = 1.0 - jnp.power(jnp.float32(decay), num_updates.astype(jnp.float32))
        average_size, average_sum = cluster_size / correction, embed_sum / correction
    else:
        average_size, average_sum = cluster_size, embed_sum
    embedding = average_sum / laplace_smoothing(average_size, epsilon)[:, None]

    return state.replace(
        embedding=embedding,
        cluster_size=cluster_size,
        embed_sum=embed_sum,
        num_updates=num_updates,
    )


def reset_codes(state: CodebookState, dead: jax.Array, candidates: jax.Array,
                reset_count: float) -> CodebookState:
    """Codes where `dead` restart at `candidates` [K, D] with the statistics of a fresh code
    there (`reset_count` pseudo-assignments, uniform usage), so the EMA does not pull them
    back to where they died."""
    return state.replace(
        embedding=jnp.where(dead[:, None], candidates, state.embedding),
        cluster_size=jnp.where(dead, reset_count, state.cluster_size),
        embed_sum=jnp.where(dead[:, None], candidates * reset_count, state.embed_sum),
        usage=jnp.where(dead, 1.0, state.usage),
    )


def restart_dead_codes(state: CodebookState, z: jax.Array, rng: jax.Array, *, threshold: float,
                       reset_count: float = 1.0) -> tuple[CodebookState, jax.Array]:
    """Re-seeds codes whose `usage` fell below `threshold` (relative to a uniform share: 0.03
    = under 3% of the vectors a uniformly used code gets) from random vectors of `z`. Masks
    only: same shapes every step, no host round trip; `rng` must be the same on every device
    (derive it from the step). Returns the state and the number of codes restarted."""
    dead = dead_codes(state.usage, threshold)
    new_state = reset_codes(state, dead, restart_candidates(z, rng, state.num_codes), reset_count)
    return new_state, jnp.sum(dead.astype(jnp.int32))


@dataclasses.dataclass(frozen=True)
class CodebookSettings:
    """What every codebook quantizer of `config.quantizer` shares: size, loss weighting,
    gradient estimator, initialisation and health (usage statistics, dead-code restarts)."""

    num_codes: int
    dim: int
    beta: float = 0.25  # commitment weight
    legacy_beta: bool = False  # taming's VectorQuantizer2(legacy=True) beta placement
    # config.quantizer.init: 'uniform' | 'kmeans++' (on the first batch's encoder outputs)
    initializer: str = "uniform"
    kmeans_iters: int = 10
    initial_count: float = 1.0  # EMA pseudo-count of a fresh or restarted code
    dead_code_threshold: float = 0.0  # usage below it restarts a code; 0 = never
    usage_decay: float = 0.9
    usage_window: int = 100  # steps over which `codes_used_recent` counts a code as used
    # config.quantizer.gradient: 'straight_through' | 'rotation' (search.GRADIENT_ESTIMATORS)
    gradient: str = "straight_through"

    def __post_init__(self):
        check_gradient_estimator(self.gradient)
        threshold = self.dead_code_threshold
        if threshold and not 0.0 < threshold < 1.0:
            raise ValueError(
                f"config.quantizer.dead_code_threshold is {threshold}; it is a fraction of a uniform "
                "code's share of the vectors, strictly between 0 and 1 (or 0 to never restart).")

    def track_usage(self, state, indices: jax.Array, step: jax.Array, z: jax.Array, rng: jax.Array):
        """Usage statistics of this step's codes, and which codes to restart where: returns
        (state, dead [K] bool, candidates [K, D], metrics); nothing is dead without a threshold."""
        state = stats.update_usage(state, indices, step, decay=self.usage_decay)
        if self.dead_code_threshold > 0:
            dead = dead_codes(state.usage, self.dead_code_threshold)
        else:
            dead = jnp.zeros((self.num_codes,), bool)
        metrics = {"codes_used_recent": stats.recent_usage(state, step, self.usage_window),
                   "codes_restarted": jnp.sum(dead.astype(jnp.int32)).astype(jnp.float32)}
        return state, dead, restart_candidates(z, rng, self.num_codes), metrics


@dataclasses.dataclass(frozen=True)
class EMAQuantizer(CodebookSettings, Quantizer):
    """Nearest code in a codebook moved by EMAs (`config.quantizer.kind='ema'`)."""

    decay: float = 0.99  # EMA decay of the codebook statistics
    epsilon: float = 1e-5  # Laplace smoothing
    debias: bool = False  # zero-debiased EMA, as haiku's VectorQuantizerEMA

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        embedding = initial_codebook(rng, z, self.num_codes, init=self.initializer, kmeans_iters=self.kmeans_iters)
        return {"params": {}, "state": CodebookState.from_embedding(embedding, self.initial_count)}

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        del train, rng
        q = quantize(z, variables["state"].embedding, gradient=self.gradient)
        losses = vq_loss_terms(q.codebook_loss, q.commitment_loss, beta=self.beta, legacy=self.legacy_beta,
                               learned_codebook=False)
        return QuantizerOutput(q.quantized, q.indices, losses,
                               {"perplexity": stats.perplexity(stats.code_counts(q.indices, self.num_codes))})

    def update(self, variables: dict, z: jax.Array, output: QuantizerOutput, step: jax.Array,
               rng: jax.Array) -> tuple[dict, dict]:
        state = ema_update(variables["state"], z, output.indices, decay=self.decay, epsilon=self.epsilon,
                           debias=self.debias)
        state, dead, candidates, metrics = self.track_usage(state, output.indices, step, z, rng)
        if self.dead_code_threshold > 0:
            state = reset_codes(state, dead, candidates, self.initial_count)
        return {"params": variables["params"], "state": state}, metrics

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        return lookup(variables["state"].embedding, indices)

