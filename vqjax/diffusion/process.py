"""The forward process, its posterior, what a model predicts, and the training objectives.

Notation (0-indexed timesteps t = 0 .. T-1, `ab` = alpha_bar_t, `ab_prev` = alpha_bar_{t-1} with
alpha_bar_{-1} = 1):
  q(x_t | x_0)          = N(sqrt(ab) x_0, (1 - ab) I)                      (Ho et al. 2020, eq. 4)
  q(x_prev | x_t, x_0)  = N(c0 x_0 + ct x_t, var),  beta = 1 - ab / ab_prev,
                          c0 = sqrt(ab_prev) beta / (1 - ab), ct = sqrt(1 - beta) (1 - ab_prev) / (1 - ab),
                          var = (1 - ab_prev) / (1 - ab) beta                 (eq. 6, 7)
  x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps,   v = sqrt(ab) eps - sqrt(1 - ab) x_0   (Salimans & Ho 2022)
Strided samplers use the same formulas with t_prev in place of t - 1. Every function takes the
timesteps as int arrays and broadcasts over the batch's leading axis.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp

from vqjax.diffusion.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """[B] (or scalar) -> [B, 1, ..., 1] to broadcast against `like`."""
    values = jnp.broadcast_to(values, like.shape[:1])
    return values.reshape(values.shape + (1,) * (like.ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t ~ q(x_t | x_0) given the noise."""
    ab = per_example(schedule.alpha_bar(t), x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise


def posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array,
              t_prev: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_{t_prev} | x_t, x_0) (t_prev defaults to t - 1)."""
    t = jnp.asarray(t, jnp.int32)
    t_prev = t - 1 if t_prev is None else jnp.asarray(t_prev, jnp.int32)
    ab, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    beta = 1 - ab / ab_prev
    c0 = jnp.sqrt(ab_prev) * beta / (1 - ab)
    ct = jnp.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
    mean = per_example(c0, x0) * x0 + per_example(ct, x_t) * x_t
    return mean, per_example((1 - ab_prev) / (1 - ab) * beta, x0)


def x0_and_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array,
               prediction: str) -> tuple[jax.Array, jax.Array]:
    """(x_0, eps) implied by a model's output, whichever of eps, x_0 or v it predicts."""
    ab = per_example(schedule.alpha_bar(t), x_t)
    signal, noise_level = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    if prediction == "eps":
        return (x_t - noise_level * output) / signal, output
    if prediction == "x0":
        return output, (x_t - signal * output) / noise_level
    if prediction == "v":
        return signal * x_t - noise_level * output, noise_level * x_t + signal * output
    raise ValueError(f"Unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    ab = per_example(schedule.alpha_bar(t), x_t)
    return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)


def target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, prediction: str) -> jax.Array:
    """What a model of the given prediction type regresses on for (x_0, t, noise)."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        ab = per_example(schedule.alpha_bar(t), x0)
        return jnp.sqrt(ab) * noise - jnp.sqrt(1 - ab) * x0
    raise ValueError(f"Unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


def simple_loss(schedule: Schedule, output: jax.Array, x0: jax.Array, t: jax.Array, noise: jax.Array,
                prediction: str) -> jax.Array:
    """L_simple per example: the mean squared error of the prediction over its dimensions."""
    error = jnp.square(output.astype(jnp.float32) - target(schedule, x0, t, noise, prediction))
    return jnp.mean(error, axis=tuple(range(1, x0.ndim)))


# ----------------------------------------------------------------------------------------
# The variational bound.


def model_log_variance(schedule: Schedule, t: jax.Array, like: jax.Array, variance: str,
                       variance_output: Optional[jax.Array] = None) -> jax.Array:
    """log of p(x_{t-1} | x_t)'s variance on the full chain, as improved-diffusion defines it:
    fixed_small = the posterior's (its t = 0 value replaced by t = 1's, which is 0 otherwise),
    fixed_large = beta_t (beta_1 at t = 0's place is the posterior's at t = 1), learned_range =
    interpolation between the two logs with weight (v + 1) / 2 from the model's extra output."""
    t = jnp.asarray(t, jnp.int32)
    ab = schedule.alphas_cumprod
    ab_prev = jnp.concatenate([jnp.ones((1,), ab.dtype), ab[:-1]])
    posterior_variance = (1 - ab_prev) / (1 - ab) * schedule.betas
    small = jnp.log(jnp.concatenate([posterior_variance[1:2], posterior_variance[1:]]))
    large = jnp.log(jnp.concatenate([posterior_variance[1:2], schedule.betas[1:]]))
    if variance == "fixed_small":
        return per_example(small[t], like) + jnp.zeros_like(like)
    if variance == "fixed_large":
        return per_example(large[t], like) + jnp.zeros_like(like)
    if variance == "learned_range":
        frac = (variance_output + 1) / 2
        return frac * per_example(large[t], like) + (1 - frac) * per_example(small[t], like)
    raise ValueError(f"Unknown model variance {variance!r}; choose one of {', '.join(VARIANCES)}.")


def normal_kl(mean1, log_var1, mean2, log_var2) -> jax.Array:
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise, in nats."""
    return 0.5 * (log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-log_var2) - 1.0)


def _standard_normal_cdf(x):
    return 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array, *,
                                        pixels: Optional[jax.Array] = None, pixel_scale=1.0) -> jax.Array:
    """log P(x) per element, for x on the 256 levels of [-1, 1] (bins of width 2/255), under
    N(mean, exp(log_scale)^2) integrated over each bin; the outer bins extend to +-infinity
    (Ho et al. 2020, eq. 13).

    Data that are an affine map of 8-bit pixels, x = pixel_scale x (pixels - offset) (a
    super-resolution residual), have bins pixel_scale x 2/255 wide, outer where `pixels` are:
    the same probabilities of the same pixels."""
    pixels = x if pixels is None else pixels
    half_bin = pixel_scale / 255
    centered = x - mean
    inv_scale = jnp.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_scale * (centered + half_bin))
    cdf_minus = _standard_normal_cdf(inv_scale * (centered - half_bin))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_minus = jnp.log(jnp.maximum(1.0 - cdf_minus, 1e-12))
    log_bin = jnp.log(jnp.maximum(cdf_plus - cdf_minus, 1e-12))
    return jnp.where(pixels < -0.999, log_cdf_plus, jnp.where(pixels > 0.999, log_one_minus_cdf_minus, log_bin))


def prior_bits_per_dim(schedule: Schedule, x0: jax.Array) -> jax.Array:
    """L_T per example: KL(q(x_T | x_0) || N(0, I)) in bits per dimension."""
    t_last = jnp.full(x0.shape[:1], schedule.num_timesteps - 1)
    ab = per_example(schedule.alpha_bar(t_last), x0)
    kl = normal_kl(jnp.sqrt(ab) * x0, jnp.log(1 - ab), 0.0, 0.0)
    return jnp.mean(kl, axis=tuple(range(1, x0.ndim))) / math.log(2.0)


def vlb_term_bits_per_dim(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array,
                          model_x0: jax.Array, model_log_var: jax.Array, *, pixels: Optional[jax.Array] = None,
                          pixel_scale=1.0) -> jax.Array:
    """One term of the bound per example, in bits per dimension: L_{t} = KL(q(x_{t-1} | x_t, x_0) ||
    p(x_{t-1} | x_t)) for t > 0 and the decoder's -log p(x_0 | x_1) (discretised) at t = 0. The
    model's mean is the posterior mean with its x_0 prediction in place of x_0. `pixels` and
    `pixel_scale`: x_0 = pixel_scale x (pixels - offset), as `discretized_gaussian_log_likelihood`."""
    true_mean, true_var = posterior(schedule, x0, x_t, t)
    model_mean, _ = posterior(schedule, model_x0, x_t, t)
    axes = tuple(range(1, x0.ndim))
    true_log_var = jnp.log(jnp.maximum(true_var, 1e-20))
    kl = jnp.mean(normal_kl(true_mean, true_log_var, model_mean, model_log_var), axis=axes)
    nll = -jnp.mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var, pixels=pixels,
                                                        pixel_scale=pixel_scale), axis=axes)
    return jnp.where(jnp.asarray(t) == 0, nll, kl) / math.log(2.0)


def bound_term_bits_per_dim(denoise, schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array, *,
                            prediction: str = "eps", variance: str = "fixed_small",
                            pixels: Optional[jax.Array] = None, pixel_scale=1.0) -> jax.Array:
    """L_t per example (bits/dim) for timesteps t [B]: x_t drawn with `noise`, the model's x_0
    and variance from `denoise(x_t, t)`."""
    x_t = q_sample(schedule, x0, t, noise)
    output = denoise(x_t, t).astype(jnp.float32)
    variance_output = None
    if output.shape[-1] == 2 * x0.shape[-1]:
        output, variance_output = output[..., :x0.shape[-1]], output[..., x0.shape[-1]:]
    model_x0, _ = x0_and_eps(schedule, x_t, t, output, prediction)
    log_var = model_log_variance(schedule, t, x0, variance, variance_output)
    return vlb_term_bits_per_dim(schedule, x0, x_t, t, model_x0, log_var, pixels=pixels, pixel_scale=pixel_scale)


def bits_per_dim_estimate(denoise, schedule: Schedule, x0: jax.Array, rng: jax.Array, *, num_timesteps: int = 1,
                          prediction: str = "eps", variance: str = "fixed_small",
                          pixels: Optional[jax.Array] = None, pixel_scale=1.0) -> jax.Array:
    """An unbiased estimate of the negative VLB in bits/dim per example: L_T and the decoder term
    L_0 exactly, plus (T - 1) x the mean of L_t over `num_timesteps` timesteps of [1, T), one
    drawn uniformly in each of as many equal strata (so `num_timesteps = T - 1` is the whole
    bound). Drawing t = 0 uniformly instead would weigh the decoder term by T once in T draws,
    an estimate whose spread is bits per dimension over a test set. `pixels`, `pixel_scale`: for
    x_0 an affine map of 8-bit pixels (`discretized_gaussian_log_likelihood`)."""
    num_t = schedule.num_timesteps
    k = min(int(num_timesteps), num_t - 1)
    batch = x0.shape[:1]
    decoder_key, strata_key, noise_key = jax.random.split(rng, 3)
    term = functools.partial(bound_term_bits_per_dim, denoise, schedule, x0, prediction=prediction,
                             variance=variance, pixels=pixels, pixel_scale=pixel_scale)
    exact = prior_bits_per_dim(schedule, x0) + term(jnp.zeros(batch, jnp.int32),
                                                    jax.random.normal(decoder_key, x0.shape))
    offsets = jax.random.uniform(strata_key, (k,) + batch)
    strata = jnp.arange(k, dtype=jnp.float32)[:, None]
    timesteps = 1 + jnp.floor((strata + offsets) * (num_t - 1) / k).astype(jnp.int32)

    def add_draw(total, inputs):  # a scan: one traced network whatever the number of draws
        t, key = inputs
        return total + term(jnp.minimum(t, num_t - 1), jax.random.normal(key, x0.shape)), None

    draws, _ = jax.lax.scan(add_draw, jnp.zeros(batch, jnp.float32),
                            (timesteps, jax.random.split(noise_key, k)))
    return exact + (num_t - 1) * draws / k
