"""A trained (or converted) diffusion model as one object, for notebooks, scripts and applications:

    model = vqjax.diffusion.load("/tmp/diffusion_quickstart")
    images = model.sample(jax.random.key(0), 16, sampler="ddim", steps=50)   # [16, H, W, C] in [-1, 1]
    images = model.inpaint(images, mask, jax.random.key(1))                  # mask 1 = keep
    bpd = model.bits_per_dim(test_images, jax.random.key(2))

The settings a run's config holds (`config.diffusion`, `config.model`) become a frozen
`DiffusionSpec` and a U-Net here, once; the train step, evaluation and this object share them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.core import checkpoints, parallel
from vqjax.diffusion import process, samplers
from vqjax.diffusion.schedules import SCHEDULES, Schedule, make_schedule, sampling_timesteps
from vqjax.inference import prior as prior_inference, tokenizer as tokenizer_lib
from vqjax.nets.unet import UNet


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """What a diffusion model is, apart from its network: the noise schedule, what the network
    predicts, its variance, the training objective's weights and the conditioning."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "eps"
    variance: str = "fixed_large"  # of the sampler and the bound; 'learned_range' learns it
    vlb_weight: float = 0.001  # improved DDPM's lambda on T x L_t (learned variance only)
    cond_drop: float = 0.0  # classifier-free guidance: labels dropped at this rate in training
    low_res_size: int = 0  # > 0: super-resolution from images of this size (SR3)
    # > 0 (super-resolution): x_0 is (image - bicubic upsampling) x residual_scale, not the image
    residual_scale: float = 0.0
    clip_x0: bool = True  # pixels: predictions of x_0 are clipped to [-1, 1] while sampling

    @classmethod
    def from_config(cls, diffusion_cfg) -> "DiffusionSpec":
        spec = cls(**{f.name: diffusion_cfg[f.name] for f in dataclasses.fields(cls) if f.name in diffusion_cfg})
        if spec.schedule not in SCHEDULES:
            raise ValueError(f"config.diffusion.schedule is {spec.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        if spec.prediction not in process.PREDICTIONS:
            raise ValueError(f"config.diffusion.prediction is {spec.prediction!r}; choose one of "
                             f"{', '.join(process.PREDICTIONS)}.")
        if spec.variance not in process.VARIANCES:
            raise ValueError(f"config.diffusion.variance is {spec.variance!r}; choose one of "
                             f"{', '.join(process.VARIANCES)}.")
        if not 0.0 <= spec.cond_drop < 1.0:
            raise ValueError(f"config.diffusion.cond_drop is {spec.cond_drop}; it is a probability in [0, 1).")
        if spec.residual_scale < 0 or (spec.residual_scale and not spec.low_res_size):
            raise ValueError(f"config.diffusion.residual_scale is {spec.residual_scale}; it is 0 (denoise images) "
                             "or a positive scale of super-resolution residuals (with low_res_size > 0).")
        return spec

    @property
    def learned_variance(self) -> bool:
        return self.variance == "learned_range"

    def make_schedule(self) -> Schedule:
        kwargs = {} if self.schedule == "cosine" else dict(beta_start=self.beta_start, beta_end=self.beta_end)
        return make_schedule(self.schedule, self.num_timesteps, **kwargs)


def build_unet(model_cfg, channels: int, spec: DiffusionSpec) -> UNet:
    """The U-Net of `config.model` for data of `channels` channels (twice as many outputs with a
    learned variance)."""
    fields = {f.name for f in dataclasses.fields(UNet)} - {"parent", "name", "out_channels"}
    kwargs = {k: v for k, v in model_cfg.items() if k in fields}
    unknown = sorted(set(model_cfg) - fields)
    if unknown:
        raise ValueError(f"config.model has fields the U-Net does not take: {', '.join(unknown)}.")
    kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
    kwargs["channel_mult"] = tuple(kwargs.get("channel_mult", (1, 2, 2, 2)))
    kwargs["attention_resolutions"] = tuple(kwargs.get("attention_resolutions", (16,)))
    return UNet(out_channels=channels * (2 if spec.learned_variance else 1), **kwargs)


def low_res_condition(images: jax.Array, low_res_size: int) -> tuple[jax.Array, jax.Array]:
    """(low-resolution images [B, s, s, C] by area averaging, their bicubic upsampling to the
    images' size): SR3's conditioning input."""
    batch, height, width, channels = images.shape
    factor = height // low_res_size
    low = images.reshape(batch, low_res_size, factor, low_res_size, factor, channels).mean(axis=(2, 4))
    return low, upsample_condition(low, height)


def upsample_condition(low_res: jax.Array, size: int) -> jax.Array:
    batch, _, _, channels = low_res.shape
    return jnp.clip(jax.image.resize(low_res, (batch, size, size, channels), "bicubic"), -1.0, 1.0)


def to_x0(spec: DiffusionSpec, images: jax.Array, cond: Optional[jax.Array]) -> jax.Array:
    """What the U-Net denoises: the images, or for residual super-resolution their difference
    from the upsampled low-resolution image, scaled (SRDiff, Li et al. 2022: an untrained model
    already gives the bicubic upsampling, and the model spends itself on the detail)."""
    return (images - cond) * spec.residual_scale if spec.residual_scale else images


def from_x0(spec: DiffusionSpec, x0: jax.Array, cond: Optional[jax.Array]) -> jax.Array:
    """`to_x0`'s inverse: images in [-1, 1] from what the U-Net denoises."""
    return jnp.clip(cond + x0 / spec.residual_scale, -1.0, 1.0) if spec.residual_scale else x0


def x0_range(spec: DiffusionSpec, cond: Optional[jax.Array]):
    """The samplers' clipping of x_0 predictions: [-1, 1] for images, and for residuals the
    range that keeps cond + residual in [-1, 1]."""
    if not (spec.residual_scale and spec.clip_x0):
        return bool(spec.clip_x0)
    return (-1.0 - cond) * spec.residual_scale, (1.0 - cond) * spec.residual_scale


def generate(model: UNet, params, spec: DiffusionSpec, rng: jax.Array, x_T: jax.Array, *,
             labels: Optional[jax.Array] = None, cond: Optional[jax.Array] = None, sampler: str = "ddim",
             steps: int = 50, spacing: str = "uniform", eta: float = 0.0, guidance_scale: float = 1.0,
             known: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
             start_image: Optional[jax.Array] = None, strength: float = 1.0) -> jax.Array:
    """Samples x_0 [B, H, W, C] from x_T with the U-Net (a pure function: jit it with the
    settings static); images for residual super-resolution models (`from_x0`)."""
    schedule = spec.make_schedule()
    timesteps = sampling_timesteps(spec.num_timesteps, steps, spacing)
    if start_image is not None:
        timesteps = samplers.sdedit_timesteps(timesteps, strength, spec.num_timesteps)
    apply = lambda x, t, y: model.apply({"params": params}, x, t, y, None if cond is None else
                                        jnp.concatenate([cond] * (x.shape[0] // cond.shape[0])))
    if model.num_classes and labels is not None and guidance_scale != 1.0:
        denoise = samplers.classifier_free_guidance(apply, labels, model.num_classes, guidance_scale)
    else:
        denoise = lambda x, t: apply(x, t, labels)
    x0 = samplers.sample(denoise, schedule, x_T, timesteps, rng, sampler=sampler, prediction=spec.prediction,
                         eta=eta, variance=spec.variance, clip_x0=x0_range(spec, cond), known=known, mask=mask,
                         start_image=start_image)
    return from_x0(spec, x0, cond)


_SAMPLER_ARGS = ("sampler", "steps", "spacing", "eta", "guidance_scale", "strength")


def compiler_options_of(config) -> dict[str, str]:
    """The XLA options of a run's config (`train.cpu_convolutions`), for its sampling jits too."""
    train = config.get("train") or {}
    return parallel.step_compiler_options(train.get("cpu_convolutions", "ynnpack"))


def _generate_positional(model, params, spec, rng, x_T, labels, cond, known, mask, start_image, **settings):
    return generate(model, params, spec, rng, x_T, labels=labels, cond=cond, known=known, mask=mask,
                    start_image=start_image, **settings)


def _jitted(fn, compiler_options: Optional[dict], **jit_kwargs):
    """`jax.jit(fn, ...)`, made once per function, XLA options and jit arguments."""
    return _cached_jit(fn, tuple(sorted((compiler_options or {}).items())), **jit_kwargs)


@functools.cache
def _cached_jit(fn, options: tuple, **jit_kwargs):
    return jax.jit(fn, compiler_options=dict(options) or None, **jit_kwargs)


def generate_jit(model, params, spec, rng, x_T, labels, cond, known, mask, start_image, *,
                 compiler_options: Optional[dict] = None, **settings):
    """`generate` compiled once per model, settings and XLA options (`compiler_options_of`)."""
    jitted = _jitted(_generate_positional, compiler_options, static_argnums=(0, 2), static_argnames=_SAMPLER_ARGS)
    return jitted(model, params, spec, rng, x_T, labels, cond, known, mask, start_image, **settings)


class Diffusion:
    """A diffusion model: `sample`, `inpaint`, `edit` (SDEdit), `upsample` (super-resolution
    models), `bits_per_dim` (pixel-space models).

    Attributes: `config`, `spec` (`DiffusionSpec`), `model` (the U-Net), `params` (the weight
    average when the run kept one), `image_shape` ((H, W, C) of what the U-Net denoises: images,
    or a latent diffusion model's latents), `pixel_shape` ((H, W, C) of the images it takes and
    returns), `step`; latent diffusion models also have `tokenizer` and `latent_scale`: they
    encode the images they are given and decode what they generate.
    """

    def __init__(self, config, spec: DiffusionSpec, model: UNet, params: Any, image_shape: tuple,
                 step: Optional[int] = None, tokenizer=None, latent_scale: float = 1.0):
        self.config, self.spec, self.model, self.params = config, spec, model, params
        self.image_shape, self.step = tuple(image_shape), step
        self.tokenizer, self.latent_scale = tokenizer, float(latent_scale)
        self.pixel_shape = self.image_shape
        if tokenizer is not None:
            factor = tokenizer.downsampling_factor
            self.pixel_shape = (self.image_shape[0] * factor, self.image_shape[1] * factor,
                                int(tokenizer.config.data.get("channels", 3)))

    def _pixels_only(self, what: str) -> None:
        if self.tokenizer is not None:
            raise ValueError(f"{what} works on pixel-space models; this is a latent diffusion model, whose "
                             "tokenizer's decoder gives no discrete likelihood of 8-bit pixels.")

    def _encode(self, images: jax.Array) -> jax.Array:
        """Images -> what the U-Net denoises: the images, or their scaled latents."""
        return images if self.tokenizer is None else self.tokenizer.latents(images) * self.latent_scale

    def _decode(self, x: jax.Array) -> jax.Array:
        """What the U-Net denoised -> images in [-1, 1]."""
        return x if self.tokenizer is None else decode_latents(self.tokenizer, x, self.latent_scale)

    def _labels(self, labels, count: int) -> Optional[jax.Array]:
        if labels is None:
            return None
        labels = np.asarray(labels, np.int32).reshape(-1)
        if not self.model.num_classes:
            raise ValueError("This model is unconditional; call it without labels.")
        if len(labels) != count or labels.min() < 0 or labels.max() > self.model.num_classes:
            raise ValueError(f"labels must be {count} classes in [0, {self.model.num_classes}] "
                             f"({self.model.num_classes} = no class); got {labels.tolist()}.")
        return jnp.asarray(labels)

    def _noise(self, rng, count: int, noise) -> jax.Array:
        if noise is None:
            return jax.random.normal(jax.random.fold_in(rng, 7), (count,) + self.image_shape)
        noise = jnp.asarray(noise, jnp.float32)
        if noise.shape != (count,) + self.image_shape:
            raise ValueError(f"noise (x_T) must have shape {(count,) + self.image_shape}, not {noise.shape}.")
        return noise

    def _check_images(self, images, what: str) -> jax.Array:
        images = jnp.asarray(images, jnp.float32)
        if images.ndim != 4 or images.shape[1:] != self.pixel_shape:
            raise ValueError(f"{what} must be [B, {', '.join(map(str, self.pixel_shape))}] in [-1, 1]; "
                             f"got shape {tuple(images.shape)}.")
        return images

    def _run(self, rng, x_T, *, labels=None, cond=None, known=None, mask=None, start_image=None, **settings):
        if self.spec.low_res_size and cond is None:
            raise ValueError("This is a super-resolution model: call upsample(low_res, rng) with the "
                             f"{self.spec.low_res_size}x{self.spec.low_res_size} images to upsample.")
        settings = {"sampler": "ddim", "steps": 50, "spacing": "uniform", "eta": 0.0, "guidance_scale": 1.0,
                    "strength": 1.0, **settings}
        unknown = sorted(set(settings) - set(_SAMPLER_ARGS))
        if unknown:
            raise ValueError(f"Unknown sampling settings {', '.join(unknown)}; use {', '.join(_SAMPLER_ARGS)}.")
        if settings["sampler"] not in samplers.SAMPLERS:
            raise ValueError(f"Unknown sampler {settings['sampler']!r}; choose one of {', '.join(samplers.SAMPLERS)}.")
        sampling_timesteps(self.spec.num_timesteps, int(settings["steps"]), settings["spacing"])  # checks
        return generate_jit(self.model, self.params, self.spec, rng, x_T, labels, cond, known, mask, start_image,
                            compiler_options=compiler_options_of(self.config), **settings)

    def sample(self, rng: jax.Array, num: int, *, labels=None, sampler: str = "ddim", steps: int = 50,
               eta: float = 0.0, guidance_scale: float = 1.0, noise=None, spacing: str = "uniform") -> jax.Array:
        """`num` images [num, H, W, C] in [-1, 1]. `noise` is x_T (to compare with another library
        from the same start); `labels` one class per image for class-conditional models, with
        classifier-free guidance at `guidance_scale` != 1."""
        samples = self._run(rng, self._noise(rng, num, noise), labels=self._labels(labels, num), sampler=sampler,
                            steps=steps, eta=eta, guidance_scale=guidance_scale, spacing=spacing)
        return self._decode(samples)

    def inpaint(self, images, mask, rng: jax.Array, *, labels=None, **settings) -> jax.Array:
        """`images` where `mask` is 1 (broadcast against [B, H, W, C]: [H, W], [B, H, W, 1], ...),
        the rest generated to fit them. Latent diffusion models keep the latents whose every pixel
        is kept, generate the others, decode, and put the kept pixels back exactly."""
        images = self._check_images(images, "images")
        mask = broadcast_mask(mask, images.shape)
        noise, labels = self._noise(rng, len(images), None), self._labels(labels, len(images))
        if self.tokenizer is None:
            return self._run(rng, noise, labels=labels, known=images, mask=mask, **settings)
        latents = self._run(rng, noise, labels=labels, known=self._encode(images),
                            mask=latent_mask(mask, self.tokenizer.downsampling_factor), **settings)
        return mask * images + (1 - mask) * self._decode(latents)

    def edit(self, images, rng: jax.Array, *, strength: float = 0.5, labels=None, **settings) -> jax.Array:
        """SDEdit: `images` (their latents, for latent diffusion models) noised to `strength` x T
        and denoised again (0 < strength <= 1)."""
        images = self._check_images(images, "images")
        edited = self._run(rng, self._noise(rng, len(images), None), labels=self._labels(labels, len(images)),
                           start_image=self._encode(images), strength=strength, **settings)
        return self._decode(edited)

    def upsample(self, low_res, rng: jax.Array, **settings) -> jax.Array:
        """Super-resolution models: [B, s, s, C] low-resolution images in [-1, 1] -> [B, H, W, C]."""
        if not self.spec.low_res_size:
            raise ValueError("This model generates images; only super-resolution models (config.diffusion."
                             "low_res_size > 0) upsample.")
        low_res = jnp.asarray(low_res, jnp.float32)
        size = self.spec.low_res_size
        if low_res.ndim != 4 or low_res.shape[1:] != (size, size, self.image_shape[-1]):
            raise ValueError(f"low_res must be [B, {size}, {size}, {self.image_shape[-1]}]; got {tuple(low_res.shape)}.")
        cond = upsample_condition(low_res, self.image_shape[0])
        return self._run(rng, self._noise(rng, len(low_res), None), cond=cond, **settings)

    def bits_per_dim(self, images, rng: jax.Array, *, num_timesteps: int = 0, labels=None,
                     low_res=None) -> jax.Array:
        """Per image, an unbiased estimate of the negative VLB in bits/dim with `num_timesteps`
        stratified timesteps per image besides the exact L_0 and L_T (0: every timestep, the whole
        bound up to the noise draws)."""
        self._pixels_only("bits_per_dim")
        images = self._check_images(images, "images")
        cond = None
        if self.spec.low_res_size:
            cond = low_res_condition(images, self.spec.low_res_size)[1] if low_res is None else \
                upsample_condition(jnp.asarray(low_res, jnp.float32), self.image_shape[0])
        bits_per_dim = _jitted(_bits_per_dim, compiler_options_of(self.config), static_argnums=(0, 2, 7))
        return bits_per_dim(self.model, self.params, self.spec, rng, images, self._labels(labels, len(images)),
                            cond, num_timesteps or self.spec.num_timesteps - 1)


def _bits_per_dim(model, params, spec, rng, images, labels, cond, num_timesteps):
    denoise = lambda x, t: model.apply({"params": params}, x, t, labels, cond)
    return bits_per_dim_estimate(denoise, spec, images, rng, num_timesteps, cond)


def bits_per_dim_estimate(denoise, spec: DiffusionSpec, images: jax.Array, rng: jax.Array,
                          num_timesteps: int, cond: Optional[jax.Array] = None) -> jax.Array:
    """`process.bits_per_dim_estimate` of `images` with the spec's schedule, prediction and
    variance (of their residuals, whose bins are residual_scale times as wide, for residual
    super-resolution: the same pixels' probabilities)."""
    return process.bits_per_dim_estimate(denoise, spec.make_schedule(), to_x0(spec, images, cond), rng,
                                         num_timesteps=num_timesteps, prediction=spec.prediction,
                                         variance=spec.variance, pixels=images,
                                         pixel_scale=spec.residual_scale or 1.0)


def broadcast_mask(mask, shape: tuple) -> jax.Array:
    """An inpainting mask (1 = keep) as [H, W], [B, H, W] or [B, H, W, C|1] -> float32 `shape`."""
    mask = jnp.asarray(mask, jnp.float32)
    mask = mask[None, ..., None] if mask.ndim == 2 else mask[..., None] if mask.ndim == 3 else mask
    try:
        return jnp.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(f"mask of shape {tuple(jnp.shape(mask))} does not fit images of shape "
                         f"{tuple(shape)}; pass [H, W], [B, H, W] or [B, H, W, C] (1 = keep).") from None


def latent_mask(mask: jax.Array, factor: int) -> jax.Array:
    """A pixel mask [B, H, W, C] (1 = keep) -> [B, H/f, W/f, 1]: a latent is kept only where
    every pixel and channel it stands for is (a latent of a partly unknown patch would carry the
    unknown pixels' content into the result)."""
    b, h, w, c = mask.shape
    return mask.reshape(b, h // factor, factor, w // factor, factor, c).min(axis=(2, 4, 5))[..., None]


def decode_latents(tokenizer, latents: jax.Array, latent_scale: float) -> jax.Array:
    """Latent samples -> images: unscaled, quantised to the nearest codes, decoded."""
    return jnp.clip(tokenizer.decode_latents(latents / latent_scale), -1.0, 1.0)


def image_shape_of(config) -> tuple[int, int, int]:
    return (int(config.data.image_size), int(config.data.image_size), int(config.data.channels))


def load(directory: str) -> Diffusion:
    """The diffusion model in `directory`: a training workdir (its newest checkpoint, the weight
    average when kept) or a directory written by `python -m vqjax.convert diffusers`."""
    config = checkpoints.read_config(directory)
    if config.get("family") != "diffusion":
        raise ValueError(f"{directory} holds a {config.get('family')} model, not a diffusion model; load "
                         "tokenizers with vqjax.pretrained.load and priors with vqjax.prior.load.")
    spec = DiffusionSpec.from_config(config.diffusion)
    tokenizer = None
    shape = image_shape_of(config)
    if config.get("tokenizer_dir"):
        tokenizer = tokenizer_lib.load(config.tokenizer_dir)
        side = prior_inference.resolve_data(config.data, tokenizer).image_size // tokenizer.downsampling_factor
        shape = (side, side, tokenizer.quantizer.dim)
    model = build_unet(config.model, shape[-1], spec)
    step, saved = checkpoints.read_latest(directory, "vqjax.diffusion.load's directory")
    params = saved.get("ema_params") or saved["params"]
    expected = jax.eval_shape(lambda: init_params(model, jax.random.key(0), shape, spec))
    problem = checkpoints.first_mismatch(params, expected)
    if problem:
        raise ValueError(f"The checkpoint in {directory} does not fit its config.json ({problem}).")
    latent_scale = float(np.asarray(saved.get("extra", {}).get("latent_scale", 1.0)))
    return Diffusion(config, spec, model, checkpoints.restructure(params, expected), shape, step=step,
                     tokenizer=tokenizer, latent_scale=latent_scale)


def init_params(model: UNet, rng: jax.Array, image_shape: tuple, spec: DiffusionSpec) -> dict:
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    cond = jnp.zeros_like(x) if spec.low_res_size else None
    return model.init(rng, x, jnp.zeros((1,), jnp.int32), labels, cond)["params"]
