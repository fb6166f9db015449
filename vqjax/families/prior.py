"""The prior family (`config.family='prior'`): a GPT (`config.model.name='gpt'`) or MaskGIT
(`'maskgit'`) transformer over the code maps of a trained tokenizer (`config.tokenizer_dir`:
a tokenizer workdir or a converted model), encoded once and cached in `<workdir>/tokens/`.

Objectives. GPT: the cross entropy of every token given the condition and the tokens before
it (taming's Net2NetTransformer). MaskGIT (Chang et al. 2022, Sec. 3.2): per sequence a ratio
r ~ U(0, 1), ceil(gamma(r) * L) random positions replaced by the mask token, cross entropy
(label-smoothed) on those positions. With `loss.cond_drop > 0` the class label is replaced by
the null label at that rate, so one network also gives the unconditional logits
classifier-free guidance needs.

Final outputs: bits_per_token and bits_per_dim on the eval split (`vqjax.eval.likelihood`),
FID / IS / KID of samples with `evals.inception_path`, samples.png (a row per class for a
class-conditional prior) and, for MaskGIT, inpainting.png (originals, the masked inputs and
their completions, for a centre hole and a kept centre).
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqjax.core import images as images_lib, optim, parallel, paths
from vqjax.data import codes as codes_lib, images as data_lib
from vqjax.eval import likelihood, samples as samples_eval
from vqjax.eval.likelihood import token_nll
from vqjax.families.base import Family
from vqjax.inference import prior as prior_inference, tokenizer as tokenizer_lib
from vqjax.nets import build as nets, inception as inception_lib
from vqjax.sampling import decode, prior as prior_sampling
from vqjax.train.state import TrainState


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
    count = jnp.maximum(1, jnp.ceil(decode.mask_ratio(ratio, schedule) * length)).astype(jnp.int32)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(order_rng, (batch, length)), axis=-1), axis=-1)
    return ranks < count


def smoothed_cross_entropy(logits: jax.Array, tokens: jax.Array, smoothing: float) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(tokens, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


class PriorFamily(Family):
    """Reads `config.tokenizer_dir`, `tokens`, `data`, `model`, `loss`, `optim`, `evals`,
    `sampling`. Building it encodes (or reads the cache of) both splits' code maps."""

    name = "prior"
    unit = "code maps"
    progress = {"loss": "loss", "accuracy": "acc"}

    def __init__(self, config, *, mesh, workdir: str):
        if not config.tokenizer_dir:
            raise ValueError("config.tokenizer_dir is empty; pass --config.tokenizer_dir=DIR, a tokenizer "
                             "workdir or a directory written by `python -m vqjax.convert taming`.")
        self.mesh = mesh
        self.tokenizer = tokenizer_lib.load(config.tokenizer_dir)
        self.data_cfg = prior_inference.resolve_data(config.data, self.tokenizer)
        self.evals_cfg, self.sampling_cfg = config.evals, config.sampling
        if self.evals_cfg.inception_path:  # a missing or wrong file found now, not at the first FID
            inception_lib.load_variables(self.evals_cfg.inception_path)
        encode = dict(tokenizer=self.tokenizer, tokenizer_dir=config.tokenizer_dir, data_cfg=self.data_cfg,
                      batch_size=int(config.tokens.encode_batch_size), mesh=mesh)
        start = time.perf_counter()
        self.train_codes = codes_lib.cached_codes(workdir, split=self.data_cfg.train_split,
                                                  flip=bool(config.tokens.flip),
                                                  limit=int(config.tokens.max_train_images), **encode)
        self.eval_codes = codes_lib.cached_codes(workdir, split=self.data_cfg.eval_split, flip=False,
                                                 limit=int(config.tokens.max_eval_images), **encode)
        if jax.process_index() == 0:
            print(f"vqjax: code maps ready in {time.perf_counter() - start:.1f} s.", flush=True)
        self.image_shape = (self.data_cfg.image_size, self.data_cfg.image_size, self.data_cfg.channels)
        self.setup_training(config, self.tokenizer.num_codes, self.train_codes["codes"].shape[1:])
        check_labels_and_loss(config.loss, self.model, self.train_codes)
        self.eval_step = jax.jit(likelihood.make_eval_step(self.model), out_shardings=parallel.replicated(mesh))

    def setup_training(self, config, num_codes: int, code_shape: tuple[int, ...]) -> None:
        """The transformer, objective and optimizer for code maps of `code_shape` over
        `num_codes` codes: all `create` and `train_step` need (benchmarks build only this)."""
        self.code_shape, self.seq_len = tuple(code_shape), math.prod(code_shape)
        self.model = nets.build_transformer(num_codes=num_codes, seq_len=self.seq_len, **config.model)
        self.seed = int(config.seed)
        self.cond_drop = float(config.loss.cond_drop) if self.model.num_classes > 0 else 0.0
        self.smoothing = float(config.loss.label_smoothing)
        self.mask_schedule = config.loss.mask_schedule
        num_steps = int(config.train.num_steps)
        self.batch_size = int(config.data.batch_size)
        self.tx = optim.make_optimizer(config.optim, num_steps, self.batch_size,
                                       decay_mask=optim.decay_kernels_only)
        self.schedules = {"learning_rate": optim.make_schedule(config.optim, num_steps, self.batch_size)}
        self.params_ema_decay = float(config.optim.get("params_ema_decay", 0.0))
        self.compiler_options = {}

    # --- Training.

    def example(self) -> dict:
        return next(self.train_batches(0))

    def create(self, rng: jax.Array, batch: dict) -> TrainState:
        del batch
        example = jnp.zeros((1, self.seq_len), jnp.int32)
        params = self.model.init(rng, example, jnp.zeros((1,), jnp.int32))["params"]
        return TrainState.create(seed=self.seed, params=params, tx=self.tx, params_ema_decay=self.params_ema_decay)

    def loss_fn(self, params, tokens, labels, rng):
        model = self.model
        drop_rng, mask_rng, dropout_rng = jax.random.split(rng, 3)
        labels = drop_labels(drop_rng, labels, self.cond_drop, model.null_label)
        if model.causal:
            inputs, weights = tokens, jnp.ones(tokens.shape, jnp.float32)
        else:
            masked = maskgit_mask(mask_rng, *tokens.shape, self.mask_schedule)
            inputs, weights = jnp.where(masked, model.mask_token, tokens), masked.astype(jnp.float32)
        logits = model.apply({"params": params}, inputs, labels, train=True, rngs={"dropout": dropout_rng})
        loss = jnp.sum(smoothed_cross_entropy(logits, tokens, self.smoothing) * weights) / jnp.sum(weights)
        nll = jnp.sum(token_nll(logits, tokens) * weights) / jnp.sum(weights)
        accuracy = jnp.sum((jnp.argmax(logits, -1) == tokens) * weights) / jnp.sum(weights)
        return loss, {"nll": nll, "accuracy": accuracy, "masked_fraction": jnp.mean(weights)}

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """batch {'tokens' [B, L], 'label' [B]}."""
        (loss, aux), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
            state.params, batch["tokens"], batch["label"], state.step_rng())
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=optim.update_ema_params(state.ema_params, params, self.params_ema_decay))
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
        if self.model.causal:  # the training NLL is a likelihood only for the autoregressive model
            metrics["bits_per_token"] = aux["nll"] / math.log(2)
        return state, metrics

    def train_batches(self, start_step: int) -> Iterator[dict]:
        return codes_lib.batches(self.train_codes, self.batch_size, seed=int(self.data_cfg.seed),
                                 start_step=start_step)

    # --- Evaluation and outputs.

    def evaluate(self, state: TrainState) -> dict:
        result = likelihood.evaluate(self.eval_step, state.eval_params, self.eval_codes,
                                     batch_size=int(self.data_cfg.eval_batch_size),
                                     num_batches=int(self.evals_cfg.num_eval_batches), seed=self.seed,
                                     mesh=self.mesh, seq_len=self.seq_len, image_shape=self.image_shape)
        result["likelihood"] = likelihood.describe(self.model)
        return result

    def sample_rows(self, params) -> list[np.ndarray]:
        """Rows of samples.png: a row per class for a class-conditional prior."""
        count = int(self.sampling_cfg.num_samples)
        labels = prior_sampling.sample_labels(self.model, count)
        codes = prior_sampling.sample_tokens(self.model, params, jax.random.key(int(self.sampling_cfg.seed)),
                                             labels, self.sampling_cfg)
        images = np.asarray(self.tokenizer.decode_indices(codes.reshape(count, *self.code_shape)))
        per_row = self.model.num_classes if 0 < self.model.num_classes <= count else min(count, 8)
        return [images[i : i + per_row] for i in range(0, count - count % per_row, per_row)]

    def eval_images(self, state: TrainState) -> dict[str, np.ndarray]:
        return {"samples": images_lib.image_grid(self.sample_rows(jax.device_get(state.eval_params)))}

    def finish(self, state: TrainState, workdir: str) -> dict:
        """samples.png, inpainting.png (MaskGIT), and FID / IS / KID of samples."""
        params = jax.device_get(state.eval_params)
        write = jax.process_index() == 0
        grid = images_lib.image_grid(self.sample_rows(params))
        if write:
            images_lib.save_png(paths.join(workdir, "samples.png"), grid)
        if not self.model.causal:
            grid = images_lib.image_grid(self.inpainting_rows(params))
            if write:
                images_lib.save_png(paths.join(workdir, "inpainting.png"), grid)
        return samples_eval.generation_metrics(
            self.model, params, self.tokenizer, sampling_cfg=self.sampling_cfg, data_cfg=self.data_cfg,
            inception_path=self.evals_cfg.inception_path, num_samples=int(self.evals_cfg.num_fid_samples),
            mesh=self.mesh, code_shape=self.code_shape)

    def inpainting_rows(self, params) -> list[np.ndarray]:
        batch = next(data_lib.make_dataset(self.data_cfg, self.data_cfg.eval_split, self.data_cfg.eval_batch_size,
                                           train=False, process_index=0, process_count=1))
        n = min(8, int(batch["mask"].sum()))
        labels = batch["label"][:n] if self.model.num_classes else prior_sampling.sample_labels(self.model, n)
        rng = jax.random.fold_in(jax.random.key(int(self.sampling_cfg.seed)), 1)
        return prior_sampling.inpainting_rows(self.model, params, self.tokenizer, batch["image"][:n], labels, rng,
                                              self.sampling_cfg)

    def describe(self, state: TrainState, num_devices: int) -> str:
        return (f"{type(self.model).__name__} ({'gpt' if self.model.causal else 'maskgit'}) with "
                f"{optim.count_params(state.params):,} parameters over {self.seq_len} codes "
                f"({'x'.join(map(str, self.code_shape))}) of {self.tokenizer.num_codes}, "
                f"{len(self.train_codes['labels']):,} training code maps, {num_devices} devices")


def check_labels_and_loss(loss_cfg, model, train_codes: dict) -> None:
    if model.num_classes > 0:
        top = int(train_codes["labels"].max())
        if top >= model.num_classes:
            raise ValueError(f"The data has class label {top} but config.model.num_classes is "
                             f"{model.num_classes}; set it to at least {top + 1} (0 = unconditional).")
    if not 0.0 <= float(loss_cfg.cond_drop) < 1.0:
        raise ValueError(f"config.loss.cond_drop is {loss_cfg.cond_drop}; it is a probability in [0, 1).")
