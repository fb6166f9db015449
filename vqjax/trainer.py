"""The training loop: mesh, data, state, checkpoints, logging, evaluation and final outputs.

`train_and_evaluate(config, workdir)` runs a whole experiment and returns its final metrics;
it is the one loop every model family reuses: the VQ-VAE family, and the VQGAN family when
the config has a `disc` section (discriminator, `optim_d`, adversarial and perceptual losses).
Outputs in `workdir`:
  config.json            the resolved config
  checkpoints/           Orbax checkpoints (async; the newest `train.keep_checkpoints` kept)
  tensorboard/           TensorBoard scalars
  metrics.json           final evaluation (written once training has finished)
  reconstructions.png    originals (top row) above their reconstructions
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vqjax import data as data_lib
from vqjax import checkpoints, evaluation, gan, parallel, state as state_lib, steps
from vqjax.nets import lpips


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss or gradient."""


# ----------------------------------------------------------------------------------------
# Model families.


def is_gan(config) -> bool:
    """A config with a `disc` section trains adversarially (VQGAN)."""
    return "disc" in config


@dataclasses.dataclass(frozen=True)
class Family:
    """What differs between model families; the loop is shared.

    create(rng, images) -> a fresh state; train_step(state, batch, *frozen) -> (state,
    metrics), `frozen` being arrays the step reads but never trains (the LPIPS weights).
    """

    create: Callable
    train_step: Callable
    frozen: tuple


def build_family(config, model, num_steps: int, perceptual_params: Any = None) -> Family:
    """The family's state constructor and train step. `perceptual_params` replaces the LPIPS
    weights of `config.loss.lpips_path` (benchmarks time the step with random ones)."""
    global_batch = int(config.data.batch_size)
    tx = state_lib.make_optimizer(config.optim, num_steps, global_batch)
    if not is_gan(config):
        return Family(create=lambda rng, images: steps.init_state(config, model, tx, rng, images),
                      train_step=steps.make_train_step(config, model, tx), frozen=())

    disc = gan.build_discriminator(config.disc)
    tx_d = state_lib.make_optimizer(config.optim_d, num_steps, global_batch)
    perceptual = None
    if config.loss.perceptual_weight > 0:
        perceptual = lpips.LPIPS()
        if perceptual_params is None:
            perceptual_params = lpips.load_params(config.loss.lpips_path)

    def create(rng, images):
        model_rng, disc_rng = jax.random.split(rng)
        base = steps.init_state(config, model, tx, model_rng, images)
        return gan.init_gan_state(base, disc, tx_d, disc_rng, images)

    return Family(create=create,
                  train_step=gan.make_gan_train_step(config, model, disc, tx, tx_d, perceptual),
                  frozen=(perceptual_params,))


# ----------------------------------------------------------------------------------------
# Evaluation and outputs.


def load_evaluators(config) -> evaluation.Evaluators:
    """LPIPS for evals from `evals.lpips_path`, else the perceptual loss's weights if any."""
    lpips_path = config.evals.get("lpips_path", "") or config.get("loss", {}).get("lpips_path", "")
    return evaluation.load_evaluators(lpips_path, config.evals.get("inception_path", ""))


def evaluate(eval_step, state, config, mesh, evaluators: evaluation.Evaluators, code_bits: float) -> dict:
    """One pass over the eval split (`evals.num_eval_batches` batches, -1 = all)."""
    batches = data_lib.make_dataset(config.data, config.data.eval_split,
                                    config.data.eval_batch_size, train=False)
    return evaluation.evaluate(eval_step, steps.eval_weights(state), batches, mesh,
                               num_codes=config.quantizer.num_codes, code_bits=code_bits,
                               evaluators=evaluators, num_batches=config.evals.num_eval_batches)


def image_grid(rows: list[np.ndarray], min_tile: int = 64) -> np.ndarray:
    """Rows of images in [-1, 1] -> one uint8 grid, upscaled so small images stay visible."""
    rows = [np.clip((np.asarray(r, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8) for r in rows]
    scale = max(1, math.ceil(min_tile / rows[0].shape[1]))
    pad = 2
    n, h, w, c = rows[0].shape
    h, w = h * scale, w * scale
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), 255, np.uint8)
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            image = image.repeat(scale, 0).repeat(scale, 1)
            top, left = pad + r * (h + pad), pad + i * (w + pad)
            grid[top : top + h, left : left + w] = image
    return grid[..., 0] if c == 1 else grid


def save_png(path: str, array: np.ndarray) -> None:
    from PIL import Image

    tmp = path + ".tmp.png"
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)


def save_reconstructions(reconstruct, state, config, mesh, path: str) -> None:
    """Runs on every process (the step is a global computation); process 0 writes the file."""
    batch = next(data_lib.make_dataset(config.data, config.data.eval_split,
                                       config.data.eval_batch_size, train=False))
    reconstructions, _ = reconstruct(steps.eval_weights(state), parallel.to_global(batch, mesh)["image"])
    count = min(config.evals.num_recon_images, int(batch["mask"].sum()))
    originals = batch["image"][:count]
    reconstructions = np.clip(np.asarray(jax.device_get(reconstructions))[:count], -1.0, 1.0)
    if jax.process_index() == 0:
        save_png(path, image_grid([originals, reconstructions]))


# ----------------------------------------------------------------------------------------
# Logging.


class _Logger:
    """TensorBoard scalars (process 0) plus a progress bar or plain log lines."""

    def __init__(self, workdir: str, num_steps: int, start_step: int):
        self.is_main = jax.process_index() == 0
        self.writer = None
        self.bar = None
        if self.is_main:
            from flax.metrics import tensorboard

            self.writer = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))
            from tqdm.auto import tqdm

            self.bar = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            mininterval=5.0)

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        if self.writer is not None:
            for name, value in values.items():
                if value is not None and np.ndim(value) == 0:
                    self.writer.scalar(prefix + name, float(value), step)
            self.writer.flush()

    def progress(self, step: int, postfix: dict) -> None:
        if self.bar is not None:
            # Postfix first: update() draws the bar, and should draw this step's values.
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(step - self.bar.n)

    def write(self, line: str) -> None:
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def check_finite(step: int, metrics: dict, last_checkpoint: Optional[int]) -> None:
    for name in ("loss", "grad_norm", "d_loss", "disc_grad_norm"):
        if name not in metrics:
            continue
        value = float(metrics[name])
        if not math.isfinite(value):
            where = (f"the last good checkpoint is step {last_checkpoint}" if last_checkpoint
                     else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"The training {name} became {value} at step {step} ({where}); lower "
                "config.optim.learning_rate or set config.optim.grad_clip_norm, then run again "
                "with the same --workdir to resume."
            )


PROGRESS_KEYS = {"loss": "loss", "d_loss": "d", "adaptive_weight": "w", "perplexity": "ppl",
                 "codes_used_recent": "used", "images_per_sec": "img/s"}


def progress_summary(metrics: dict) -> dict:
    return {short: metrics[name] for name, short in PROGRESS_KEYS.items() if name in metrics}


# ----------------------------------------------------------------------------------------
# The loop shared by every family (tokenizers here, priors in vqjax.prior).


@dataclasses.dataclass
class LoopResult:
    state: Any
    last_metrics: Optional[dict]  # host copy of the last step's metrics; None if no step ran
    # None when this invocation trained for fewer than two steps (nothing timed after compiling).
    examples_per_sec: Optional[float]
    preempted: bool


def run_loop(state, train_step: Callable, batches: Iterator, *, train_cfg, manager: ocp.CheckpointManager,
             logger: "_Logger", last_checkpoint: Optional[int], examples_per_step: int,
             periodic_eval: Callable[[Any], dict]) -> LoopResult:
    """Steps `state` from its step to `train_cfg.num_steps` over global `batches`: logs every
    `log_steps` (stopping on a non-finite loss), evaluates every `eval_steps` (not at the last
    step: the caller's final evaluation covers it), checkpoints every `ckpt_steps` and at the
    end, and on SIGTERM saves and returns with `preempted=True`. Closes `logger`."""
    num_steps = int(train_cfg.num_steps)
    start_step = int(state.step)
    terminate = {"requested": False}
    previous_handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: terminate.update(requested=True))
    timing = {"start": None, "examples": 0}
    last_log_time, last_log_step = time.perf_counter(), start_step
    metrics = None
    try:
        for step in range(start_step + 1, num_steps + 1):
            state, metrics = train_step(state, next(batches))
            if timing["start"] is None:  # the first step compiles: throughput starts after it
                jax.block_until_ready(metrics)
                timing["start"] = time.perf_counter()
            else:
                timing["examples"] += examples_per_step

            if step % train_cfg.log_steps == 0 or step == num_steps:
                host_metrics = jax.device_get(metrics)
                check_finite(step, host_metrics, last_checkpoint)
                now = time.perf_counter()
                host_metrics["images_per_sec"] = (step - last_log_step) * examples_per_step / (now - last_log_time)
                last_log_time, last_log_step = now, step
                logger.scalars(step, host_metrics, "train/")
                logger.progress(step, progress_summary(host_metrics))

            if step % train_cfg.eval_steps == 0 and step != num_steps:
                eval_metrics = periodic_eval(state)
                logger.scalars(step, {k: v for k, v in eval_metrics.items() if k != "skipped"}, "eval/")
                logger.write(f"step {step}: {evaluation.log_line(eval_metrics)}")

            if step % train_cfg.ckpt_steps == 0 or step == num_steps or terminate["requested"]:
                check_finite(step, jax.device_get(metrics), last_checkpoint)
                manager.save(step, args=ocp.args.StandardSave(state))
                last_checkpoint = step
            if terminate["requested"]:
                manager.wait_until_finished()
                logger.write(f"SIGTERM: saved step {step} to {manager.directory}; run again to resume.")
                return LoopResult(state, jax.device_get(metrics), None, preempted=True)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - timing["start"] if timing["start"] else 0.0
    finally:
        manager.wait_until_finished()
        signal.signal(signal.SIGTERM, previous_handler)
        logger.close()
    return LoopResult(state, None if metrics is None else jax.device_get(metrics),
                      timing["examples"] / seconds if timing["examples"] else None, preempted=False)


# ----------------------------------------------------------------------------------------
# Tokenizers.


def _validate(config) -> None:
    train = config.train
    for name in ("num_steps", "log_steps", "eval_steps", "ckpt_steps"):
        if int(train[name]) <= 0:
            raise ValueError(f"config.train.{name} is {train[name]}; it must be a positive number of steps.")
    state_lib.is_learned_codebook(config.quantizer)
    threshold = config.quantizer.dead_code_threshold
    if threshold and not 0.0 < threshold < 1.0:
        raise ValueError(
            f"config.quantizer.dead_code_threshold is {threshold}; it is a fraction of a uniform "
            "code's share of the vectors, strictly between 0 and 1 (or 0 to never restart)."
        )


def prepare(config, workdir: str, devices=None) -> tuple[str, jax.sharding.Mesh]:
    """The start of every run: the workdir (absolute, created, holding config.json) and the
    mesh, checked against the batch sizes."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        checkpoints.write_config(workdir, config)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.data.batch_size, mesh)
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
    return workdir, mesh


def train_and_evaluate(config, workdir: str, *, devices=None) -> dict:
    """Trains `config` in `workdir` (resuming if it holds checkpoints); returns final metrics."""
    _validate(config)
    workdir, mesh = prepare(config, workdir, devices)
    is_main = jax.process_index() == 0
    replicated = parallel.replicated(mesh)

    # --- Model, optimizer, compiled steps.
    num_steps = int(config.train.num_steps)
    model = steps.build_model(config.model)
    family = build_family(config, model, num_steps)
    frozen = jax.device_put(family.frozen, replicated)
    options = parallel.config_compiler_options(config)
    compiled_step = jax.jit(family.train_step, donate_argnums=0, out_shardings=(replicated, replicated),
                            compiler_options=options)
    train_step = lambda state, batch: compiled_step(state, batch, *frozen)
    # Replicated outputs: every process holds all sums, features and reconstructions, and the
    # first rows are process 0's own images.
    eval_step = jax.jit(evaluation.make_eval_step(steps.make_reconstruct(model), config.quantizer.num_codes),
                        out_shardings=replicated, compiler_options=options)
    reconstruct = jax.jit(steps.make_reconstruct(model), out_shardings=replicated,
                          compiler_options=options)
    evaluators = load_evaluators(config).place(replicated)

    # --- State: the workdir's latest checkpoint, else config.init_from, else scratch.
    manager = checkpoints.checkpoint_manager(workdir, config.train.keep_checkpoints)
    first_batch = parallel.to_global(
        next(data_lib.make_dataset(config.data, config.data.train_split, train=True)), mesh)
    create = jax.jit(family.create, out_shardings=replicated, compiler_options=options)
    init_rng = jax.random.key(config.seed)
    abstract_state = checkpoints.abstract_like(jax.eval_shape(create, init_rng, first_batch["image"]), replicated)
    eval_image_shape = (config.data.eval_batch_size,) + first_batch["image"].shape[1:]
    code_bits = evaluation.code_bits_per_pixel(steps.make_reconstruct(model), steps.eval_weights(abstract_state),
                                               eval_image_shape, config.quantizer.num_codes)
    latest = manager.latest_step()
    if latest is not None:
        state = checkpoints.restore_state(manager, latest, abstract_state)
        logging.info("Resumed from %s at step %d.", manager.directory, latest)
    else:
        state = create(init_rng, first_batch["image"])
        if config.get("init_from"):
            loaded = checkpoints.load_params_from(config.init_from, abstract_state)
            # The weight average, if any, restarts from the loaded weights too.
            loaded["ema_params"] = state_lib.init_ema_params(
                loaded["params"], config.optim.get("params_ema_decay", 0.0))
            state = state.replace(**loaded)
            logging.info("Initialised %s from %s.", ", ".join(sorted(loaded)), config.init_from)
    start_step = int(state.step)
    if is_main:
        print(f"vqjax: {state_lib.count_params(state.params):,} parameters, "
              f"{config.quantizer.num_codes} codes, {mesh.devices.size} devices, "
              f"starting at step {start_step} of {num_steps}.", flush=True)

    logger = _Logger(workdir, num_steps, start_step)
    batches = (parallel.to_global(batch, mesh) for batch in data_lib.make_dataset(
        config.data, config.data.train_split, train=True, start_step=start_step))

    def periodic_eval(state):
        return evaluate(eval_step, state, config, mesh, evaluators, code_bits)

    loop = run_loop(state, train_step, batches, train_cfg=config.train, manager=manager, logger=logger,
                    last_checkpoint=latest, examples_per_step=config.data.batch_size,
                    periodic_eval=periodic_eval)
    if loop.preempted:
        return {"step": int(loop.state.step), "preempted": True}
    state, metrics = loop.state, loop.last_metrics

    # --- Final evaluation and outputs.
    final = evaluate(eval_step, state, config, mesh, evaluators, code_bits)
    final["step"] = int(state.step)
    final["images_per_sec"] = loop.examples_per_sec
    if metrics is not None:
        final["train_loss"] = float(metrics["loss"])
        for name in ("g_loss", "d_loss"):  # the GAN family's two objectives at the last step
            if name in metrics:
                final[name] = float(metrics[name])
    save_reconstructions(reconstruct, state, config, mesh, os.path.join(workdir, "reconstructions.png"))
    if is_main:
        checkpoints.write_json(os.path.join(workdir, "metrics.json"), final)
        skipped = f"; skipped: {', '.join(final['skipped'])}" if final.get("skipped") else ""
        print(f"vqjax: final {evaluation.log_line(dict(sorted(final.items())))}{skipped}", flush=True)
    manager.close()
    return final
