"""Denoising diffusion: schedules, the forward process and its bound, and samplers (pure JAX,
no config objects). The diffusion family and `load` build on these."""

from vqjax.diffusion import process, samplers, schedules
from vqjax.diffusion.schedules import Schedule, make_schedule, sampling_timesteps

__all__ = ["Schedule", "make_schedule", "process", "sampling_timesteps", "samplers", "schedules"]
