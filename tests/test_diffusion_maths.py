"""Diffusion maths against closed forms, numpy/scipy and diffusers' schedulers.

Gaussian data x_0 ~ N(mu, S) has a closed-form optimal denoiser, E[x_0 | x_t] =
mu + sqrt(ab) S (ab S + (1 - ab) I)^-1 (x_t - sqrt(ab) mu), so samplers driven by it must return
the data's mean and covariance, and the bound's terms have closed forms.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vqjax.diffusion import process, samplers
from vqjax.diffusion.schedules import make_schedule, sampling_timesteps

T = 1000
MU = np.array([0.3, -0.2])
COV = np.array([[0.25, 0.1], [0.1, 0.15]])


def _gaussian_denoiser(schedule, mu=MU, cov=COV, prediction="eps"):
    """The exact eps (or x0 / v) prediction for x_0 ~ N(mu, cov), data of shape [B, d]: in the
    eigenbasis of cov, E[x_0 | x_t] shrinks each coordinate by sqrt(ab) l / (ab l + 1 - ab)."""
    eigenvalues, basis = np.linalg.eigh(np.asarray(cov, np.float64))
    mu, eigenvalues, basis = (jnp.asarray(a, jnp.float32) for a in (mu, eigenvalues, basis))

    def denoise(x, t):
        ab = schedule.alpha_bar(t)[:, None]
        gain = jnp.sqrt(ab) * eigenvalues / (ab * eigenvalues + 1 - ab)
        x0 = mu + ((x - jnp.sqrt(ab) * mu) @ basis * gain) @ basis.T
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
        return {"eps": eps, "x0": x0, "v": jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0}[prediction]

    return denoise


def _posterior_mean_covariance(alpha_bar, cov=COV):
    """Cov(E[x_0 | x_t]) = ab S (ab S + (1 - ab) I)^-1 S: what a sampler that solves exactly down
    to its last timestep and returns the model's x_0 there gives (S itself as ab -> 1)."""
    return alpha_bar * cov @ np.linalg.solve(alpha_bar * cov + (1 - alpha_bar) * np.eye(len(cov)), cov)


# ----------------------------------------------------------------------------------------
# Schedules and timesteps: diffusers' values.


@pytest.mark.parametrize("ours, theirs, kwargs", [
    ("linear", "linear", dict(beta_start=1e-4, beta_end=0.02)),
    ("sqrt_linear", "scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
    ("cosine", "squaredcos_cap_v2", {}),
])
def test_schedules_equal_diffusers(ours, theirs, kwargs):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, **kwargs)
    schedule = make_schedule(ours, T, **kwargs)
    np.testing.assert_allclose(schedule.betas, reference.betas.numpy(), rtol=1e-5)
    np.testing.assert_allclose(schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=1e-4)


def test_cosine_schedule_is_the_closed_form():
    steps = np.arange(T + 1) / T
    f = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(make_schedule("cosine", T).alphas_cumprod[:900], (f[1:] / f[0])[:900], rtol=1e-5)


@pytest.mark.parametrize("spacing, scheduler, settings", [
    ("uniform", "DDIMScheduler", dict(timestep_spacing="leading")),
    ("linspace", "DPMSolverMultistepScheduler", dict(timestep_spacing="linspace")),
    ("trailing", "DDIMScheduler", dict(timestep_spacing="trailing")),
])
@pytest.mark.parametrize("steps", [10, 50, 999])
def test_timestep_spacings_equal_diffusers(spacing, scheduler, settings, steps):
    diffusers = pytest.importorskip("diffusers")
    reference = getattr(diffusers, scheduler)(num_train_timesteps=T, **settings)
    reference.set_timesteps(steps)
    np.testing.assert_array_equal(sampling_timesteps(T, steps, spacing), reference.timesteps.numpy())


def test_quadratic_spacing_is_ddims():
    expected = (np.linspace(0, np.sqrt(0.8 * T), 20) ** 2).astype(int)[::-1]
    np.testing.assert_array_equal(sampling_timesteps(T, 20, "quadratic"), expected)


def test_bad_names_and_step_counts_are_sentences():
    with pytest.raises(ValueError, match="Unknown noise schedule 'cosin'; choose one of"):
        make_schedule("cosin")
    with pytest.raises(ValueError, match="between 1 and 1000 .* not 1001"):
        sampling_timesteps(T, 1001)
    with pytest.raises(ValueError, match="Unknown timestep spacing"):
        sampling_timesteps(T, 10, "leading")
    with pytest.raises(ValueError, match="Unknown prediction 'epsilon'"):
        process.target(make_schedule(), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 2)), "epsilon")
    with pytest.raises(ValueError, match="Unknown sampler 'euler'"):
        samplers.sample(lambda x, t: x, make_schedule(), jnp.zeros((1, 2)), np.array([5, 0]), jax.random.key(0),
                        sampler="euler")


# ----------------------------------------------------------------------------------------
# The forward process and its posterior: closed forms.


def test_forward_process_moments():
    schedule = make_schedule("linear", T)
    x0 = jnp.full((200_000, 1), 0.7)
    for t in (0, 250, 999):
        noise = jax.random.normal(jax.random.key(t), x0.shape)
        x_t = np.asarray(process.q_sample(schedule, x0, jnp.full((x0.shape[0],), t), noise))
        ab = float(np.cumprod(1 - np.linspace(1e-4, 0.02, T))[t])
        assert abs(x_t.mean() - math.sqrt(ab) * 0.7) < 5 * math.sqrt((1 - ab) / x0.shape[0])
        assert abs(x_t.var() / (1 - ab) - 1) < 0.01


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from q(x_{t-1} | x_0) q(x_t | x_{t-1}) by completing the square."""
    schedule = make_schedule("linear", T)
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    x0, x_t = np.array([[0.5], [-0.3], [0.9]]), np.array([[0.1], [1.2], [-0.7]])
    t = np.array([1, 400, 999])
    prior_var, step_var = 1 - ab[t - 1], betas[t]
    precision = 1 / prior_var + (1 - step_var) / step_var
    mean = (np.sqrt(ab[t - 1]) / prior_var * x0[:, 0] + np.sqrt(1 - step_var) / step_var * x_t[:, 0]) / precision
    got_mean, got_var = process.posterior(schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), t)
    np.testing.assert_allclose(got_mean[:, 0], mean, rtol=1e-3)  # float32 schedule: 1 - ab ~ 2e-4 at t=1
    np.testing.assert_allclose(got_var[:, 0], 1 / precision, rtol=1e-3)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_prediction_recovers_x0_and_eps(prediction):
    schedule = make_schedule("cosine", T)
    rng = np.random.default_rng(0)
    x0, eps = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
    t = jnp.array([0, 10, 500, 998])
    x_t = process.q_sample(schedule, x0, t, eps)
    output = process.target(schedule, x0, t, eps, prediction)
    got_x0, got_eps = process.x0_and_eps(schedule, x_t, t, output, prediction)
    np.testing.assert_allclose(got_x0, x0, atol=2e-3)
    np.testing.assert_allclose(got_eps, eps, atol=2e-3)
    if prediction == "v":  # Salimans & Ho's definition, written out
        ab = np.asarray(schedule.alphas_cumprod)[np.asarray(t)][:, None]
        np.testing.assert_allclose(output, np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# The bound: scipy and closed forms.


def test_discretised_gaussian_likelihood_is_the_bins_probability():
    levels = np.linspace(-1, 1, 256)
    x = levels[[0, 1, 100, 254, 255]]
    # (Bins below e^-27.6 are clamped there, as in improved-diffusion: kept away from here.)
    mean, log_scale = np.array([-0.9, 0.0, 0.2, 0.95, 0.3]), np.array([-2.0, -1.0, -1.5, -2.5, 0.0])
    scale = np.exp(log_scale)
    upper = np.where(x > 0.999, np.inf, x + 1 / 255)
    lower = np.where(x < -0.999, -np.inf, x - 1 / 255)
    expected = np.log(stats.norm.cdf(upper, mean, scale) - stats.norm.cdf(lower, mean, scale))
    got = process.discretized_gaussian_log_likelihood(*(jnp.asarray(a, jnp.float32) for a in (x, mean, log_scale)))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert np.isclose(np.exp(expected).sum(), np.exp(got).sum())
    # The 256 bins of one Gaussian hold all its mass.
    total = np.exp(process.discretized_gaussian_log_likelihood(jnp.asarray(levels, jnp.float32), 0.1, -1.5)).sum()
    assert abs(total - 1) < 1e-4


def test_likelihood_of_scaled_residuals_is_the_pixels_bins_probability():
    """x = s (pixels - offset), a super-resolution residual: the bins are s x 2/255 wide and outer
    where the pixels are, so the probability is that of each pixel's bin under the Gaussian
    mapped back to pixel space (scipy, in pixel units)."""
    levels = np.linspace(-1, 1, 256)
    pixels = levels[[0, 3, 128, 250, 255]]
    offset = np.array([-0.97, 0.1, 0.02, 0.9, 0.8])  # an upsampled low-resolution image
    mean_pixels, scale_pixels = np.array([-0.95, -0.95, 0.0, 0.99, 0.9]), np.array([0.05, 0.1, 0.02, 0.04, 0.3])
    s = 7.5
    upper = np.where(pixels > 0.999, np.inf, pixels + 1 / 255)
    lower = np.where(pixels < -0.999, -np.inf, pixels - 1 / 255)
    expected = np.log(stats.norm.cdf(upper, mean_pixels, scale_pixels) - stats.norm.cdf(lower, mean_pixels, scale_pixels))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = process.discretized_gaussian_log_likelihood(f32(s * (pixels - offset)), f32(s * (mean_pixels - offset)),
                                                      f32(np.log(s * scale_pixels)), pixels=f32(pixels), pixel_scale=s)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_residual_clipping_keeps_images_in_range():
    """A pair of bounds clips elementwise, True clips to [-1, 1], False leaves x_0 alone."""
    x0 = jnp.asarray([[-3.0, 0.5, 2.0]])
    lower, upper = jnp.asarray([[-1.0, 0.75, -2.0]]), jnp.asarray([[1.0, 0.9, 1.5]])
    np.testing.assert_array_equal(samplers.clip_prediction(x0, (lower, upper)), [[-1.0, 0.75, 1.5]])
    np.testing.assert_array_equal(samplers.clip_prediction(x0, True), [[-1.0, 0.5, 1.0]])
    np.testing.assert_array_equal(samplers.clip_prediction(x0, False), x0)


def test_normal_kl_matches_scipy_monte_carlo():
    samples = stats.norm(0.3, 0.8).rvs(400_000, random_state=0)
    mc = np.mean(stats.norm(0.3, 0.8).logpdf(samples) - stats.norm(-0.1, 1.3).logpdf(samples))
    got = process.normal_kl(0.3, 2 * np.log(0.8), -0.1, 2 * np.log(1.3))
    assert abs(float(got) - mc) < 3e-3


def test_bound_terms_of_the_optimal_model_on_gaussian_data_are_the_closed_form():
    """1-D data N(m, s^2), the optimal model with the posterior's variance: L_t (t > 0) =
    c0^2 Var[x_0 | x_t] / (2 var_q) nats, and L_T = KL(N(sqrt(ab) m, ab s^2 + 1 - ab) || N(0, 1))."""
    m, s2 = 0.2, 0.09
    schedule = make_schedule("linear", T)
    denoise = _gaussian_denoiser(schedule, mu=[m], cov=[[s2]])
    n = 50_000
    x0 = m + math.sqrt(s2) * jax.random.normal(jax.random.key(1), (n, 1))
    betas = np.linspace(1e-4, 0.02, T)
    ab = np.cumprod(1 - betas)
    for t in (1, 30, 300, 900):
        noise = jax.random.normal(jax.random.key(100 + t), x0.shape)
        got = process.bound_term_bits_per_dim(denoise, schedule, x0, jnp.full((n,), t), noise)
        c0 = np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])
        var_q = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
        var_x0 = s2 * (1 - ab[t]) / (ab[t] * s2 + 1 - ab[t])
        expected = c0 ** 2 * var_x0 / (2 * var_q) / math.log(2)
        assert abs(float(jnp.mean(got)) / expected - 1) < 0.03, t
    prior = float(jnp.mean(process.prior_bits_per_dim(schedule, x0)))
    var_T = ab[-1] * s2 + 1 - ab[-1]
    expected_prior = 0.5 * (ab[-1] * m ** 2 + var_T - 1 - np.log(1 - ab[-1])) / math.log(2)
    # E over x_0 of KL(N(sqrt(ab) x_0, 1 - ab) || N(0, 1)).
    assert abs(prior - expected_prior) < 1e-3 * max(1.0, expected_prior) + 2e-6


def test_bits_per_dim_estimate_is_unbiased():
    """The stratified estimate averages to the full sum over all T terms (computed separately,
    every timestep enumerated, with the same x_0), and with T - 1 draws it is that sum."""
    schedule = make_schedule("linear", 100, beta_start=1e-3, beta_end=0.1)
    denoise = _gaussian_denoiser(schedule)
    levels = np.linspace(-1, 1, 256)
    rng = np.random.default_rng(0)
    x0_np = levels[np.clip(np.round((rng.multivariate_normal(MU, COV, 64) + 1) * 127.5), 0, 255).astype(int)]
    x0 = jnp.asarray(x0_np, jnp.float32)

    @jax.jit
    def term(t, key):  # L_t, averaged over 8 noise draws
        noise = jax.random.normal(key, (8,) + x0.shape)
        return jnp.mean(jax.vmap(lambda z: process.bound_term_bits_per_dim(
            denoise, schedule, x0, jnp.full((64,), t), z))(noise), axis=0)

    full = process.prior_bits_per_dim(schedule, x0) + sum(term(t, jax.random.key(t)) for t in range(100))
    estimate = jnp.mean(jax.jit(jax.vmap(lambda key: process.bits_per_dim_estimate(
        denoise, schedule, x0, key, num_timesteps=10)))(jax.random.split(jax.random.key(7), 40)), axis=0)
    assert abs(float(jnp.mean(estimate)) / float(jnp.mean(full)) - 1) < 0.02
    every_timestep = process.bits_per_dim_estimate(denoise, schedule, x0, jax.random.key(8), num_timesteps=99)
    assert abs(float(jnp.mean(every_timestep)) / float(jnp.mean(full)) - 1) < 0.04  # one noise draw per term


# ----------------------------------------------------------------------------------------
# Samplers: diffusers' step functions, on the same model outputs.


def _toy_model(x, t):
    """A deterministic, nonlinear stand-in for a network, the same in numpy, torch and JAX."""
    return 0.6 * x + 0.3 * np.sin(3 * x) * np.cos(np.asarray(t, np.float32)[:, None] / 300)


def _torch_toy_model(torch, x, t):
    return 0.6 * x + 0.3 * torch.sin(3 * x) * math.cos(float(t) / 300)


@pytest.mark.parametrize("prediction, variance, clip", [
    ("eps", "fixed_small", True), ("v", "fixed_large", False), ("x0", "learned_range", False)])
def test_ddpm_steps_equal_diffusers(prediction, variance, clip):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    theirs = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[prediction]
    reference = diffusers.DDPMScheduler(num_train_timesteps=T, variance_type=variance, clip_sample=clip,
                                        prediction_type=theirs)
    reference.set_timesteps(25)
    schedule = make_schedule("linear", T)
    timesteps = sampling_timesteps(T, 25, "uniform")
    np.testing.assert_array_equal(timesteps, reference.timesteps.numpy())
    generator = torch.Generator().manual_seed(0)
    x_torch = torch.randn(4, 6, generator=generator)
    x = jnp.asarray(x_torch.numpy())
    for i, t in enumerate(timesteps):
        out_torch = _torch_toy_model(torch, x_torch, t)
        if variance == "learned_range":
            out_torch = torch.cat([out_torch, torch.tanh(out_torch)], dim=1)
        state = generator.get_state()
        x_torch = reference.step(out_torch, int(t), x_torch, generator=generator).prev_sample
        generator.set_state(state)
        noise = torch.randn(4, 6, generator=generator)  # the draw diffusers made
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x, _ = samplers.ddpm_step(schedule, x, jnp.asarray(out_torch.numpy()), jnp.full((4,), t), t_prev,
                                  jnp.asarray(noise.numpy()), prediction=prediction, variance=variance, clip_x0=clip)
        np.testing.assert_allclose(x, x_torch.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"step {i} (t={t})")


@pytest.mark.parametrize("eta, clip", [(0.0, False), (0.0, True), (0.7, True)])
def test_ddim_steps_equal_diffusers(eta, clip):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=clip, set_alpha_to_one=True)
    reference.set_timesteps(20)
    schedule = make_schedule("linear", T)
    timesteps = sampling_timesteps(T, 20, "uniform")
    rng = np.random.default_rng(0)
    x_torch = torch.from_numpy(rng.normal(size=(4, 6)).astype(np.float32))
    x = jnp.asarray(x_torch.numpy())
    for i, t in enumerate(timesteps):
        noise = rng.normal(size=(4, 6)).astype(np.float32)
        # With clipping, eps is re-derived from the clipped x_0 (diffusers' use_clipped_model_output).
        x_torch = reference.step(_torch_toy_model(torch, x_torch, t), int(t), x_torch, eta=eta,
                                 use_clipped_model_output=clip, variance_noise=torch.from_numpy(noise)).prev_sample
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        x, _ = samplers.ddim_step(schedule, x, _toy_model(x, np.full(4, t)), jnp.full((4,), t), t_prev,
                                  jnp.asarray(noise), eta=eta, clip_x0=clip)
        np.testing.assert_allclose(x, x_torch.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"step {i} (t={t})")


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_equals_diffusers(steps):
    """The whole DPM-Solver++(2M) loop (vqjax's lax.scan) against diffusers' multistep scheduler."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, algorithm_type="dpmsolver++",
                                                      solver_order=2, solver_type="midpoint")
    reference.set_timesteps(steps)
    timesteps = sampling_timesteps(T, steps, "linspace")
    np.testing.assert_array_equal(timesteps, reference.timesteps.numpy())
    x_T = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    x_torch = torch.from_numpy(x_T)
    for t in reference.timesteps:
        x_torch = reference.step(_torch_toy_model(torch, x_torch, int(t)), t, x_torch).prev_sample
    got = samplers.sample(lambda x, t: 0.6 * x + 0.3 * jnp.sin(3 * x) * jnp.cos(t[:, None] / 300),
                          make_schedule("linear", T), jnp.asarray(x_T), timesteps, jax.random.key(0),
                          sampler="dpm_solver", clip_x0=False)
    np.testing.assert_allclose(got, x_torch.numpy(), rtol=1e-4, atol=1e-4)


def test_ddim_with_eta_one_over_every_step_is_ddpm():
    """DDIM with eta 1 on all T timesteps is DDPM's ancestral step (Song et al. 2021, sec. 4.1):
    the same mean (the posterior's) and the same noise scale."""
    schedule = make_schedule("linear", T)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    output = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    t = jnp.array([999, 500, 100, 5, 1])
    for z in (jnp.zeros_like(noise), noise):
        ddim, _ = samplers.ddim_step(schedule, x, output, t, t - 1, z, eta=1.0, clip_x0=False)
        ddpm, _ = samplers.ddpm_step(schedule, x, output, t, t - 1, z, clip_x0=False)
        np.testing.assert_allclose(ddim, ddpm, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Whole samplers on Gaussian data.


@pytest.mark.parametrize("sampler, steps, spacing, prediction", [
    ("ddpm", 1000, "uniform", "eps"), ("ddim", 250, "uniform", "v"), ("ddim", 100, "quadratic", "eps"),
    ("dpm_solver", 20, "linspace", "x0")])
def test_samplers_reproduce_gaussian_data(sampler, steps, spacing, prediction):
    """Each sampler returns the data's mean, and its covariance up to what its last step leaves:
    returning the model's x_0 from the last timestep (t = 50 for DPM-Solver's 20 linspace steps,
    t = 0 otherwise) gives Cov(E[x_0 | x_t]) there. The tolerance holds DDIM's discretisation
    error at these step counts (at 50 uniform steps it shrinks the variance 11%)."""
    schedule = make_schedule("linear", T)
    n = 20_000
    x_T = jax.random.normal(jax.random.key(0), (n, 2))
    run = jax.jit(lambda x, key: samplers.sample(
        _gaussian_denoiser(schedule, prediction=prediction), schedule, x, sampling_timesteps(T, steps, spacing),
        key, sampler=sampler, prediction=prediction, clip_x0=False))
    x0 = np.asarray(run(x_T, jax.random.key(1)))
    last = sampling_timesteps(T, steps, spacing)[-1]
    np.testing.assert_allclose(x0.mean(0), MU, atol=0.01)
    np.testing.assert_allclose(np.cov(x0.T), _posterior_mean_covariance(float(schedule.alphas_cumprod[last])),
                               atol=0.01)


def test_ddim_is_deterministic_and_inverts():
    """eta = 0 sampling ignores the rng, and DDIM inversion then sampling returns the data up to an
    error of first order in the step size (it halves when the steps double)."""
    schedule = make_schedule("linear", T)
    denoise = _gaussian_denoiser(schedule)
    x0 = jnp.asarray(np.random.default_rng(0).multivariate_normal(MU, COV, 64), jnp.float32)
    errors = {}
    for steps in (250, 500):
        timesteps = sampling_timesteps(T, steps, "uniform")
        x_T = samplers.ddim_invert(denoise, schedule, x0, timesteps)
        assert float(jnp.std(x_T)) > 0.9  # the inversion reached noise, not the data
        run = lambda key: samplers.sample(denoise, schedule, x_T, timesteps, key, sampler="ddim", clip_x0=False)
        first, second = run(jax.random.key(0)), run(jax.random.key(1))
        np.testing.assert_array_equal(first, second)
        errors[steps] = float(jnp.max(jnp.abs(first - x0)))
    assert errors[500] < 0.015
    assert 1.7 < errors[250] / errors[500] < 2.3


def test_inpainting_keeps_the_known_part_and_conditions_the_rest():
    """Coordinates 0 known, 1 generated, of correlated Gaussian data: the known coordinate comes
    back as given, and the generated one moves from its prior law towards the conditional one,
    mean mu_1 + c / s_0 (x_0 - mu_0). Only part of the way: replacing the known part by its
    re-noised value at every step conditions the rest approximately (Lugmayr et al. 2022 resample
    to do better), which this test pins so that a change shows."""
    schedule = make_schedule("linear", T)
    n = 10_000
    known = jnp.tile(jnp.array([[0.8, 0.0]]), (n, 1))
    mask = jnp.array([1.0, 0.0])
    x0 = np.asarray(samplers.sample(_gaussian_denoiser(schedule), schedule, jax.random.normal(jax.random.key(0), (n, 2)),
                                    sampling_timesteps(T, 250, "uniform"), jax.random.key(1), sampler="ddpm",
                                    clip_x0=False, known=known, mask=mask))
    np.testing.assert_allclose(x0[:, 0], 0.8, atol=1e-5)
    conditional_mean = MU[1] + COV[0, 1] / COV[0, 0] * (0.8 - MU[0])
    moved = (x0[:, 1].mean() - MU[1]) / (conditional_mean - MU[1])
    assert 0.4 < moved < 1.0
    conditional_var = COV[1, 1] - COV[0, 1] ** 2 / COV[0, 0]
    assert conditional_var * 0.9 < x0[:, 1].var() < COV[1, 1] * 1.05


def test_sdedit_distance_to_the_image_grows_with_strength():
    schedule = make_schedule("linear", T)
    image = jnp.asarray(np.random.default_rng(0).multivariate_normal(MU, COV, 512), jnp.float32)
    all_steps = sampling_timesteps(T, 50, "uniform")
    np.testing.assert_array_equal(samplers.sdedit_timesteps(all_steps, 0.1, T), [100, 80, 60, 40, 20, 0])

    def distance(strength):
        out = samplers.sample(_gaussian_denoiser(schedule), schedule, jax.random.normal(jax.random.key(0), image.shape),
                              samplers.sdedit_timesteps(all_steps, strength, T), jax.random.key(1), sampler="ddim",
                              clip_x0=False, start_image=image)
        return float(jnp.sqrt(jnp.mean(jnp.square(out - image))))

    low, middle, full = distance(0.1), distance(0.4), distance(1.0)
    assert 0 < low < middle < full
    assert low < 0.5 * full  # strength 1 is generation from noise, unrelated to the image
    with pytest.raises(ValueError, match="strength must be in"):
        samplers.sdedit_timesteps(all_steps, 0.0, T)


def test_classifier_free_guidance_formula():
    model = lambda x, t, labels: x * (1.0 + labels[:, None].astype(jnp.float32))
    x, t, labels = jnp.ones((3, 2)), jnp.zeros((3,), jnp.int32), jnp.array([1, 2, 3])
    guided = samplers.classifier_free_guidance(model, labels, null_label=0, scale=3.0)(x, t)
    cond, uncond = np.asarray(model(x, t, labels)), np.asarray(model(x, t, jnp.zeros(3, jnp.int32)))
    np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond))
