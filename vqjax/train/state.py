"""The train state every family uses: one pytree that checkpoints, restores and `init_from`
handle without knowing the family."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from vqjax.core import optim


@struct.dataclass
class TrainState:
    """Everything a run carries from step to step. Definitions (model, optimizer) are code,
    rebuilt from the config; only arrays live here, so Orbax saves and restores all of it.

    `params` is what the optimizer updates; `extra` is the family's own state outside the
    gradient (a tokenizer's codebook statistics, a VQGAN's discriminator and LeCam anchors;
    `{}` for a prior), a dict whose top-level keys `Family.init_from_extra` names.
    """

    step: jax.Array  # int32 scalar: steps done
    seed: jax.Array  # uint32 scalar; the step's rng is fold_in(key(seed), step)
    params: Any
    opt_state: Any
    extra: Any
    # Exponential moving average of `params` (`optim.params_ema_decay > 0`), else None;
    # evaluation and the saved model's users read it when present.
    ema_params: Any = None

    @classmethod
    def create(cls, *, seed: int, params: Any, tx, extra: Any = None,
               params_ema_decay: float = 0.0) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), seed=jnp.asarray(seed, jnp.uint32), params=params,
                   opt_state=tx.init(params), extra={} if extra is None else extra,
                   ema_params=optim.init_ema_params(params, params_ema_decay))

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.seed), self.step)

    @property
    def eval_params(self) -> Any:
        """The weight average when kept, else the parameters."""
        return self.params if self.ema_params is None else self.ema_params
