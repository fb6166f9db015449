"""Lookup-free quantization (MAGVIT-v2: Yu et al. 2023, "Language Model Beats Diffusion --
Tokenizer is Key to Visual Generation", arXiv:2310.05737, section 3.1) and binary spherical
quantization (BSQ: Zhao et al. 2024, "Image and Video Tokenization with Binary Spherical
Quantization", arXiv:2406.07548): each of d = log2(K) dimensions is quantized to its sign, so
the codebook is the implicit set {-s, s}^d of K = 2^d codes (s = 1 for LFQ; BSQ first
l2-normalises the vector and uses s = 1/sqrt(d), codes on the unit sphere).

Indices are the code's bits with the first dimension the most significant (bit i of a code
has weight 2^(d-1-i), vector-quantize-pytorch's `LFQ` order; the MAGVIT-v2 paper writes the
reverse order, a relabelling of the same codes). A dimension quantizes to +s when it is > 0.

The entropy loss (MAGVIT-v2 eq. 5, BSQ section 3.3) is `mean_n H(p(c | x_n)) - gamma
H(mean_n p(c | x_n))` with p(c | x) = softmax_c(-beta ||x - c||^2), beta the inverse
temperature. For a codebook {-s, s}^d that distribution is a product over dimensions of
Bernoulli(sigmoid(4 beta s x_i)), so

  * the per-sample entropy is exactly the sum of d binary entropies;
  * the codebook (batch-mean) entropy does not factorise: it is computed exactly on groups of
    `entropy_group_size` consecutive dimensions and summed over the groups. That is exact when
    g >= d (the default, 16, covers every codebook up to 65,536 codes) and otherwise an upper
    bound (entropy is subadditive: H(X) <= sum of the groups' H); g = 1 is BSQ's factorised
    estimate. A group's batch-mean joint distribution is an outer product summed over vectors:
    its bits split into two halves a and b, p(a, b | x) = p(a | x) p(b | x), so
    mean_n p(a, b | x_n) = P_a^T P_b / N with P_a [N, 2^|a|] and P_b [N, 2^|b|]. Memory is
    N x 2 x 2^(g/2) floats per group and 2^g for its mean, not N x 2^g: 16 bits cost 512
    floats per vector.

No 2^d codebook is ever built. Nothing is tracked across steps (the state is empty): the
batch perplexity is counted from sorted indices, so it needs no [K] vector either.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers import stats
from vqjax.quantizers.projection import apply_linear, check_dimension, l2_normalize, linear_projections
from vqjax.quantizers.search import flatten_vectors, straight_through

_HIGHEST = jax.lax.Precision.HIGHEST

# num_codes = 2^d must itself be an int32 (priors use it as a vocabulary size and mask id).
MAX_BITS = 30
# A group of g bits holds its 2^g mean probabilities (2^24: 64 MiB) and 2 x 2^(g/2) per vector.
MAX_GROUP_SIZE = 24


def sign_codes(x: jax.Array, scale: float) -> tuple[jax.Array, jax.Array]:
    """(codes +-scale, bits: True where a dimension is > 0) for `x` [..., d]."""
    positive = x > 0
    return jnp.where(positive, jnp.float32(scale), jnp.float32(-scale)), positive


def _bit_weights(num_bits: int) -> np.ndarray:
    """Place value of each dimension's bit, the first dimension most significant."""
    return np.left_shift(1, np.arange(num_bits - 1, -1, -1)).astype(np.int32)


def bits_to_indices(bits: jax.Array) -> jax.Array:
    """Bool [..., d] -> int32 [...]."""
    return jnp.sum(bits.astype(jnp.int32) * _bit_weights(bits.shape[-1]), axis=-1, dtype=jnp.int32)


def indices_to_bits(indices: jax.Array, num_bits: int) -> jax.Array:
    """The inverse of `bits_to_indices`: int32 [...] -> bool [..., d]."""
    return (jnp.asarray(indices, jnp.int32)[..., None] & _bit_weights(num_bits)) != 0


def bit_logits(x: jax.Array, scale: float, inverse_temperature: float) -> jax.Array:
    """log p(c_i = +s) - log p(c_i = -s) under softmax(-beta ||x - c||^2): the codes' squared
    norms are all d s^2, so the distribution is proportional to exp(2 beta x . c), a product
    of independent bits with logits 4 beta s x_i."""
    return (4.0 * inverse_temperature * scale) * x.astype(jnp.float32)


def binary_entropies(logits: jax.Array) -> jax.Array:
    """H(Bernoulli(sigmoid(a))) elementwise, in nats: p softplus(-a) + (1 - p) softplus(a),
    two non-negative terms (the form softplus(a) - a p cancels catastrophically for large a)."""
    p = jax.nn.sigmoid(logits)
    return p * jax.nn.softplus(-logits) + (1.0 - p) * jax.nn.softplus(logits)


def _entropy(probs: jax.Array) -> jax.Array:
    """-sum p log p over the last axis, 0 log 0 = 0, with a finite gradient at p = 0."""
    positive = probs > 0
    safe = jnp.where(positive, probs, 1.0)
    return -jnp.sum(jnp.where(positive, probs * jnp.log(safe), 0.0), axis=-1)


def _pattern_probabilities(logits: jax.Array) -> jax.Array:
    """[N, h] bit logits -> [N, 2^h]: the probability of each of the 2^h patterns of the h
    independent bits (h = 0 gives the one empty pattern, probability 1)."""
    num_bits = logits.shape[-1]
    patterns = ((np.arange(2**num_bits)[:, None] >> np.arange(num_bits)[None, :]) & 1).astype(np.float32)
    log_plus, log_minus = -jax.nn.softplus(-logits), -jax.nn.softplus(logits)
    return jnp.exp(jnp.einsum("ni,pi->np", log_plus, patterns, precision=_HIGHEST)
                   + jnp.einsum("ni,pi->np", log_minus, 1.0 - patterns, precision=_HIGHEST))


def _group_mean_entropy(logits: jax.Array) -> jax.Array:
    """Entropy of the batch-mean joint distribution of a group's bits, `logits` [N, g]: the
    mean of the two halves' outer products, never the [N, 2^g] joint of each vector."""
    half = logits.shape[-1] // 2
    first, second = _pattern_probabilities(logits[:, :half]), _pattern_probabilities(logits[:, half:])
    mean_joint = jnp.einsum("np,nq->pq", first, second, precision=_HIGHEST) / logits.shape[0]
    return _entropy(mean_joint.reshape(-1))


def codebook_entropy(logits: jax.Array, group_size: int) -> jax.Array:
    """H(mean_n p(c | x_n)) for bit `logits` [..., d], exact within groups of `group_size`
    consecutive dimensions and summed over groups (an upper bound when group_size < d)."""
    flat = flatten_vectors(logits).astype(jnp.float32)
    num_bits = flat.shape[-1]
    return sum(_group_mean_entropy(flat[:, start:start + group_size]) for start in range(0, num_bits, group_size))


def per_sample_entropy(logits: jax.Array) -> jax.Array:
    """mean_n H(p(c | x_n)) for bit `logits` [..., d]: exactly the sum of the bits' entropies."""
    return jnp.mean(jnp.sum(binary_entropies(logits), axis=-1))


@dataclasses.dataclass(frozen=True)
class LookupFreeQuantizer(Quantizer):
    """`config.quantizer.kind='lfq'`: params are the projections (`projection.linear_projections`,
    empty when `dim == log2(num_codes)`), state is empty, the update is the identity.

    Losses: `commitment` = beta mean (x - sg[q])^2 and `entropy` = entropy_weight x
    (per-sample entropy - diversity_gamma x codebook entropy), in nats."""

    num_codes: int
    dim: int
    beta: float = 0.25  # commitment weight (config.quantizer.beta, as for the codebooks)
    entropy_weight: float = 0.1
    diversity_gamma: float = 1.0
    inverse_temperature: float = 100.0  # beta of softmax(-beta ||x - c||^2)
    entropy_group_size: int = 16  # dimensions per exactly-computed group (>= d: exact)

    spherical: ClassVar[bool] = False  # BSQ: l2-normalise, codes sign / sqrt(d)

    def __post_init__(self):
        num_codes = int(self.num_codes)
        num_bits = int(round(math.log2(num_codes))) if num_codes >= 2 else 0
        if num_codes < 2 or 2**num_bits != num_codes:
            raise ValueError(
                f"config.quantizer.num_codes is {num_codes}; lookup-free codebooks have 2^d codes, so set "
                "it to a power of two of at least 2 (e.g. 65536 for 16 bits).")
        if num_bits > MAX_BITS:
            raise ValueError(
                f"config.quantizer.num_codes is 2^{num_bits}; its indices overflow int32, so use at most "
                f"2^{MAX_BITS} codes.")
        if not 1 <= self.entropy_group_size <= MAX_GROUP_SIZE:
            raise ValueError(
                f"config.quantizer.entropy_group_size is {self.entropy_group_size}; a group holds the mean "
                f"probabilities of its 2^g codes, so set it between 1 and {MAX_GROUP_SIZE}.")
        if not self.inverse_temperature > 0:
            raise ValueError(
                f"config.quantizer.inverse_temperature is {self.inverse_temperature}; set it to a positive "
                "number (100 is MAGVIT-v2's).")

    @property
    def code_dim(self) -> int:
        return int(round(math.log2(self.num_codes)))

    @property
    def code_scale(self) -> float:
        return 1.0 / math.sqrt(self.code_dim) if self.spherical else 1.0

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        check_dimension(z, self.dim, self._kind)
        return {"params": linear_projections(rng, self.dim, self.code_dim), "state": {}}

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        del train, rng
        check_dimension(z, self.dim, self._kind)
        params = variables["params"]
        x = apply_linear(params.get("project_in"), z)
        if self.spherical:
            x = l2_normalize(x, 1e-12)  # torch's F.normalize, as vector-quantize-pytorch
        codes, bits = sign_codes(x, self.code_scale)
        indices = bits_to_indices(bits)
        quantized = apply_linear(params.get("project_out"), straight_through(x, codes)).astype(z.dtype)

        logits = bit_logits(x, self.code_scale, self.inverse_temperature)
        sample_entropy = per_sample_entropy(logits)
        mean_entropy = codebook_entropy(logits, self.entropy_group_size)
        commitment = jnp.mean(jnp.square(x - jax.lax.stop_gradient(codes)))
        losses = {"commitment": self.beta * commitment,
                  "entropy": self.entropy_weight * (sample_entropy - self.diversity_gamma * mean_entropy)}
        metrics = {"perplexity": stats.batch_perplexity(indices), "per_sample_entropy": sample_entropy,
                   "codebook_entropy": mean_entropy}
        return QuantizerOutput(quantized, indices, losses, metrics)

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        bits = indices_to_bits(indices, self.code_dim)
        codes = jnp.where(bits, jnp.float32(self.code_scale), jnp.float32(-self.code_scale))
        return apply_linear(variables["params"].get("project_out"), codes)

    @property
    def _kind(self) -> str:
        return "bsq" if self.spherical else "lfq"


@dataclasses.dataclass(frozen=True)
class BinarySphericalQuantizer(LookupFreeQuantizer):
    """`config.quantizer.kind='bsq'`: LFQ on the l2-normalised vector with codes sign / sqrt(d)
    (Zhao et al. 2024, eq. 2), so inputs and codes lie on the unit sphere."""

    spherical: ClassVar[bool] = True
