"""Samplers: one pure step function each, and one `lax.scan` loop that runs any of them.

- DDPM ancestral sampling (Ho et al. 2020): x_prev ~ p(x_prev | x_t) with the posterior mean of the
  predicted x_0 and a fixed (or learned) variance; on a strided subset of timesteps it uses the
  respaced chain's betas, 1 - alpha_bar_t / alpha_bar_prev (Nichol & Dhariwal 2021).
- DDIM (Song et al. 2021): x_prev = sqrt(ab_prev) x_0 + sqrt(1 - ab_prev - s^2) eps + s z,
  s = eta sqrt((1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)); eta = 0 is deterministic.
- DPM-Solver++(2M) (Lu et al. 2022): the multistep second-order solver of the probability-flow ODE
  in the data prediction, first order at the first step and at the last (to t = -1, the data).

A denoiser is `fn(x_t, t) -> output` (t int32 [B]); `classifier_free_guidance` makes one from a
conditional model. Every step computes in float32 from the schedule's float32 arrays. Options of
the loop: inpainting (pixels where `mask` is 1 are re-noised from `known` at every step, the rest
is generated) and starting from a partly noised image (SDEdit: `start_image`, with the timesteps
below a strength).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.diffusion import process
from vqjax.diffusion.schedules import Schedule

SAMPLERS = ("ddpm", "ddim", "dpm_solver")

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def _split_variance(output: jax.Array, channels: int) -> tuple[jax.Array, Optional[jax.Array]]:
    """A model with a learned variance outputs 2x the data's channels: (prediction, variance)."""
    if output.shape[-1] == 2 * channels:
        return output[..., :channels], output[..., channels:]
    return output, None


ClipX0 = Union[bool, tuple[jax.Array, jax.Array]]


def clip_prediction(x0: jax.Array, clip_x0: ClipX0) -> jax.Array:
    """x_0 within the data's range: [-1, 1] when `clip_x0` is True, elementwise (lower, upper)
    bounds when it is a pair (a residual's range is the pixels' range shifted by what it is
    added to), unchanged when False."""
    if isinstance(clip_x0, tuple):
        lower, upper = clip_x0
        return jnp.clip(x0, lower, upper)
    return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0


def predicted_x0_eps(schedule: Schedule, x_t, output, t, prediction: str, clip_x0: ClipX0):
    """(x_0, eps) of a model output; with `clip_x0` x_0 is clipped to the data's range
    (`clip_prediction`) and eps re-derived from it, so that the step is consistent with the
    clipped prediction."""
    x0, eps = process.x0_and_eps(schedule, x_t, t, output, prediction)
    if isinstance(clip_x0, tuple) or clip_x0:
        x0 = clip_prediction(x0, clip_x0)
        eps = process.eps_from_x0(schedule, x_t, t, x0)
    return x0, eps


def ddpm_step(schedule: Schedule, x_t, output, t, t_prev, noise, *, prediction: str = "eps",
              variance: str = "fixed_small", clip_x0: ClipX0 = True):
    """(x_prev, x_0): one ancestral step from t to t_prev (no noise is added into t_prev = -1)."""
    output, variance_output = _split_variance(output, x_t.shape[-1])
    x0, _ = predicted_x0_eps(schedule, x_t, output, t, prediction, clip_x0=False)
    x0 = clip_prediction(x0, clip_x0)
    mean, posterior_variance = process.posterior(schedule, x0, x_t, t, t_prev)
    ab, ab_prev = (process.per_example(schedule.alpha_bar(s), x_t) for s in (t, t_prev))
    beta = 1 - ab / ab_prev
    small = jnp.log(jnp.maximum(posterior_variance, 1e-20))
    if variance == "fixed_small":
        log_var = small
    elif variance == "fixed_large":
        log_var = jnp.log(beta)
    elif variance == "learned_range":
        frac = (variance_output + 1) / 2
        log_var = frac * jnp.log(beta) + (1 - frac) * small
    else:
        raise ValueError(f"Unknown model variance {variance!r}; choose one of {', '.join(process.VARIANCES)}.")
    not_last = process.per_example(jnp.asarray(t_prev) >= 0, x_t)
    return mean + jnp.where(not_last, jnp.exp(0.5 * log_var), 0.0) * noise, x0


def ddim_step(schedule: Schedule, x_t, output, t, t_prev, noise, *, prediction: str = "eps",
              eta: float = 0.0, clip_x0: ClipX0 = True):
    """(x_prev, x_0): one DDIM step from t to t_prev."""
    output, _ = _split_variance(output, x_t.shape[-1])
    x0, eps = predicted_x0_eps(schedule, x_t, output, t, prediction, clip_x0)
    ab, ab_prev = (process.per_example(schedule.alpha_bar(s), x_t) for s in (t, t_prev))
    std = eta * jnp.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    direction = jnp.sqrt(jnp.maximum(1 - ab_prev - jnp.square(std), 0.0)) * eps
    return jnp.sqrt(ab_prev) * x0 + direction + std * noise, x0


def _log_snr_half(schedule: Schedule, t, like):
    """(alpha, sigma, lambda = log(alpha / sigma)) at timesteps t; t = -1 is the data (sigma 0)."""
    ab = process.per_example(schedule.alpha_bar(t), like)
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    return alpha, sigma, jnp.log(alpha) - jnp.log(jnp.maximum(sigma, 1e-30))


def dpm_solver_step(schedule: Schedule, x_t, x0, x0_last, t, t_last, t_next, *, second_order):
    """x at t_next from x at t, the data prediction x0 there and x0_last at the previous step t_last
    (DPM-Solver++(2M), midpoint form). `second_order` False is the first-order step (DDIM's), which
    the first step and the step into t = -1 take."""
    alpha_n, sigma_n, lambda_n = _log_snr_half(schedule, t_next, x_t)
    _, sigma_s, lambda_s = _log_snr_half(schedule, t, x_t)
    _, _, lambda_l = _log_snr_half(schedule, t_last, x_t)
    h = lambda_n - lambda_s
    first = (sigma_n / sigma_s) * x_t - alpha_n * jnp.expm1(-h) * x0
    correction = -0.5 * alpha_n * jnp.expm1(-h) * (h / (lambda_s - lambda_l)) * (x0 - x0_last)
    into_data = process.per_example(jnp.asarray(t_next) < 0, x_t)
    # A repeated timestep (DDIM's quadratic spacing has some) has no slope to extrapolate.
    use_second = jnp.asarray(second_order) & ~into_data & (lambda_s != lambda_l)
    x_next = first + jnp.where(use_second, correction, 0.0)
    return jnp.where(into_data, x0, x_next)


def classifier_free_guidance(model: Callable, labels: jax.Array, null_label: int, scale: float) -> Denoiser:
    """A denoiser from model(x, t, labels): uncond + scale (cond - uncond) of the prediction (a
    learned variance, when there is one, comes from the conditional output). Both run as one
    batch. `scale` 1 is the conditional model alone."""

    def denoise(x, t):
        if scale == 1.0:
            return model(x, t, labels)
        both = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                     jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        cond, uncond = jnp.split(both, 2)
        channels = x.shape[-1]
        guided = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
        return jnp.concatenate([guided, cond[..., channels:]], axis=-1)

    return denoise


def ddim_invert(denoise: Denoiser, schedule: Schedule, x0: jax.Array, timesteps: np.ndarray, *,
                prediction: str = "eps") -> jax.Array:
    """x_T from data by DDIM's deterministic ODE run forward (Song et al. 2021, sec. 4.3): through
    the ascending reverse of a sampler's `timesteps`, so that DDIM (eta 0, no clipping) over the
    same timesteps maps it back to x0 up to discretisation error."""
    ascending = np.asarray(timesteps, np.int32)[::-1]
    previous = np.insert(ascending[:-1], 0, -1).astype(np.int32)  # where each step starts
    batch = x0.shape[0]

    def step(x, inputs):
        t_from, t_to = inputs
        # The model is evaluated where the step starts; from the data (t_from = -1) it sees the
        # data as x at t_to, and only its eps is used.
        t_eval = jnp.where(t_from < 0, t_to, t_from)
        tb = jnp.full((batch,), t_eval)
        x0_hat, eps = process.x0_and_eps(schedule, x, tb, denoise(x, tb).astype(jnp.float32), prediction)
        x0_hat = jnp.where(t_from < 0, x, x0_hat)
        ab_to = process.per_example(schedule.alpha_bar(t_to), x)
        return jnp.sqrt(ab_to) * x0_hat + jnp.sqrt(1 - ab_to) * eps, None

    x, _ = jax.lax.scan(step, x0.astype(jnp.float32), (jnp.asarray(previous), jnp.asarray(ascending)))
    return x


def sdedit_timesteps(timesteps: np.ndarray, strength: float, num_timesteps: int) -> np.ndarray:
    """The part of a descending timestep sequence at or below strength x T: image-to-image starts
    from the image noised to the first of them (strength 1 is generation from noise)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], not {strength}.")
    kept = timesteps[timesteps <= round(strength * (num_timesteps - 1))]
    if kept.size == 0:
        raise ValueError(f"strength {strength} leaves none of the {timesteps.size} timesteps; raise it or the steps.")
    return kept


def sample(denoise: Denoiser, schedule: Schedule, x_T: jax.Array, timesteps: np.ndarray, rng: jax.Array, *,
           sampler: str = "ddim", prediction: str = "eps", eta: float = 0.0, variance: str = "fixed_small",
           clip_x0: ClipX0 = True, known: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
           start_image: Optional[jax.Array] = None) -> jax.Array:
    """x_0 from x_T (or from `start_image` noised to timesteps[0]) through the descending
    `timesteps` (numpy, static), as one `lax.scan`.

    Inpainting: where `mask` is 1 (broadcast against x), x is replaced after every step by `known`
    noised to that step's timestep (fresh noise), so generated pixels are conditioned on them.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    timesteps = np.asarray(timesteps, np.int32)
    if timesteps.ndim != 1 or np.any(np.diff(timesteps) > 0) or timesteps[-1] < 0 \
            or timesteps[0] >= schedule.num_timesteps:
        raise ValueError(f"timesteps must descend within [0, {schedule.num_timesteps}) (a repeated one is "
                         f"an identity step); got {timesteps}.")
    t_prev = np.append(timesteps[1:], -1).astype(np.int32)
    batch = x_T.shape[0]
    x = x_T.astype(jnp.float32)
    known_key, step_key = jax.random.split(rng)
    if start_image is not None:
        x = process.q_sample(schedule, start_image.astype(jnp.float32), jnp.full((batch,), timesteps[0]), x)

    def keep_known(x, t, key):
        if known is None:
            return x
        noised = process.q_sample(schedule, known, jnp.full((batch,), t), jax.random.normal(key, x.shape))
        noised = jnp.where(t < 0, known, noised)
        return mask * noised + (1 - mask) * x

    x = keep_known(x, timesteps[0], known_key)

    def step(carry, inputs):
        x, x0_last = carry
        index, t, t_next, t_last = inputs
        key = jax.random.fold_in(step_key, index)
        tb = jnp.full((batch,), t)
        output = denoise(x, tb).astype(jnp.float32)
        noise = jax.random.normal(jax.random.fold_in(key, 0), x.shape)
        if sampler == "ddpm":
            x_next, x0 = ddpm_step(schedule, x, output, tb, t_next, noise, prediction=prediction,
                                   variance=variance, clip_x0=clip_x0)
        elif sampler == "ddim":
            x_next, x0 = ddim_step(schedule, x, output, tb, t_next, noise, prediction=prediction, eta=eta,
                                   clip_x0=clip_x0)
        else:
            output, _ = _split_variance(output, x.shape[-1])
            x0, _ = predicted_x0_eps(schedule, x, output, tb, prediction, clip_x0)
            x_next = dpm_solver_step(schedule, x, x0, x0_last, tb, t_last, t_next, second_order=index > 0)
        x_next = keep_known(x_next, t_next, jax.random.fold_in(key, 1))
        return (x_next, x0), None

    t_last = np.insert(timesteps[:-1], 0, timesteps[0]).astype(np.int32)
    steps = (jnp.arange(len(timesteps)), jnp.asarray(timesteps), jnp.asarray(t_prev), jnp.asarray(t_last))
    (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), steps)
    return x
