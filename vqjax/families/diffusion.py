"""The diffusion family (`config.family='diffusion'`): a U-Net trained to denoise images (Ho et
al. 2020), optionally class-conditional with condition dropout for classifier-free guidance, or
conditioned on a low-resolution image for super-resolution (SR3, `diffusion.low_res_size`;
with `diffusion.residual_scale` the U-Net denoises the scaled residual image - bicubic
upsampling instead of the image, as SRDiff does).

Train step: t ~ U{0..T-1}, x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps, L_simple on the network's
eps / x_0 / v prediction; with a learned variance (`diffusion.variance='learned_range'`) plus
improved DDPM's lambda x T x L_t with the mean's gradient stopped (the hybrid objective). The
weight average (`optim.params_ema_decay`, warmed up as min(decay, (1 + n) / (10 + n))) is what
evaluation and sampling use.

Latent diffusion (Rombach et al. 2022) with `config.tokenizer_dir` (a vqjax tokenizer workdir
or a converted taming / latent-diffusion VQ model): the data are the tokenizer's encoder
outputs before quantisation, encoded once and cached in `<workdir>/latents/`, multiplied by a
scale factor (1 / their standard deviation over the first global batch, kept in the train
state as `extra['latent_scale']`); samples are divided by it, quantised to their nearest codes
and decoded.

Evaluation: an unbiased estimate of the test bits/dim (`evals.bpd_timesteps` timesteps per
image, on `evals.num_eval_batches` batches; metrics.json says how many; pixel models only: the
discretised decoder is a model of 8-bit pixels) and the eval split's training objective. Outputs: samples.png (a
row per class for a class-conditional model), FID / IS / KID of samples with
`evals.inception_path`; super-resolution models write superres.png (low-res input, output,
original rows) and the PSNR / SSIM of upsampled test images instead.
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqjax.core import images as images_lib, optim, parallel, paths
from vqjax.data import codes as codes_lib, images as data_lib
from vqjax.diffusion import process
from vqjax.eval import metrics as metrics_lib, samples as samples_eval
from vqjax.families.base import Family
from vqjax.families.prior import drop_labels  # condition dropout, as the priors train it
from vqjax.inference import diffusion as diffusion_lib, prior as prior_inference, tokenizer as tokenizer_lib
from vqjax.nets import inception as inception_lib
from vqjax.train.state import TrainState


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The weight average's decay with warm-up: early averages forget the random init quickly."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def latent_scale_of(state: TrainState) -> float:
    return float(state.extra.get("latent_scale", 1.0))


def objective(spec, schedule, output, images, x_t, t, noise) -> tuple[jax.Array, dict]:
    """Per-example loss of the network's `output` at (x_t, t): L_simple, plus with a learned
    variance improved DDPM's vlb_weight x T x L_t, whose gradient reaches only the variance
    outputs (the mean's is stopped: L_simple trains it)."""
    channels = images.shape[-1]
    mse = process.simple_loss(schedule, output[..., :channels], images, t, noise, spec.prediction)
    aux = {"mse": jnp.mean(mse)}
    if not spec.learned_variance:
        return mse, aux
    frozen_mean = jax.lax.stop_gradient(output[..., :channels])
    model_x0, _ = process.x0_and_eps(schedule, x_t, t, frozen_mean, spec.prediction)
    log_var = process.model_log_variance(schedule, t, images, spec.variance, output[..., channels:])
    vlb = process.vlb_term_bits_per_dim(schedule, images, x_t, t, model_x0, log_var)
    aux["vlb_bits_per_dim"] = jnp.mean(vlb)
    return mse + spec.vlb_weight * spec.num_timesteps * vlb, aux


class DiffusionFamily(Family):
    """Reads `config.diffusion`, `model`, `data`, `optim`, `train`, `evals`, `sampling`."""

    name = "diffusion"
    unit = "images"
    progress = {"loss": "loss"}
    final_train_metrics = ("mse",)

    def __init__(self, config, *, mesh, workdir: str = ""):
        self.mesh = mesh
        self.data_cfg, self.evals_cfg, self.sampling_cfg = config.data, config.evals, config.sampling
        self.spec = diffusion_lib.DiffusionSpec.from_config(config.diffusion)
        self.schedule = self.spec.make_schedule()
        self.seed = int(config.seed)
        self.batch_size = int(config.data.batch_size)
        self.tokenizer = None
        if config.data.source == "tokenizer" and not config.get("tokenizer_dir"):
            raise ValueError("config.data.source is 'tokenizer' but config.tokenizer_dir is empty; pass "
                             "--config.tokenizer_dir=DIR (a tokenizer workdir or `python -m vqjax.convert taming` "
                             "output) for latent diffusion.")
        if config.get("tokenizer_dir"):
            self.setup_latents(config, workdir)
        else:
            self.image_shape = diffusion_lib.image_shape_of(config)
        self.model = diffusion_lib.build_unet(config.model, self.image_shape[-1], self.spec)
        self.model.check_input(*self.image_shape[:2])
        if self.spec.low_res_size and self.image_shape[0] % self.spec.low_res_size:
            raise ValueError(f"config.diffusion.low_res_size {self.spec.low_res_size} does not divide the image "
                             f"size {self.image_shape[0]}; pick a divisor (e.g. {self.image_shape[0] // 4}).")
        self.num_steps = int(config.train.num_steps)
        self.tx = optim.make_optimizer(config.optim, self.num_steps, self.batch_size)
        self.schedules = {"learning_rate": optim.make_schedule(config.optim, self.num_steps, self.batch_size)}
        self.params_ema_decay = float(config.optim.get("params_ema_decay", 0.0))
        self.compiler_options = diffusion_lib.compiler_options_of(config)  # the step's, sampling's, evaluation's
        data_lib.check_split(self.data_cfg, self.data_cfg.eval_split)  # before step 1
        if self.evals_cfg.inception_path:
            inception_lib.load_variables(self.evals_cfg.inception_path)  # a bad file found now
        self._compiled = {}

    def setup_latents(self, config, workdir: str) -> None:
        """Latent diffusion: the tokenizer, both splits' cached latents and the scale factor."""
        if self.spec.clip_x0 or self.spec.low_res_size:
            raise ValueError("Latent diffusion (config.tokenizer_dir) needs config.diffusion.clip_x0=False "
                             "(latents are not in [-1, 1]) and low_res_size=0.")
        self.tokenizer = tokenizer_lib.load(config.tokenizer_dir)
        self.data_cfg = prior_inference.resolve_data(config.data, self.tokenizer)
        encode = dict(tokenizer=self.tokenizer, tokenizer_dir=config.tokenizer_dir, data_cfg=self.data_cfg,
                      batch_size=int(config.latents.encode_batch_size), mesh=self.mesh, latents=True)
        self.train_latents = codes_lib.cached_codes(workdir, split=self.data_cfg.train_split,
                                                    flip=bool(config.latents.flip),
                                                    limit=int(config.latents.max_train_images), **encode)
        self.eval_latents = codes_lib.cached_codes(workdir, split=self.data_cfg.eval_split, flip=False,
                                                   limit=int(config.latents.max_eval_images), **encode)
        self.image_shape = tuple(self.train_latents["latents"].shape[1:])
        first = codes_lib.first_global_batch(self.train_latents, self.batch_size, seed=int(self.data_cfg.seed))
        self.latent_scale = float(1.0 / np.std(first["latents"]))

    # --- Training.

    def example(self) -> dict:
        batch = next(self.train_batches(0))
        if self.model.num_classes and int(batch["label"].max()) >= self.model.num_classes:
            raise ValueError(f"The data has class label {int(batch['label'].max())} but config.model.num_classes "
                             f"is {self.model.num_classes}; set it to the number of classes (0 = unconditional).")
        return batch

    def create(self, rng: jax.Array, batch: dict) -> TrainState:
        del batch
        params = diffusion_lib.init_params(self.model, rng, self.image_shape, self.spec)
        extra = {"latent_scale": jnp.float32(self.latent_scale)} if self.tokenizer else {}
        return TrainState.create(seed=self.seed, params=params, tx=self.tx, extra=extra,
                                 params_ema_decay=self.params_ema_decay)

    @staticmethod
    def data_of(state: TrainState, batch: dict) -> jax.Array:
        """The diffusion model's x_0: the images, or the latents times the scale factor."""
        return batch["image"] * state.extra.get("latent_scale", 1.0)

    def condition(self, images: jax.Array):
        """The U-Net's extra input for these images: their bicubic-upsampled low-resolution
        version for super-resolution, else None."""
        if not self.spec.low_res_size:
            return None
        return diffusion_lib.low_res_condition(images, self.spec.low_res_size)[1]

    def labels(self, batch: dict):
        return batch["label"] if self.model.num_classes else None

    def loss_fn(self, params, images, labels, rng):
        loss, aux = self.per_example_loss(params, images, labels, rng, train=True)
        return jnp.mean(loss), aux

    def per_example_loss(self, params, images, labels, rng, *, train: bool):
        """The objective of each example at a random timestep (condition dropout and network
        dropout in training only); `images` are pixels or scaled latents, x_0 is what the U-Net
        denoises (`diffusion_lib.to_x0`)."""
        spec = self.spec
        t_rng, noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 4)
        cond = self.condition(images)
        x0 = diffusion_lib.to_x0(spec, images, cond)
        t = jax.random.randint(t_rng, x0.shape[:1], 0, spec.num_timesteps)
        noise = jax.random.normal(noise_rng, x0.shape)
        x_t = process.q_sample(self.schedule, x0, t, noise)
        if labels is not None and train:
            labels = drop_labels(drop_rng, labels, spec.cond_drop, self.model.num_classes)
        output = self.model.apply({"params": params}, x_t, t, labels, cond, train=train,
                                  rngs={"dropout": dropout_rng})
        return objective(spec, self.schedule, output, x0, x_t, t, noise)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """batch {'image' [B, H, W, C] in [-1, 1], 'label' [B]}."""
        (loss, aux), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
            state.params, self.data_of(state, batch), self.labels(batch), state.step_rng())
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = optim.update_ema_params(state.ema_params, params, ema_decay_at(state.step, self.params_ema_decay))
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        return state, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    def train_batches(self, start_step: int) -> Iterator[dict]:
        if self.tokenizer:
            stream = codes_lib.batches(self.train_latents, self.batch_size, seed=int(self.data_cfg.seed),
                                       start_step=start_step)
            return ({"image": b["latents"], "label": b["label"]} for b in stream)
        return data_lib.make_dataset(self.data_cfg, self.data_cfg.train_split, train=True, start_step=start_step)

    # --- Evaluation.

    def _jit(self, name: str, fn, **kwargs):
        if name not in self._compiled:
            self._compiled[name] = jax.jit(fn, out_shardings=parallel.replicated(self.mesh), **kwargs)
        return self._compiled[name]

    def eval_batches(self) -> Iterator[dict]:
        """The eval split as the model sees it: images, or (latent diffusion) unscaled latents."""
        if self.tokenizer:
            stream = codes_lib.eval_batches(self.eval_latents, int(self.data_cfg.eval_batch_size))
            return ({"image": b["latents"], "label": b["label"], "mask": b["mask"]} for b in stream)
        return self.eval_images_batches()

    def eval_images_batches(self) -> Iterator[dict]:
        return data_lib.make_dataset(self.data_cfg, self.data_cfg.eval_split, self.data_cfg.eval_batch_size,
                                     train=False)

    def evaluate(self, state: TrainState) -> dict:
        """Test bits/dim (an unbiased estimate, `evals.bpd_timesteps` timesteps per image) and the
        training objective on the eval split, over `evals.num_eval_batches` batches (-1 = all)."""
        timesteps = int(self.evals_cfg.bpd_timesteps)
        pixels = self.tokenizer is None

        def eval_step(params, scale, batch, rng):
            images, mask = batch["image"] * scale, batch["mask"]
            cond = self.condition(images)
            denoise = lambda x, t: self.model.apply({"params": params}, x, t, self.labels(batch), cond)
            loss, _ = self.per_example_loss(params, images, self.labels(batch), jax.random.fold_in(rng, 1),
                                            train=False)
            sums = {"count": jnp.sum(mask), "loss_sum": jnp.sum(loss * mask), "bpd_sum": jnp.zeros(())}
            if pixels:
                bpd = diffusion_lib.bits_per_dim_estimate(denoise, self.spec, images, rng, timesteps, cond)
                sums["bpd_sum"] = jnp.sum(bpd * mask)
            return sums

        step = self._jit("eval", eval_step, compiler_options=self.compiler_options or None)
        params, scale = state.eval_params, state.extra.get("latent_scale", jnp.float32(1.0))
        sums = {"bpd_sum": 0.0, "count": 0.0, "loss_sum": 0.0}
        limit = int(self.evals_cfg.num_eval_batches)
        for index, batch in enumerate(self.eval_batches()):
            if 0 <= limit <= index:
                break
            out = jax.device_get(step(params, scale, parallel.to_global(batch, self.mesh),
                                      jax.random.fold_in(jax.random.key(self.seed), index)))
            sums = {k: sums[k] + float(out[k]) for k in sums}
        count = max(sums["count"], 1.0)
        if not pixels:
            return {"eval_loss": sums["loss_sum"] / count, "eval_num_latents": int(sums["count"]),
                    "skipped": {"bits_per_dim": "latent diffusion: the bound's decoder models 8-bit pixels"}}
        return {"bits_per_dim": sums["bpd_sum"] / count, "eval_loss": sums["loss_sum"] / count,
                "bpd_num_images": int(sums["count"]), "bpd_timesteps_per_image": timesteps,
                "bpd_estimate": f"unbiased: L_T and L_0 exact, (T - 1) x the mean of L_t over {timesteps} "
                                f"stratified timesteps of [1, T) per image"}

    def _sample(self, params, rng, count: int, labels=None, cond=None, latent_scale: float = 1.0) -> np.ndarray:
        """Images [count, H, W, C] in [-1, 1] (latent samples decoded by the tokenizer)."""
        settings = {k: self.sampling_cfg[k] for k in ("sampler", "steps", "spacing", "eta", "guidance_scale")}
        x_T = jax.random.normal(jax.random.fold_in(rng, 7), (count,) + self.image_shape)
        images = diffusion_lib.generate_jit(self.model, params, self.spec, rng, x_T, labels, cond, None, None,
                                            None, compiler_options=self.compiler_options, strength=1.0, **settings)
        if self.tokenizer:
            images = diffusion_lib.decode_latents(self.tokenizer, images, latent_scale)
        return np.clip(np.asarray(jax.device_get(images)), -1.0, 1.0)

    def sample_rows(self, params, latent_scale: float = 1.0) -> list[np.ndarray]:
        """Rows of samples.png: a row per class for a class-conditional model; super-resolution
        models: low-res inputs, outputs and originals of the first eval images."""
        rng = jax.random.key(int(self.sampling_cfg.seed))
        count = int(self.sampling_cfg.num_samples)
        if self.spec.low_res_size:
            originals = self.first_eval_images(count)
            low, cond = diffusion_lib.low_res_condition(jnp.asarray(originals), self.spec.low_res_size)
            outputs = self._sample(params, rng, len(originals), cond=cond)
            nearest = np.asarray(jax.image.resize(low, originals.shape, "nearest"))
            return [nearest, outputs, originals]
        labels = None
        per_row = min(count, 8)
        if self.model.num_classes:
            per_row = self.model.num_classes if self.model.num_classes <= count else per_row
            labels = jnp.arange(count, dtype=jnp.int32) % self.model.num_classes
        images = self._sample(params, rng, count, labels=labels, latent_scale=latent_scale)
        return [images[i : i + per_row] for i in range(0, count - count % per_row, per_row)]

    def first_eval_images(self, count: int) -> np.ndarray:
        batch = next(data_lib.make_dataset(self.data_cfg, self.data_cfg.eval_split, count, train=False,
                                           process_index=0, process_count=1))
        return batch["image"][: int(batch["mask"].sum())]

    def eval_images(self, state: TrainState) -> dict[str, np.ndarray]:
        name = "superres" if self.spec.low_res_size else "samples"
        rows = self.sample_rows(jax.device_get(state.eval_params), latent_scale_of(state))
        return {name: images_lib.image_grid(rows)}

    def finish(self, state: TrainState, workdir: str) -> dict:
        params = jax.device_get(state.eval_params)
        rows = self.sample_rows(params, latent_scale_of(state))
        name = "superres.png" if self.spec.low_res_size else "samples.png"
        if jax.process_index() == 0:
            images_lib.save_png(paths.join(workdir, name), images_lib.image_grid(rows))
        if self.spec.low_res_size:
            return self.super_resolution_metrics(params)
        return self.sample_quality(params, latent_scale_of(state))

    def super_resolution_metrics(self, params) -> dict:
        """PSNR / SSIM of `evals.num_sr_images` upsampled test images against the originals, and
        of their bicubic upsampling (the baseline the model must beat)."""
        originals = self.first_eval_images(int(self.evals_cfg.num_sr_images))
        low, cond = diffusion_lib.low_res_condition(jnp.asarray(originals), self.spec.low_res_size)
        outputs = self._sample(params, jax.random.key(int(self.sampling_cfg.seed) + 1), len(originals), cond=cond)
        return {"sr_psnr": float(jnp.mean(metrics_lib.psnr(outputs, originals))),
                "sr_ssim": float(jnp.mean(metrics_lib.ssim(outputs, originals))),
                "bicubic_psnr": float(jnp.mean(metrics_lib.psnr(cond, originals))),
                "bicubic_ssim": float(jnp.mean(metrics_lib.ssim(cond, originals))),
                "sr_num_images": len(originals)}

    def sample_quality(self, params, latent_scale: float = 1.0) -> dict:
        """FID / IS / KID of `evals.num_fid_samples` samples against as many eval images."""
        if not self.evals_cfg.inception_path:
            return {"skipped": {"fid": "no FID Inception weights (config.evals.inception_path); make them with "
                                       "`python -m vqjax.convert inception`"}}
        variables = parallel.replicate(inception_lib.load_variables(self.evals_cfg.inception_path), self.mesh)
        batch = int(self.data_cfg.eval_batch_size)
        num_batches = math.ceil(int(self.evals_cfg.num_fid_samples) / batch)
        rng = jax.random.fold_in(jax.random.key(int(self.sampling_cfg.seed)), 2)

        def fake_batches():
            for i in range(num_batches):
                labels = None
                if self.model.num_classes:
                    labels = (jnp.arange(batch, dtype=jnp.int32) + i * batch) % self.model.num_classes
                yield self._sample(params, jax.random.fold_in(rng, i), batch, labels=labels,
                                   latent_scale=latent_scale)

        real = (b for _, b in zip(range(num_batches), self.eval_images_batches()))
        return samples_eval.sample_quality(fake_batches(), real, variables, self.mesh,
                                           kid_subset_size=min(1000, num_batches * batch))

    def describe(self, state: TrainState, num_devices: int) -> str:
        task = f"super-resolution from {self.spec.low_res_size}px" if self.spec.low_res_size else "generation"
        if self.tokenizer:
            task = (f"latent diffusion on {'x'.join(map(str, self.image_shape))} latents (scale "
                    f"{latent_scale_of(state):.4g}) of {len(self.train_latents['labels']):,} training images")
        return (f"diffusion U-Net with {optim.count_params(state.params):,} parameters, T={self.spec.num_timesteps} "
                f"{self.spec.schedule}, {self.spec.prediction} prediction, {task}, {num_devices} devices")
