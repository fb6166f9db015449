"""Vector quantizers: nearest-code search, learned and EMA codebooks, codebook health.

Everything here is a pure function of arrays, so the train step decides what is a
parameter (a codebook learned by loss) and what is state (an EMA codebook, `CodebookState`).
`VectorQuantizer` is a thin linen wrapper for composing the learned variant into modules.

Conventions: encoder outputs `z` have shape `[..., D]`, a codebook has shape `[K, D]`,
code indices are int32 with the shape of `z` minus its last axis. Distances are computed in
float32 at `Precision.HIGHEST` under `stop_gradient`: in bfloat16 the `-2 z.e` term loses the
bits that separate neighbouring codes, and large-norm vectors pick the wrong code.
"""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

# The search works on blocks of [CODES_PER_BLOCK codes x VECTORS_PER_CHUNK vectors] distances
# (8 MiB in float32): small enough to stay in cache between the matmul that makes a block and
# the reductions that read it, so memory never grows with K (65536 codes fit a small machine).
CODES_PER_BLOCK = 4096
VECTORS_PER_CHUNK = 512

_HIGHEST = jax.lax.Precision.HIGHEST


def _flatten(z: jax.Array) -> jax.Array:
    return jnp.reshape(z, (-1, z.shape[-1]))


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Full `[N, K]` matrix of squared L2 distances, float32 (small inputs and tests)."""
    z = _flatten(jax.lax.stop_gradient(z)).astype(jnp.float32)
    codebook = jax.lax.stop_gradient(codebook).astype(jnp.float32)
    dots = jnp.einsum("nd,kd->nk", z, codebook, precision=_HIGHEST)
    return (
        jnp.sum(z * z, axis=-1, keepdims=True)
        - 2.0 * dots
        + jnp.sum(codebook * codebook, axis=-1)[None, :]
    )


def _nearest_in_block(vectors: jax.Array, codes: jax.Array, code_norms: jax.Array):
    """(smallest partial distance, index of its first code) for each of `vectors` [n, D]
    among `codes` [k, D] with squared norms `code_norms` [k] (+inf for padding codes).

    |z|^2 is the same for every code, so it is left out: the argmin is unchanged and the
    large common term does not swamp the differences between codes. Distances are laid out
    [codes, vectors] and both reductions run over the major axis, which XLA:CPU vectorises
    (an `argmin` over the minor axis, a variadic reduction, runs ~10x slower there).
    """
    dist = code_norms[:, None] - 2.0 * jnp.einsum("kd,nd->kn", codes, vectors, precision=_HIGHEST)
    best = jnp.min(dist, axis=0)
    code_index = jax.lax.broadcasted_iota(jnp.int32, dist.shape, 0)
    first = jnp.min(jnp.where(dist == best[None, :], code_index, codes.shape[0]), axis=0)
    return best, first


def nearest_code(
    z: jax.Array,
    codebook: jax.Array,
    *,
    codes_per_block: int = CODES_PER_BLOCK,
    vectors_per_chunk: int = VECTORS_PER_CHUNK,
) -> jax.Array:
    """Index of the nearest code (squared L2) for every vector of `z[..., D]`.

    Exact and float32 whatever the inputs' dtype. The vectors are taken in chunks and the
    codebook in blocks (two nested `lax.scan`s), so at most `codes_per_block x
    vectors_per_chunk` distances exist at once; the running minimum keeps the first index on
    ties, like `jnp.argmin`. A chunk takes every `n_chunks`-th vector, so the rows of a batch
    sharded over devices stay spread over the devices in every chunk.
    """
    if z.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"Vectors have dimension {z.shape[-1]} but codes have dimension "
            f"{codebook.shape[-1]}; set the encoder's embed_dim to the codebook's dimension."
        )
    batch_shape = z.shape[:-1]
    flat = _flatten(jax.lax.stop_gradient(z)).astype(jnp.float32)
    codebook = jax.lax.stop_gradient(codebook).astype(jnp.float32)
    # Distances do not change when both sides move by the same vector. Centring on the
    # codebook's mean removes the large common norm that vectors and codes far from the
    # origin share, which float32 would otherwise round away (wrong codes on near-ties).
    center = jnp.mean(codebook, axis=0)
    flat, codebook = flat - center, codebook - center
    (num_vectors, dim), num_codes = flat.shape, codebook.shape[0]

    # A search whose whole distance matrix fits one block's budget is a single block.
    fits_one_block = num_vectors * num_codes <= codes_per_block * vectors_per_chunk
    block = num_codes if fits_one_block else max(1, min(codes_per_block, num_codes))
    num_blocks = -(-num_codes // block)
    padding = num_blocks * block - num_codes
    # Padded codes sit at +inf distance and can never win.
    code_norms = jnp.pad(jnp.sum(codebook * codebook, axis=-1), (0, padding),
                         constant_values=jnp.inf).reshape(num_blocks, block)
    code_blocks = jnp.pad(codebook, ((0, padding), (0, 0))).reshape(num_blocks, block, dim)
    offsets = jnp.arange(num_blocks, dtype=jnp.int32) * block

    def search_chunk(vectors):
        def scan_block(carry, inputs):
            best_dist, best_index = carry
            codes, norms, offset = inputs
            dist, index = _nearest_in_block(vectors, codes, norms)
            better = dist < best_dist  # strict: earlier blocks win ties, as argmin does
            return (jnp.where(better, dist, best_dist),
                    jnp.where(better, index + offset, best_index)), None

        if num_blocks == 1:
            return _nearest_in_block(vectors, code_blocks[0], code_norms[0])[1]
        init = (jnp.full(vectors.shape[:1], jnp.inf, jnp.float32),
                jnp.zeros(vectors.shape[:1], jnp.int32))
        (_, index), _ = jax.lax.scan(scan_block, init, (code_blocks, code_norms, offsets))
        return index

    chunk = num_vectors if fits_one_block else max(1, min(vectors_per_chunk, num_vectors))
    num_chunks = -(-num_vectors // chunk)
    if num_chunks == 1:
        indices = search_chunk(flat)
    else:
        padded = jnp.pad(flat, ((0, num_chunks * chunk - num_vectors), (0, 0)))
        # Chunk c holds vectors c, c + num_chunks, c + 2 num_chunks, ... (a strided split).
        chunks = jnp.swapaxes(padded.reshape(chunk, num_chunks, dim), 0, 1)
        _, indices = jax.lax.scan(lambda carry, v: (carry, search_chunk(v)), None, chunks)
        indices = jnp.swapaxes(indices, 0, 1).reshape(-1)[:num_vectors]
    # NaN vectors match no code; keep their index in range for the gathers that follow.
    return jnp.reshape(jnp.minimum(indices, num_codes - 1), batch_shape)


def lookup(codebook: jax.Array, indices: jax.Array) -> jax.Array:
    """Code vectors for `indices`: a gather, never a one-hot matmul."""
    return jnp.take(codebook, indices, axis=0)


def straight_through(z: jax.Array, z_q: jax.Array) -> jax.Array:
    """Forward value `z_q`, gradient of the identity to `z` (van den Oord et al., eq. 3)."""
    return z + jax.lax.stop_gradient(z_q.astype(z.dtype) - z)


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


@struct.dataclass
class QuantizerOutput:
    """What a quantizer returns; per-vector terms, reduced later by the train step."""

    quantized: jax.Array  # straight-through code vectors, shape of z
    indices: jax.Array  # int32, z.shape[:-1]
    codebook_loss: jax.Array  # ||sg[z] - e||^2 per vector (zero gradient for an EMA codebook)
    commitment_loss: jax.Array  # ||z - sg[e]||^2 per vector, not yet times beta


def quantize(z: jax.Array, codebook: jax.Array, **search_kwargs) -> QuantizerOutput:
    """Nearest-code quantization with the straight-through estimator."""
    indices = nearest_code(z, codebook, **search_kwargs)
    z_q = lookup(codebook, indices)
    codebook_loss, commitment_loss = codebook_and_commitment_losses(z, z_q)
    return QuantizerOutput(straight_through(z, z_q), indices, codebook_loss, commitment_loss)


def uniform_codebook(rng: jax.Array, num_codes: int, dim: int) -> jax.Array:
    """Uniform(-sqrt(3/D), sqrt(3/D)) codes: unit variance per vector, haiku's default scale."""
    limit = math.sqrt(3.0 / dim)
    return jax.random.uniform(rng, (num_codes, dim), jnp.float32, -limit, limit)


class VectorQuantizer(nn.Module):
    """Codebook learned by loss (van den Oord et al. 2017), for use inside linen models.

    Returns a `QuantizerOutput`; the loss is `codebook_loss + beta * commitment_loss`.
    """

    num_codes: int
    dim: int

    @nn.compact
    def __call__(self, z: jax.Array) -> QuantizerOutput:
        codebook = self.param(
            "codebook", lambda rng: uniform_codebook(rng, self.num_codes, self.dim)
        )
        return quantize(z, codebook)


# ----------------------------------------------------------------------------------------
# Code statistics.


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


# ----------------------------------------------------------------------------------------
# EMA codebook as explicit state.


@struct.dataclass
class CodebookState:
    """A codebook and its statistics: a pytree kept in `TrainState`, not in the model.

    `cluster_size` and `embed_sum` are the exponential moving averages of the per-step code
    counts and of the summed vectors assigned to each code (the biased averages when
    `ema_update(..., debias=True)` is used); `num_updates` counts `ema_update` calls.
    For a codebook learned by loss only `embedding` and the usage fields change.

    Usage, for codebook health: `usage` is a faster EMA of each code's share of the vectors,
    relative to a uniform share (1.0 = used as often as 1/K of all vectors, 0 = never), so
    its scale does not depend on the batch size; `last_used` is the step at which each code
    was last assigned a vector.
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
    z = _flatten(jax.lax.stop_gradient(z)).astype(jnp.float32)
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


def update_usage(
    state: CodebookState, indices: jax.Array, step: jax.Array, *, decay: float = 0.9
) -> CodebookState:
    """Updates `usage` (EMA of each code's share relative to uniform) and `last_used`.

    Separate from `ema_update` because it serves every kind of codebook (EMA or learned by
    loss), and because dead-code detection wants a shorter memory than the codebook EMA.
    """
    counts = code_counts(indices, state.num_codes)
    share = counts * (state.num_codes / jnp.maximum(jnp.sum(counts), 1.0))
    return state.replace(
        usage=decay * state.usage + (1.0 - decay) * share,
        last_used=jnp.where(counts > 0, jnp.asarray(step, jnp.int32), state.last_used),
    )


def restart_dead_codes(
    state: CodebookState,
    z: jax.Array,
    rng: jax.Array,
    *,
    threshold: float,
    reset_count: float = 1.0,
) -> tuple[CodebookState, jax.Array]:
    """Re-seeds codes whose `usage` fell below `threshold` from random vectors of `z`.

    `threshold` is relative to a uniform share (0.03: a code gets under 3% of the vectors a
    uniformly used code would). A restarted code gets the statistics of a fresh code at that
    vector (`reset_count` pseudo-assignments, uniform usage), so the EMA does not pull it back
    to where it died. Masks only: same shapes every step, no host round trip; `rng` must be
    the same on every device (derive it from the step). Returns the state and the number of
    codes restarted.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"The dead-code threshold is {threshold}; it is a fraction of a uniform code's share "
            "of the vectors and must lie strictly between 0 and 1 (0.03 is a good start)."
        )
    flat = _flatten(jax.lax.stop_gradient(z)).astype(jnp.float32)
    dead = state.usage < threshold
    picks = jax.random.randint(rng, (state.num_codes,), 0, flat.shape[0])
    candidates = jnp.take(flat, picks, axis=0)
    new_state = state.replace(
        embedding=jnp.where(dead[:, None], candidates, state.embedding),
        cluster_size=jnp.where(dead, reset_count, state.cluster_size),
        embed_sum=jnp.where(dead[:, None], candidates * reset_count, state.embed_sum),
        usage=jnp.where(dead, 1.0, state.usage),
    )
    return new_state, jnp.sum(dead.astype(jnp.int32))


def recent_usage(state: CodebookState, step: jax.Array, window: int) -> jax.Array:
    """Fraction of codes assigned at least one vector in the steps (step - window, step]."""
    used = (step - state.last_used < window) & (state.last_used > 0)
    return jnp.mean(used.astype(jnp.float32))


# ----------------------------------------------------------------------------------------
# Initialisation from encoder outputs.


def kmeans_plus_plus(z: jax.Array, num_codes: int, rng: jax.Array) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): `num_codes` rows of `z[N, D]`."""
    z = _flatten(jax.lax.stop_gradient(z)).astype(jnp.float32)
    num_vectors = z.shape[0]
    first_rng, rest_rng = jax.random.split(rng)
    first = z[jax.random.randint(first_rng, (), 0, num_vectors)]
    centers = jnp.zeros((num_codes, z.shape[1]), jnp.float32).at[0].set(first)
    min_dist = jnp.sum(jnp.square(z - first), axis=-1)

    def add_center(i, carry):
        centers, min_dist = carry
        # Sample proportionally to D(x)^2; all-zero distances (duplicates) fall back to uniform.
        logits = jnp.where(jnp.sum(min_dist) > 0, jnp.log(jnp.maximum(min_dist, 1e-30)), 0.0)
        pick = jax.random.categorical(jax.random.fold_in(rest_rng, i), logits)
        center = z[pick]
        min_dist = jnp.minimum(min_dist, jnp.sum(jnp.square(z - center), axis=-1))
        return centers.at[i].set(center), min_dist

    centers, _ = jax.lax.fori_loop(1, num_codes, add_center, (centers, min_dist))
    return centers


def kmeans(z: jax.Array, centers: jax.Array, num_iters: int) -> jax.Array:
    """Lloyd iterations from `centers`; a center left without vectors keeps its place."""
    z = _flatten(jax.lax.stop_gradient(z)).astype(jnp.float32)
    num_codes = centers.shape[0]

    def step(_, centers):
        indices = nearest_code(z, centers)
        counts = code_counts(indices, num_codes)
        sums = jax.ops.segment_sum(z, indices, num_segments=num_codes)
        means = sums / jnp.maximum(counts, 1.0)[:, None]
        return jnp.where(counts[:, None] > 0, means, centers)

    return jax.lax.fori_loop(0, num_iters, step, centers)


def init_codebook_from_data(
    z: jax.Array, num_codes: int, rng: jax.Array, *, kmeans_iters: int = 10
) -> jax.Array:
    """k-means++ seeding followed by `kmeans_iters` Lloyd steps on encoder outputs `z`."""
    flat = _flatten(z)
    if flat.shape[0] < num_codes:
        raise ValueError(
            f"k-means initialisation needs at least num_codes={num_codes} encoder vectors but "
            f"the first batch has {flat.shape[0]}; use a larger batch or quantizer.init='uniform'."
        )
    return kmeans(flat, kmeans_plus_plus(flat, num_codes, rng), kmeans_iters)
