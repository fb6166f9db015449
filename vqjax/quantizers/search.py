"""Nearest-code search, lookup and the gradient estimators (straight-through, rotation trick):
what every codebook quantizer shares (pure functions of arrays).

Conventions: encoder outputs `z` have shape `[..., D]`, a codebook has shape `[K, D]`,
code indices are int32 with the shape of `z` minus its last axis. Distances are computed in
float32 at `Precision.HIGHEST` under `stop_gradient`: in bfloat16 the `-2 z.e` term loses the
bits that separate neighbouring codes, and large-norm vectors pick the wrong code.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from vqjax.losses.vq import codebook_and_commitment_losses

# The search works on blocks of [CODES_PER_BLOCK codes x VECTORS_PER_CHUNK vectors] distances
# (8 MiB in float32): small enough to stay in cache between the matmul that makes a block and
# the reductions that read it, so memory never grows with K (65536 codes fit a small machine).
CODES_PER_BLOCK = 4096
VECTORS_PER_CHUNK = 512

_HIGHEST = jax.lax.Precision.HIGHEST


def flatten_vectors(z: jax.Array) -> jax.Array:
    """[..., D] -> [N, D]."""
    return jnp.reshape(z, (-1, z.shape[-1]))


def squared_distances(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Full `[N, K]` matrix of squared L2 distances, float32 (small inputs and tests)."""
    z = flatten_vectors(jax.lax.stop_gradient(z)).astype(jnp.float32)
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
    (an `argmin` over the minor axis, a variadic reduction, runs far slower there).
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
    flat = flatten_vectors(jax.lax.stop_gradient(z)).astype(jnp.float32)
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


# Norms below this are clamped, as vector-quantize-pytorch's `safe_div` and `l2norm` do: a zero
# vector has no direction, and a tiny one would give an unbounded scale.
_SMALLEST_NORM = 1e-6


def _norm(v: jax.Array) -> jax.Array:
    """|v| over the last axis, kept, at least `_SMALLEST_NORM` (a finite gradient at 0)."""
    return jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), _SMALLEST_NORM**2))


def rotation_trick(z: jax.Array, z_q: jax.Array) -> jax.Array:
    """Forward value `z_q` exactly; gradient to `z` through the linear map `sg(lambda R)`
    (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick", sec. 4.2).

    R rotates u = z/|z| onto q = z_q/|z_q| in the plane they span and lambda = |z_q|/|z|, so
    lambda R z = z_q. With w = (u + q)/|u + q|, R = I - 2 w w^T + 2 q u^T (a Householder
    reflection through w followed by the one onto q); R z is applied as two dot products per
    vector, never as a D x D matrix. No gradient reaches `z_q` on this path (the codebook
    learns from its loss term), as in the paper.
    """
    vectors = z.astype(jnp.float32)
    fixed = jax.lax.stop_gradient(vectors)
    code = jax.lax.stop_gradient(z_q).astype(jnp.float32)
    vector_norm, code_norm = _norm(fixed), _norm(code)
    u, q = fixed / vector_norm, code / code_norm
    w = (u + q) / _norm(u + q)  # antiparallel u, q: w = 0 and R is the reflection I - 2 q q^T
    rotated = (code_norm / vector_norm) * (
        vectors
        - 2.0 * w * jnp.sum(w * vectors, axis=-1, keepdims=True)
        + 2.0 * q * jnp.sum(u * vectors, axis=-1, keepdims=True))
    # `rotated - sg(rotated)` is exactly zero with the gradient of lambda R z: the forward
    # value is the code itself, not lambda R z rounded.
    return (code + (rotated - jax.lax.stop_gradient(rotated))).astype(z.dtype)


# config.quantizer.gradient: how the gradient crosses the non-differentiable code choice.
GRADIENT_ESTIMATORS = {"straight_through": straight_through, "rotation": rotation_trick}


def check_gradient_estimator(name: str) -> None:
    """Refuses, in a sentence, a gradient estimator that `GRADIENT_ESTIMATORS` does not name."""
    if name not in GRADIENT_ESTIMATORS:
        raise ValueError(f"config.quantizer.gradient is {name!r}; use one of {sorted(GRADIENT_ESTIMATORS)}.")


@struct.dataclass
class NearestCode:
    """Nearest-code quantization of `z`: per-vector terms, reduced by the quantizer."""

    quantized: jax.Array  # code vectors, shape of z, with the estimator's gradient to z
    indices: jax.Array  # int32, z.shape[:-1]
    codebook_loss: jax.Array  # ||sg[z] - e||^2 per vector
    commitment_loss: jax.Array  # ||z - sg[e]||^2 per vector, not yet times beta


def quantize(z: jax.Array, codebook: jax.Array, *, gradient: str = "straight_through",
             **search_kwargs) -> NearestCode:
    """Nearest-code quantization; the gradient to `z` by the estimator `gradient` names
    ('straight_through' or 'rotation', `GRADIENT_ESTIMATORS`)."""
    check_gradient_estimator(gradient)
    indices = nearest_code(z, codebook, **search_kwargs)
    z_q = lookup(codebook, indices)
    codebook_loss, commitment_loss = codebook_and_commitment_losses(z, z_q)
    return NearestCode(GRADIENT_ESTIMATORS[gradient](z, z_q), indices, codebook_loss, commitment_loss)
