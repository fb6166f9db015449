"""Codebook initialisers: uniform, and k-means++ with Lloyd steps on encoder outputs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vqjax.quantizers.search import flatten_vectors, nearest_code
from vqjax.quantizers.stats import code_counts

INITS = ("uniform", "kmeans++")


def uniform_codebook(rng: jax.Array, num_codes: int, dim: int) -> jax.Array:
    """Uniform(-sqrt(3/D), sqrt(3/D)) codes: unit variance per vector, haiku's default scale."""
    limit = math.sqrt(3.0 / dim)
    return jax.random.uniform(rng, (num_codes, dim), jnp.float32, -limit, limit)


def kmeans_plus_plus(z: jax.Array, num_codes: int, rng: jax.Array) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): `num_codes` rows of `z[N, D]`."""
    z = flatten_vectors(jax.lax.stop_gradient(z)).astype(jnp.float32)
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
    z = flatten_vectors(jax.lax.stop_gradient(z)).astype(jnp.float32)
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
    flat = flatten_vectors(z)
    if flat.shape[0] < num_codes:
        raise ValueError(
            f"k-means initialisation needs at least num_codes={num_codes} encoder vectors but "
            f"the first batch has {flat.shape[0]}; use a larger batch or quantizer.init='uniform'."
        )
    return kmeans(flat, kmeans_plus_plus(flat, num_codes, rng), kmeans_iters)


def initial_codebook(rng: jax.Array, z: jax.Array, num_codes: int, *, init: str,
                     kmeans_iters: int = 10) -> jax.Array:
    """[K, D] codes by `init` ('uniform', or 'kmeans++' fitted to the encoder outputs `z`)."""
    if init == "uniform":
        return uniform_codebook(rng, num_codes, z.shape[-1])
    if init == "kmeans++":
        return init_codebook_from_data(z, num_codes, rng, kmeans_iters=kmeans_iters)
    raise ValueError(f"config.quantizer.init is {init!r}; use one of {INITS}.")
