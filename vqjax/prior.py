"""Priors over VQ code maps: training, likelihood evaluation and sample images.

`train_and_evaluate(config, workdir)` trains a GPT (`config.model.name='gpt'`) or MaskGIT
(`'maskgit'`) transformer on the code maps of `config.tokenizer_dir` (a tokenizer workdir or a
converted model), cached once in `<workdir>/tokens/`. It reuses the tokenizers' loop
(`trainer.run_loop`: logging, checkpoints, preemption, resume). Outputs in `workdir`:
  config.json, checkpoints/, tensorboard/, tokens/
  metrics.json     bits_per_token and bits_per_dim on the eval split (see `make_eval_step`)
  samples.png      decoded samples (a row per class for a class-conditional prior)
  inpainting.png   MaskGIT only: originals, the masked inputs and their completions, for a
                   centre hole (inpainting) and a kept centre (outpainting)

Objectives. GPT: the cross entropy of every token given the condition and the tokens before
it (taming's Net2NetTransformer). MaskGIT (Chang et al. 2022, Sec. 3.2): per sequence a ratio
r ~ U(0, 1), ceil(gamma(r) * L) random positions replaced by the mask token, cross entropy
(label-smoothed) on those positions. With `loss.cond_drop > 0` the class label is replaced by
the null label at that rate, so one network also gives the unconditional logits
classifier-free guidance needs.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from vqjax import (checkpoints, evaluation, parallel, pretrained, sampling, state as state_lib,
                   tokens as tokens_lib, trainer)
from vqjax.nets.transformer import Transformer

KINDS = {"gpt": True, "maskgit": False}  # name -> causal


def build_model(model_cfg, num_codes: int, seq_len: int) -> Transformer:
    """The transformer of `config.model` over `seq_len` codes of a `num_codes` codebook."""
    fields = dict(model_cfg)
    name = fields.pop("name")
    if name not in KINDS:
        raise ValueError(f"config.model.name is {name!r}; a prior is one of {sorted(KINDS)}.")
    from vqjax.steps import parse_dtype

    dtype = parse_dtype(fields.pop("dtype", "float32"))
    try:
        return Transformer(vocab_size=num_codes, seq_len=seq_len, causal=KINDS[name], dtype=dtype, **fields)
    except TypeError as err:
        raise ValueError(f"config.model does not fit a {name} transformer ({err}).") from None


# ----------------------------------------------------------------------------------------
# Objectives.


def drop_labels(rng: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """Each label replaced by the null label with probability `rate` (condition dropout)."""
    if rate <= 0:
        return labels
    return jnp.where(jax.random.uniform(rng, labels.shape) < rate, null_label, labels)


def maskgit_mask(rng: jax.Array, batch: int, length: int, schedule: str) -> jax.Array:
    """True at the positions to mask: per row ceil(gamma(r) * L) of them, r ~ U(0, 1), chosen
    uniformly at random."""
    ratio_rng, order_rng = jax.random.split(rng)
    ratio = jax.random.uniform(ratio_rng, (batch, 1))
    count = jnp.maximum(1, jnp.ceil(sampling.mask_ratio(ratio, schedule) * length)).astype(jnp.int32)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(order_rng, (batch, length)), axis=-1), axis=-1)
    return ranks < count


def token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """-log p(token) per position, in nats (float32)."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), tokens[..., None], -1)[..., 0]


def smoothed_cross_entropy(logits: jax.Array, tokens: jax.Array, smoothing: float) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(tokens, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_train_step(config, model: Transformer, tx: optax.GradientTransformation) -> Callable:
    """train_step(state, batch{'tokens' [B, L], 'label' [B]}) -> (state, metrics)."""
    cond_drop = float(config.loss.cond_drop) if model.num_classes > 0 else 0.0
    smoothing = float(config.loss.label_smoothing)
    schedule = config.loss.mask_schedule
    ema_decay = float(config.optim.get("params_ema_decay", 0.0))

    def loss_fn(params, tokens, labels, rng):
        drop_rng, mask_rng, dropout_rng = jax.random.split(rng, 3)
        labels = drop_labels(drop_rng, labels, cond_drop, model.null_label)
        if model.causal:
            inputs, weights = tokens, jnp.ones(tokens.shape, jnp.float32)
        else:
            masked = maskgit_mask(mask_rng, *tokens.shape, schedule)
            inputs, weights = jnp.where(masked, model.mask_token, tokens), masked.astype(jnp.float32)
        logits = model.apply({"params": params}, inputs, labels, train=True, rngs={"dropout": dropout_rng})
        loss = jnp.sum(smoothed_cross_entropy(logits, tokens, smoothing) * weights) / jnp.sum(weights)
        nll = jnp.sum(token_nll(logits, tokens) * weights) / jnp.sum(weights)
        accuracy = jnp.sum((jnp.argmax(logits, -1) == tokens) * weights) / jnp.sum(weights)
        return loss, {"nll": nll, "accuracy": accuracy, "masked_fraction": jnp.mean(weights)}

    def train_step(state: state_lib.PriorState, batch: dict):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch["tokens"], batch["label"], state.step_rng())
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=state_lib.update_ema_params(state.ema_params, params, ema_decay))
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
        if model.causal:  # the training NLL is a likelihood only for the autoregressive model
            metrics["bits_per_token"] = aux["nll"] / math.log(2)
        return state, metrics

    return train_step


def make_eval_step(model: Transformer) -> Callable:
    """eval_step(params, batch, rng) -> sums of per-sequence negative log-likelihoods (nats).

    GPT: the exact -log p(x) = sum_i -log p(x_i | x_<i, c). MaskGIT defines no likelihood of its
    own; we report the any-order bound it supports (Uria et al. 2014; Hoogeboom et al. 2022,
    ARDMs): -log p(x) <= E_m [L / m * sum over m random masked positions of -log p(x_j | rest)],
    m ~ U{1..L}, estimated with one draw per sequence (fixed rng, so runs compare).
    """

    def eval_step(params, batch: dict, rng: jax.Array):
        tokens, labels, mask = batch["tokens"], batch["label"], batch["mask"]
        batch_size, length = tokens.shape
        if model.causal:
            nll = jnp.sum(token_nll(model.apply({"params": params}, tokens, labels), tokens), axis=-1)
        else:
            count_rng, order_rng = jax.random.split(rng)
            count = jax.random.randint(count_rng, (batch_size, 1), 1, length + 1)
            ranks = jnp.argsort(jnp.argsort(jax.random.uniform(order_rng, (batch_size, length)), -1), -1)
            masked = ranks < count
            logits = model.apply({"params": params}, jnp.where(masked, model.mask_token, tokens), labels)
            nll = length / count[:, 0] * jnp.sum(token_nll(logits, tokens) * masked, axis=-1)
        return {"nll_sum": jnp.sum(nll * mask), "num_examples": jnp.sum(mask)}

    return eval_step


def likelihood_metrics(nll_sum: float, num_examples: float, seq_len: int, image_shape: tuple) -> dict:
    """Mean NLL per sequence (nats) -> bits per token and bits per image dimension (H * W * C
    sub-pixels: the VQ-VAE paper's latent term of bits/dim)."""
    bits_per_image = nll_sum / max(num_examples, 1.0) / math.log(2)
    return {"bits_per_token": bits_per_image / seq_len,
            "bits_per_dim": bits_per_image / math.prod(image_shape)}


# ----------------------------------------------------------------------------------------
# Samples.


def sample_tokens(model: Transformer, params, rng: jax.Array, labels: jax.Array, sampling_cfg,
                  **maskgit_start) -> jax.Array:
    """Code maps [B, L] from the prior with `config.sampling`'s settings; keyword `tokens` and
    `token_mask` (MaskGIT) inpaint."""
    guidance = model.num_classes > 0 and float(sampling_cfg.guidance_scale) != 1.0
    common = dict(temperature=float(sampling_cfg.temperature), guidance=guidance,
                  guidance_scale=float(sampling_cfg.guidance_scale))
    if model.causal:
        return sampling.sample_gpt(model, params, rng, labels, top_k=int(sampling_cfg.top_k),
                                   top_p=float(sampling_cfg.top_p), **common)
    return sampling.sample_maskgit(model, params, rng, labels, num_steps=int(sampling_cfg.num_steps),
                                   schedule=sampling_cfg.schedule,
                                   choice_temperature=float(sampling_cfg.choice_temperature),
                                   **common, **maskgit_start)


def sample_labels(model: Transformer, count: int, start: int = 0) -> np.ndarray:
    """Classes start, start + 1, ... in turn (mod the class count) for a class-conditional
    prior, else the null label."""
    if model.num_classes == 0:
        return np.full((count,), model.null_label, np.int32)
    return ((start + np.arange(count)) % model.num_classes).astype(np.int32)


def generation_metrics(config, model: Transformer, params, tokenizer, data_cfg, mesh, code_shape: tuple) -> dict:
    """FID, IS and KID of `evals.num_fid_samples` samples (classes in turn) against as many
    eval-split images, with `config.sampling`'s settings; skipped with a reason without
    Inception weights."""
    if not config.evals.inception_path:
        return {"skipped": {"fid": "no FID Inception weights (config.evals.inception_path); make them with "
                                   "`python -m vqjax.convert inception`"}}
    from vqjax import data as data_lib
    from vqjax.nets import inception

    variables = jax.device_put(inception.load_variables(config.evals.inception_path), parallel.replicated(mesh))
    batch = int(config.data.eval_batch_size)
    num_batches = -(-int(config.evals.num_fid_samples) // batch)
    rng = jax.random.fold_in(jax.random.key(int(config.sampling.seed)), 2)

    def fake_batches():
        for i in range(num_batches):
            labels = sample_labels(model, batch, start=i * batch)
            codes = sample_tokens(model, params, jax.random.fold_in(rng, i), labels, config.sampling)
            yield tokenizer.decode_indices(codes.reshape(batch, *code_shape))

    real = data_lib.make_dataset(data_cfg, data_cfg.eval_split, batch, train=False)
    real = (b for _, b in zip(range(num_batches), real))
    return evaluation.sample_quality(fake_batches(), real, variables, mesh,
                                     kid_subset_size=min(1000, num_batches * batch))


def centre_square(batch: int, size: int, keep_inside: bool) -> np.ndarray:
    """Pixel masks [B, S, S], True = regenerate: the centre half-size square (inpainting), or
    everything but it (outpainting)."""
    mask = np.zeros((batch, size, size), bool)
    lo, hi = size // 4, size - size // 4
    mask[:, lo:hi, lo:hi] = True
    return ~mask if keep_inside else mask


def inpainting_rows(model, params, tokenizer, images: np.ndarray, labels: np.ndarray, rng,
                    sampling_cfg) -> list[np.ndarray]:
    """Rows of `inpainting.png`: originals; for a centre hole and then a kept centre, the input
    with the regenerated region greyed, and the completion."""
    _, codes = tokenizer.encode(images)
    code_shape = codes.shape[1:]
    codes = codes.reshape(len(images), -1)
    rows = [images]
    for keep_inside in (False, True):
        pixel_mask = centre_square(len(images), images.shape[1], keep_inside)
        token_mask = sampling.token_mask_from_pixels(pixel_mask, tokenizer.downsampling_factor,
                                                     int(sampling_cfg.inpaint_dilation)).reshape(len(images), -1)
        completed = sample_tokens(model, params, rng, labels, sampling_cfg, tokens=codes, token_mask=token_mask)
        decoded = np.asarray(tokenizer.decode_indices(completed.reshape(-1, *code_shape)))
        rows += [np.where(pixel_mask[..., None], 0.0, images), decoded]
    return rows


class Prior:
    """A trained prior with its tokenizer, for notebooks and scripts:

        prior = vqjax.prior.load("/tmp/prior_quickstart")
        images = prior.sample(jax.random.key(0), labels=[0, 1, 2, 3])

    Attributes: `config`, `model` (the Transformer), `params` (the weight average when the run
    kept one), `tokenizer` (a `vqjax.pretrained.Tokenizer`), `code_shape` ((h, w)).
    """

    def __init__(self, config, model: Transformer, params, tokenizer, code_shape: tuple):
        self.config, self.model, self.params = config, model, params
        self.tokenizer, self.code_shape = tokenizer, tuple(code_shape)

    def sample_codes(self, rng: jax.Array, labels=None, num_samples: int = 0, **sampling) -> jax.Array:
        """Code maps [B, h, w]. `labels` (class per sample; default the null label x
        `num_samples`); keyword overrides of `config.sampling` (temperature, top_k, top_p,
        guidance_scale, num_steps, schedule, choice_temperature)."""
        if labels is None:
            if num_samples <= 0:
                raise ValueError("Pass labels (one class per sample) or num_samples for unconditional samples.")
            labels = np.full((num_samples,), self.model.null_label, np.int32)
        labels = np.asarray(labels, np.int32)
        if labels.ndim != 1 or labels.min() < 0 or labels.max() > self.model.null_label:
            raise ValueError(f"Labels must be a list of classes in [0, {self.model.null_label}] "
                             f"({self.model.null_label} = unconditional); got {labels.tolist()}.")
        sampling_cfg = ml_collections.ConfigDict(self.config.sampling.to_dict())
        sampling_cfg.update(sampling)
        codes = sample_tokens(self.model, self.params, rng, labels, sampling_cfg)
        return codes.reshape(len(labels), *self.code_shape)

    def sample(self, rng: jax.Array, labels=None, num_samples: int = 0, **sampling) -> jax.Array:
        """Images [B, H, W, C] in [-1, 1]: sampled code maps through the tokenizer's decoder."""
        codes = self.sample_codes(rng, labels, num_samples, **sampling)
        return jnp.clip(self.tokenizer.decode_indices(codes), -1.0, 1.0)


def load(workdir: str) -> Prior:
    """The prior trained in `workdir` (its newest checkpoint) and the tokenizer it names."""
    config = checkpoints.read_config(workdir)
    if "tokenizer_dir" not in config:
        raise ValueError(f"{workdir} holds a tokenizer, not a prior; load it with vqjax.pretrained.load.")
    tokenizer = pretrained.load(config.tokenizer_dir)
    data_cfg = resolve_data(config, tokenizer)
    side = data_cfg.image_size // tokenizer.downsampling_factor
    model = build_model(config.model, tokenizer.num_codes, side * side)
    _, saved = checkpoints.read_latest(workdir, "vqjax.prior.load's workdir")
    params = saved.get("ema_params") or saved["params"]
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, side * side), jnp.int32),
                                                 jnp.zeros((1,), jnp.int32))["params"])
    problem = checkpoints.first_mismatch(params, expected)
    if problem:
        raise ValueError(f"The checkpoint in {workdir} does not fit its config.json ({problem}).")
    return Prior(config, model, params, tokenizer, (side, side))


def evaluate_workdir(eval_config, *, devices=None) -> dict:
    """`python -m experiments.evaluate` on a prior's workdir (`eval_config.model_dir`): bits per
    token and per dimension on the eval split (its batch size and count from `eval_config`)
    and, with `evals.inception_path`, FID / IS / KID of `evals.num_fid_samples` samples."""
    loaded = load(eval_config.model_dir)
    config = ml_collections.ConfigDict(loaded.config.to_dict())
    config.data.eval_batch_size = eval_config.data.eval_batch_size
    config.evals.update(num_eval_batches=eval_config.evals.num_eval_batches,
                        inception_path=eval_config.evals.inception_path,
                        num_fid_samples=eval_config.evals.num_fid_samples)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
    replicated = parallel.replicated(mesh)
    data_cfg = resolve_data(config, loaded.tokenizer)
    codes = tokens_lib.cached_codes(eval_config.model_dir, loaded.tokenizer, config.tokenizer_dir, data_cfg,
                                    data_cfg.eval_split, flip=False, batch_size=int(config.tokens.encode_batch_size),
                                    mesh=mesh, limit=int(config.tokens.max_eval_images))
    eval_step = jax.jit(make_eval_step(loaded.model), out_shardings=replicated)
    image_shape = (data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
    result = evaluate(eval_step, jax.device_put(loaded.params, replicated), codes, config, mesh,
                      loaded.model.seq_len, image_shape)
    result["likelihood"] = "exact" if loaded.model.causal else "any-order upper bound (one draw per code map)"
    result.update(generation_metrics(config, loaded.model, loaded.params, loaded.tokenizer, data_cfg, mesh,
                                     loaded.code_shape))
    return result


# ----------------------------------------------------------------------------------------
# The experiment.


def resolve_data(config, tokenizer) -> ml_collections.ConfigDict:
    """`data.source='tokenizer'`: the tokenizer's data with this config's batch sizes."""
    if config.data.source != "tokenizer":
        return config.data
    data_cfg = ml_collections.ConfigDict(tokenizer.config.data.to_dict())
    for name in ("batch_size", "eval_batch_size", "train_split", "eval_split", "seed"):
        data_cfg[name] = config.data[name]
    return data_cfg


def _validate(config, model: Transformer, train_codes: dict) -> None:
    if model.num_classes > 0:
        top = int(train_codes["labels"].max())
        if top >= model.num_classes:
            raise ValueError(f"The data has class label {top} but config.model.num_classes is "
                             f"{model.num_classes}; set it to at least {top + 1} (0 = unconditional).")
    if not 0.0 <= float(config.loss.cond_drop) < 1.0:
        raise ValueError(f"config.loss.cond_drop is {config.loss.cond_drop}; it is a probability in [0, 1).")


def evaluate(eval_step, params, codes: dict, config, mesh, seq_len: int, image_shape: tuple) -> dict:
    sums = None
    for i, batch in enumerate(tokens_lib.eval_batches(codes, config.data.eval_batch_size,
                                                      config.evals.num_eval_batches)):
        rng = jax.random.fold_in(jax.random.key(config.seed), i)
        out = eval_step(params, parallel.to_global(batch, mesh), rng)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    result = likelihood_metrics(float(sums["nll_sum"]), float(sums["num_examples"]), seq_len, image_shape)
    result["num_eval_examples"] = int(sums["num_examples"])
    return result


def train_and_evaluate(config, workdir: str, *, devices=None) -> dict:
    """Trains the prior of `config` in `workdir` (resuming if it holds checkpoints); returns
    the final metrics (also written to metrics.json)."""
    if not config.tokenizer_dir:
        raise ValueError("config.tokenizer_dir is empty; pass --config.tokenizer_dir=DIR, a tokenizer "
                         "workdir or a directory written by `python -m vqjax.convert taming`.")
    workdir, mesh = trainer.prepare(config, workdir, devices)
    is_main = jax.process_index() == 0
    replicated = parallel.replicated(mesh)

    # --- Tokens: the tokenizer's code maps of both splits, encoded once.
    tokenizer = pretrained.load(config.tokenizer_dir)
    data_cfg = resolve_data(config, tokenizer)
    encode = dict(tokenizer=tokenizer, tokenizer_dir=config.tokenizer_dir, data_cfg=data_cfg,
                  batch_size=int(config.tokens.encode_batch_size), mesh=mesh)
    start = time.perf_counter()
    train_codes = tokens_lib.cached_codes(workdir, split=data_cfg.train_split, flip=bool(config.tokens.flip),
                                          limit=int(config.tokens.max_train_images), **encode)
    eval_codes = tokens_lib.cached_codes(workdir, split=data_cfg.eval_split, flip=False,
                                         limit=int(config.tokens.max_eval_images), **encode)
    logging.info("Code maps ready in %.1f s.", time.perf_counter() - start)
    code_shape = train_codes["codes"].shape[1:]
    seq_len = math.prod(code_shape)
    image_shape = (data_cfg.image_size, data_cfg.image_size, data_cfg.channels)

    # --- Model, optimizer, state.
    model = build_model(config.model, tokenizer.num_codes, seq_len)
    _validate(config, model, train_codes)
    num_steps = int(config.train.num_steps)
    tx = state_lib.make_optimizer(config.optim, num_steps, int(config.data.batch_size),
                                  decay_mask=state_lib.decay_kernels_only)

    def create(rng):
        example = jnp.zeros((1, seq_len), jnp.int32)
        params = model.init(rng, example, jnp.zeros((1,), jnp.int32))["params"]
        return state_lib.PriorState(
            step=jnp.zeros((), jnp.int32), seed=jnp.asarray(config.seed, jnp.uint32), params=params,
            opt_state=tx.init(params),
            ema_params=state_lib.init_ema_params(params, config.optim.get("params_ema_decay", 0.0)))

    create = jax.jit(create, out_shardings=replicated)
    init_rng = jax.random.key(config.seed)
    manager = checkpoints.checkpoint_manager(workdir, config.train.keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        abstract_state = checkpoints.abstract_like(jax.eval_shape(create, init_rng), replicated)
        state = checkpoints.restore_state(manager, latest, abstract_state)
    else:
        state = create(init_rng)
    start_step = int(state.step)
    if is_main:
        print(f"vqjax: {model.__class__.__name__} ({config.model.name}) with "
              f"{state_lib.count_params(state.params):,} parameters over {seq_len} codes "
              f"({'x'.join(map(str, code_shape))}) of {tokenizer.num_codes}, "
              f"{len(train_codes['labels']):,} training code maps, {mesh.devices.size} devices, "
              f"starting at step {start_step} of {num_steps}.", flush=True)

    # --- Training.
    train_step = jax.jit(make_train_step(config, model, tx), donate_argnums=0,
                         out_shardings=(replicated, replicated))
    eval_step = jax.jit(make_eval_step(model), out_shardings=replicated)
    batches = (parallel.to_global(b, mesh) for b in tokens_lib.batches(
        train_codes, config.data.batch_size, seed=int(config.data.seed), start_step=start_step))

    def periodic_eval(state):
        return evaluate(eval_step, state.eval_params, eval_codes, config, mesh, seq_len, image_shape)

    logger = trainer._Logger(workdir, num_steps, start_step)
    loop = trainer.run_loop(state, train_step, batches, train_cfg=config.train, manager=manager,
                            logger=logger, last_checkpoint=latest,
                            examples_per_step=config.data.batch_size, periodic_eval=periodic_eval)
    manager.close()
    if loop.preempted:
        return {"step": int(loop.state.step), "preempted": True}
    state = loop.state

    # --- Final evaluation and images.
    final = periodic_eval(state)
    final.update(step=int(state.step), code_maps_per_sec=loop.examples_per_sec,
                 likelihood="exact" if model.causal else "any-order upper bound (one draw per code map)")
    if loop.last_metrics is not None:
        final["train_loss"] = float(loop.last_metrics["loss"])
    params = jax.device_get(state.eval_params)
    write_images(config, model, params, tokenizer, data_cfg, workdir, code_shape)
    final.update(generation_metrics(config, model, params, tokenizer, data_cfg, mesh, code_shape))
    if is_main:
        checkpoints.write_json(os.path.join(workdir, "metrics.json"), final)
        skipped = f"; skipped: {', '.join(final['skipped'])}" if final.get("skipped") else ""
        print(f"vqjax: final {evaluation.log_line(dict(sorted(final.items())))}{skipped}", flush=True)
    return final


def write_images(config, model, params, tokenizer, data_cfg, workdir: str, code_shape: tuple) -> None:
    """samples.png, and inpainting.png for MaskGIT (every process samples; process 0 writes)."""
    from vqjax import data as data_lib

    sampling_cfg = config.sampling
    rng = jax.random.key(int(sampling_cfg.seed))
    count = int(sampling_cfg.num_samples)
    labels = sample_labels(model, count)
    codes = sample_tokens(model, params, rng, labels, sampling_cfg)
    images = np.asarray(tokenizer.decode_indices(codes.reshape(count, *code_shape)))
    per_row = model.num_classes if 0 < model.num_classes <= count else min(count, 8)
    rows = [images[i : i + per_row] for i in range(0, count - count % per_row, per_row)]
    if jax.process_index() == 0:
        trainer.save_png(os.path.join(workdir, "samples.png"), trainer.image_grid(rows))
    if not model.causal:
        batch = next(data_lib.make_dataset(data_cfg, data_cfg.eval_split, data_cfg.eval_batch_size,
                                           train=False, process_index=0, process_count=1))
        n = min(8, int(batch["mask"].sum()))
        labels = batch["label"][:n] if model.num_classes else sample_labels(model, n)
        rows = inpainting_rows(model, params, tokenizer, batch["image"][:n], labels,
                               jax.random.fold_in(rng, 1), sampling_cfg)
        if jax.process_index() == 0:
            trainer.save_png(os.path.join(workdir, "inpainting.png"), trainer.image_grid(rows))
