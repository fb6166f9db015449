"""Denoising diffusion: schedules, the forward process and its bound, and samplers (pure JAX,
no config objects), and `load` for a trained or converted model:

    model = vqjax.diffusion.load(DIR)
    images = model.sample(jax.random.key(0), 16, sampler="dpm_solver", steps=20)
"""

from vqjax.diffusion import process, samplers, schedules
from vqjax.diffusion.schedules import Schedule, make_schedule, sampling_timesteps

__all__ = ["Schedule", "load", "make_schedule", "process", "sampling_timesteps", "samplers", "schedules"]


def load(directory: str):
    """The `vqjax.inference.diffusion.Diffusion` in `directory` (a workdir or a converted model)."""
    from vqjax.inference.diffusion import load as load_diffusion  # it builds on this package

    return load_diffusion(directory)
