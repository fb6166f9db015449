"""Train-state pytrees and the optimizer built from `config.optim`."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import struct

from vqjax.quantizers import CodebookState


@struct.dataclass
class TrainState:
    """Everything a training run carries from step to step, as one pytree.

    The model and optimizer definitions are not here (they are code, rebuilt from the
    config); only arrays are, so Orbax saves and restores the whole state.
    """

    step: jax.Array  # int32 scalar
    seed: jax.Array  # uint32 scalar; the step's rng is fold_in(key(seed), step)
    params: Any  # network parameters
    opt_state: Any  # optax state over `trainable(state)`
    codebook: CodebookState  # EMA codebook or, for a learned codebook, its embedding + usage

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.seed), self.step)


def make_schedule(cfg, num_steps: int) -> optax.Schedule:
    """Linear warm-up, then constant or cosine decay to `cfg.final_lr_fraction` of the peak."""
    warmup = int(cfg.get("warmup_steps", 0))
    peak = float(cfg.learning_rate)
    if cfg.get("schedule", "constant") == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, max(1, num_steps - warmup),
                                           alpha=float(cfg.get("final_lr_fraction", 0.0)))
    else:
        raise ValueError(f"config.optim.schedule is {cfg.schedule!r}; use 'constant' or 'cosine'.")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def make_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
    """Adam or AdamW from `config.optim`, with optional global-norm clipping."""
    schedule = make_schedule(cfg, num_steps)
    if cfg.name == "adam":
        tx = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8))
    elif cfg.name == "adamw":
        tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8),
                         weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"config.optim.name is {cfg.name!r}; use 'adam' or 'adamw'.")
    if cfg.get("grad_clip_norm", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx


def count_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def is_learned_codebook(quantizer_cfg) -> bool:
    kinds = {"ema": False, "vq": True}
    if quantizer_cfg.kind not in kinds:
        raise ValueError(
            f"config.quantizer.kind is {quantizer_cfg.kind!r}; use 'ema' (EMA codebook) or "
            "'vq' (codebook learned by loss)."
        )
    return kinds[quantizer_cfg.kind]


def trainable(params: Any, codebook: CodebookState, learned_codebook: bool) -> dict:
    """What the optimizer updates: the network, plus the codebook when it is learned by loss."""
    if learned_codebook:
        return {"net": params, "codebook": codebook.embedding}
    return {"net": params}

