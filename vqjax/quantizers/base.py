"""The Quantizer interface: what the trainer, checkpoints, tokenizers, token caches and
converters know of a quantizer.

A quantizer is a plain object built from `config.quantizer` (its fields as keyword
arguments), holding no arrays. Its arrays live in `variables = {'params': ..., 'state':
...}`: `params` are trained by the optimizer with the network (a codebook learned by loss),
`state` changes only in `update`, outside the gradient (EMA statistics, usage, restarts).
"""

from __future__ import annotations

import abc
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class QuantizerOutput:
    """What `Quantizer.__call__` returns.

    `losses` are named scalar terms, already weighted, that the family adds to its objective
    (e.g. `beta * commitment`); `metrics` are float32 scalars for the logs.
    """

    quantized: jax.Array  # the vectors the decoder reads, shape of z, differentiable in z
    indices: jax.Array  # the codes, `index_shape(z.shape)`, `index_dtype`
    losses: dict
    metrics: dict


def total_loss(losses: dict) -> jax.Array:
    """The sum of named loss terms, in their order (a zero scalar when there are none)."""
    terms = list(losses.values())
    if not terms:
        return jnp.zeros((), jnp.float32)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


class Quantizer(abc.ABC):
    """z [..., D] -> code indices and the vectors that stand for them."""

    num_codes: int
    dim: int  # the vector dimension D it quantizes
    index_dtype = jnp.int32
    trainable: bool = True  # False: it can encode and decode but not be trained

    @abc.abstractmethod
    def init(self, rng: jax.Array, z: jax.Array) -> dict:
        """{'params': ..., 'state': ...} for encoder outputs like `z` (some initialisers fit
        `z`, e.g. k-means++)."""

    @abc.abstractmethod
    def __call__(self, variables: dict, z: jax.Array, *, train: bool = False,
                 rng: Optional[jax.Array] = None) -> QuantizerOutput:
        """Quantizes `z` [..., D]; differentiable in `variables['params']` and `z`."""

    def update(self, variables: dict, z: jax.Array, output: QuantizerOutput, step: jax.Array,
               rng: jax.Array) -> tuple[dict, dict]:
        """After the optimizer's step, outside the gradient: (new variables, metrics). `step`
        counts the steps done including this one. The identity for stateless quantizers."""
        del z, output, step, rng
        return variables, {}

    @abc.abstractmethod
    def lookup(self, variables: dict, indices: jax.Array) -> jax.Array:
        """The vectors [..., D] of code `indices`: what the decoder reads for them."""

    def index_shape(self, z_shape: tuple) -> tuple:
        """The shape of the indices of encoder outputs of shape `z_shape`."""
        return tuple(z_shape[:-1])

    def abstract_variables(self, z_shape: tuple) -> Any:
        """The shapes of `init`'s variables, computed without running it."""
        return jax.eval_shape(self.init, jax.random.key(0), jax.ShapeDtypeStruct(tuple(z_shape), jnp.float32))
