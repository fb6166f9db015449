"""Optimizers and learning-rate schedules from a config's `optim` section, and the weight
average (an exponential moving average of the parameters)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def init_ema_params(params: Any, decay: float) -> Any:
    """The initial weight average (a copy of `params`), or None when averaging is off."""
    return jax.tree.map(jnp.copy, params) if decay > 0 else None


def update_ema_params(ema_params: Any, params: Any, decay: float) -> Any:
    if ema_params is None:
        return None
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def peak_learning_rate(cfg, global_batch_size: int) -> float:
    """`cfg.learning_rate`, or taming's `base_lr * global batch` with `cfg.scale_lr_by_batch`
    (taming's main.py: accumulate_grad_batches * ngpu * batch_size * base_learning_rate)."""
    lr = float(cfg.learning_rate)
    return lr * global_batch_size if cfg.get("scale_lr_by_batch", False) else lr


def make_schedule(cfg, num_steps: int, global_batch_size: int = 1) -> optax.Schedule:
    """Linear warm-up, then constant or cosine decay to `cfg.final_lr_fraction` of the peak."""
    warmup = int(cfg.get("warmup_steps", 0))
    peak = peak_learning_rate(cfg, global_batch_size)
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


def decay_kernels_only(params: Any) -> Any:
    """Weight-decay mask of minGPT / taming's transformer: dense kernels decay; biases,
    LayerNorm scales and embeddings do not."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(cfg, num_steps: int, global_batch_size: int = 1,
                   decay_mask: Any = None) -> optax.GradientTransformation:
    """Adam or AdamW from `config.optim` (or `config.optim_d`), with optional global-norm
    clipping; `global_batch_size` matters only with `cfg.scale_lr_by_batch`; `decay_mask`
    (AdamW) selects the parameters that decay (default: all)."""
    schedule = make_schedule(cfg, num_steps, global_batch_size)
    if cfg.name == "adam":
        tx = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8))
    elif cfg.name == "adamw":
        tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8),
                         weight_decay=cfg.weight_decay, mask=decay_mask)
    else:
        raise ValueError(f"config.optim.name is {cfg.name!r}; use 'adam' or 'adamw'.")
    if cfg.get("grad_clip_norm", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx


def count_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
