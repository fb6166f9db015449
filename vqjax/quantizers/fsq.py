"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple", arXiv:2309.15505): each of d dimensions is bounded by a tanh and rounded to one of
its L_i levels; the codebook is the implicit product grid of K = prod_i L_i codes, never
materialised, and there is no auxiliary loss.

Conventions (those of the paper's appendix A.1 code and of vector-quantize-pytorch's `FSQ`):
level k in [0, L) of a dimension stands for the value (k - L//2) / (L//2), so values lie in
[-1, 1] (an even L gives the asymmetric grid -1, ..., 1 - 2/L); a code's index is the mixed-
radix number of its levels with the first dimension the least significant digit.

Also here, because LFQ/BSQ share them: the optional linear projections between the encoder's
dimension and the code dimension, and a perplexity that needs no [K] count vector.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.quantizers import stats
from vqjax.quantizers.base import Quantizer, QuantizerOutput
from vqjax.quantizers.projection import apply_linear, check_dimension, linear_projections
from vqjax.quantizers.search import straight_through


# The paper's recommended levels for a target codebook size (its table in section 4.1),
# keyed by their product: `num_codes=15360` with empty `levels` picks (8, 8, 8, 6, 5).
PRESET_LEVELS = {
    240: (8, 6, 5),
    1000: (8, 5, 5, 5),
    4375: (7, 5, 5, 5, 5),
    15360: (8, 8, 8, 6, 5),
    64000: (8, 8, 8, 5, 5, 5),
}
# Indices are int32: a codebook must number its codes with them.
MAX_CODES = 2**31 - 1
# Widens the tanh's range by a relative 1e-3 so that rounding reaches the extreme levels with
# a margin (the paper's code has 1 - eps with `tan` for the shift; vector-quantize-pytorch
# has 1 + eps with `atanh`, the inverse that makes bound(0) = 0 exactly: we follow it).
_BOUND_EPS = 1e-3


# --- the quantization -------------------------------------------------------------------------


def _half_widths(levels: tuple) -> np.ndarray:
    return np.asarray(levels, np.int32) // 2


def bound(z: jax.Array, levels: tuple) -> jax.Array:
    """The paper's `bound`: `tanh(z + shift) * h - offset` with h = (L - 1)(1 + eps) / 2, so
    that rounding yields exactly L integers, centred on zero for odd L and shifted down by a
    half (offset 1/2, the even-level offset) for even L; the shift atanh(offset / h) makes
    bound(0) = 0. Float32."""
    levels_f = np.asarray(levels, np.float64)
    half_range = (levels_f - 1.0) * (1.0 + _BOUND_EPS) / 2.0
    offset = np.where(levels_f % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_range)
    z = z.astype(jnp.float32)
    return (jnp.tanh(z + shift.astype(np.float32)) * half_range.astype(np.float32)
            - offset.astype(np.float32))


def quantize_levels(z: jax.Array, levels: tuple) -> tuple[jax.Array, jax.Array]:
    """(values in [-1, 1], straight-through: the gradient of the identity through the bound;
    level digits int32 in [0, L)) for `z` [..., len(levels)]."""
    bounded = bound(z, levels)
    rounded = jnp.round(bounded)  # half to even, as torch.round
    half_width = _half_widths(levels)
    values = straight_through(bounded, rounded) / half_width.astype(np.float32)
    # The clip only keeps NaN inputs' digits (an undefined cast) inside the grid.
    digits = jnp.clip(rounded.astype(jnp.int32) + half_width, 0, np.asarray(levels, np.int32) - 1)
    return values, digits


def _radix_basis(levels: tuple) -> np.ndarray:
    """The place value of each dimension's digit: 1, L_0, L_0 L_1, ... (first dim least significant)."""
    return np.cumprod((1,) + tuple(levels[:-1]), dtype=np.int64).astype(np.int32)


def digits_to_indices(digits: jax.Array, levels: tuple) -> jax.Array:
    """Mixed-radix number of the level digits [..., d] -> int32 [...] (exact integer arithmetic)."""
    return jnp.sum(digits.astype(jnp.int32) * _radix_basis(levels), axis=-1, dtype=jnp.int32)


def indices_to_digits(indices: jax.Array, levels: tuple) -> jax.Array:
    """The inverse of `digits_to_indices`: [...] -> int32 [..., d]."""
    indices = jnp.asarray(indices, jnp.int32)[..., None]
    return (indices // _radix_basis(levels)) % np.asarray(levels, np.int32)


def digits_to_values(digits: jax.Array, levels: tuple) -> jax.Array:
    """Level digits -> code values in [-1, 1], float32."""
    half_width = _half_widths(levels)
    return (digits - half_width).astype(jnp.float32) / half_width.astype(np.float32)


# --- the quantizer ----------------------------------------------------------------------------


def resolve_levels(levels, num_codes: int) -> tuple:
    """The levels `config.quantizer` asks for: `levels` when given (checked against
    `num_codes` unless that is 0), else the paper's preset for `num_codes`."""
    levels = tuple(int(level) for level in (levels or ()))
    if not levels:
        if num_codes not in PRESET_LEVELS:
            raise ValueError(
                f"config.quantizer.levels is empty and config.quantizer.num_codes is {num_codes}, which has "
                f"no preset; set num_codes to one of {sorted(PRESET_LEVELS)} or give the levels per "
                "dimension, e.g. config.quantizer.levels=(8, 5, 5, 5).")
        return PRESET_LEVELS[num_codes]
    if min(levels) < 2:
        raise ValueError(
            f"config.quantizer.levels is {levels}; every level must be at least 2 (a dimension with one "
            "level carries no information), so raise or drop the levels below 2.")
    product = math.prod(levels)
    if product > MAX_CODES:
        raise ValueError(
            f"config.quantizer.levels {levels} make {product} codes, more than int32 indices can number "
            f"({MAX_CODES}); use fewer or smaller levels.")
    if num_codes and product != num_codes:
        raise ValueError(
            f"config.quantizer.levels {levels} make {product} codes but config.quantizer.num_codes is "
            f"{num_codes}; set num_codes to {product} or choose levels whose product is {num_codes}.")
    return levels


@dataclasses.dataclass(frozen=True)
class FiniteScalarQuantizer(Quantizer):
    """`config.quantizer.kind='fsq'`: params are the projections (`linear_projections`, empty
    when `dim == len(levels)`), state is empty, and the update is the identity. There is no
    usage state: a [K] vector would not scale with the grid, and FSQ needs no restarts."""

    dim: int
    levels: tuple = ()  # levels per code dimension; () = PRESET_LEVELS[num_codes]
    num_codes: int = 0  # 0 = the product of `levels`

    def __post_init__(self):
        levels = resolve_levels(self.levels, int(self.num_codes or 0))
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "num_codes", math.prod(levels))

    @property
    def code_dim(self) -> int:
        return len(self.levels)

    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        check_dimension(z, self.dim, "fsq")
        return {"params": linear_projections(rng, self.dim, self.code_dim), "state": {}}

    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        del train, rng
        check_dimension(z, self.dim, "fsq")
        params = variables["params"]
        values, digits = quantize_levels(apply_linear(params.get("project_in"), z), self.levels)
        indices = digits_to_indices(digits, self.levels)
        quantized = apply_linear(params.get("project_out"), values).astype(z.dtype)
        return QuantizerOutput(quantized, indices, {}, {"perplexity": stats.batch_perplexity(indices)})

    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        values = digits_to_values(indices_to_digits(indices, self.levels), self.levels)
        return apply_linear(variables["params"].get("project_out"), values)

