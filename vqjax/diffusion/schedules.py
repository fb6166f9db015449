"""Noise schedules and the timesteps a sampler visits.

A schedule is the cumulative signal level alpha_bar_t = prod_{s <= t} (1 - beta_s) of the
discrete-time forward process q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I),
t = 0 .. T-1 (0-indexed, as in improved-diffusion and diffusers). Arrays are computed in float64
and kept in float32, the precision every sampler step uses.
"""

from __future__ import annotations

import math

import flax.struct
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine", "sqrt_linear")
SPACINGS = ("uniform", "quadratic", "linspace", "trailing")


@flax.struct.dataclass
class Schedule:
    """betas [T] and alphas_cumprod [T] (float32)."""

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def alpha_bar(self, t: jnp.ndarray) -> jnp.ndarray:
        """alpha_bar at integer timesteps t; t = -1 (before the first step) is 1, the clean data."""
        t = jnp.asarray(t, jnp.int32)
        return jnp.where(t >= 0, self.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def betas_for(name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
              cosine_offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """float64 betas of a named schedule.

    linear: DDPM's linspace(beta_start, beta_end) (1e-4 .. 0.02 at T = 1000).
    cosine: improved DDPM's alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi / 2), betas clipped at
        `max_beta`.
    sqrt_linear: latent diffusion's "linear", linear in sqrt(beta) (LDM uses 0.0015 .. 0.0195,
        Stable Diffusion 0.00085 .. 0.012; diffusers calls it scaled_linear).
    """
    if name == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if name == "sqrt_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2
    if name == "cosine":
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        alpha_bar = np.cos((steps + cosine_offset) / (1 + cosine_offset) * math.pi / 2) ** 2
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)
    raise ValueError(f"Unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}.")


def make_schedule(name: str = "linear", num_timesteps: int = 1000, **kwargs) -> Schedule:
    betas = betas_for(name, num_timesteps, **kwargs)
    return Schedule(betas=jnp.asarray(betas, jnp.float32),
                    alphas_cumprod=jnp.asarray(np.cumprod(1 - betas), jnp.float32))


def sampling_timesteps(num_timesteps: int, steps: int, spacing: str = "uniform") -> np.ndarray:
    """The `steps` timesteps a sampler visits, descending (int32).

    uniform: every (T // steps)-th timestep from 0 (DDIM's "uniform" skip; diffusers' "leading"
        with steps_offset 0); quadratic: DDIM's (linspace(0, sqrt(0.8 T), steps)^2); linspace:
        linspace(0, T - 1, steps + 1) rounded, without its last point (diffusers' "linspace", the
        DPM-Solver default); trailing: from T - 1 down in steps of T / steps.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"A sampler takes between 1 and {num_timesteps} steps (the model's training "
                         f"timesteps), not {steps}; pass steps <= {num_timesteps}.")
    if spacing == "uniform":
        timesteps = np.arange(steps) * (num_timesteps // steps)
    elif spacing == "quadratic":
        # As in DDIM's code, the first few may repeat (identity steps for every sampler).
        timesteps = (np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2).astype(np.int64)
    elif spacing == "linspace":
        timesteps = np.linspace(0, num_timesteps - 1, steps + 1).round()[1:]
    elif spacing == "trailing":
        timesteps = np.arange(num_timesteps, 0, -num_timesteps / steps).round()[::-1] - 1
    else:
        raise ValueError(f"Unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    return np.asarray(timesteps, np.int32)[::-1].copy()
