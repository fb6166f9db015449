"""What the tokenizer families (VQ-VAE, VQGAN) share: an autoencoder with a quantizer
between encoder and decoder, trained on images, evaluated by reconstruction.

Parameters are `{'net': autoencoder, 'quantizer': the quantizer's params}` (both trained by
the optimizer); `TrainState.extra['quantizer']` is the quantizer's state (EMA statistics,
usage). The functions here are pure and close over the model and the quantizer only.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax import quantizers
from vqjax.core import images as images_lib, optim, parallel, paths
from vqjax.data import images as data_lib
from vqjax.eval import reconstruction as recon_eval
from vqjax.families.base import Family
from vqjax.nets import build as nets
from vqjax.train.state import TrainState


def forward(model, quantizer: quantizers.Quantizer, params: dict, quantizer_state: Any, images: jax.Array, *,
            train: bool = False, rng: Optional[jax.Array] = None):
    """encode -> quantize -> decode: (reconstruction, encoder output z, QuantizerOutput).
    `rng` drives dropout, and the quantizer through fold_in(rng, 1) (Gumbel sampling)."""
    rngs = {"dropout": rng} if rng is not None else {}
    quantizer_rng = None if rng is None else jax.random.fold_in(rng, 1)
    z = model.apply({"params": params["net"]}, images, train=train, method="encode", rngs=rngs)
    out = quantizer({"params": params["quantizer"], "state": quantizer_state}, z, train=train,
                    rng=quantizer_rng)
    reconstruction = model.apply({"params": params["net"]}, out.quantized, train=train, method="decode",
                                 rngs=rngs)
    return reconstruction, z, out


def make_reconstruct(model, quantizer: quantizers.Quantizer) -> Callable:
    """`reconstruct(weights, images) -> (reconstruction, indices)` with weights `(params,
    quantizer state)` (`eval_weights(state)`): the function evaluation runs."""

    def reconstruct(weights, images: jax.Array):
        params, quantizer_state = weights
        reconstruction, _, out = forward(model, quantizer, params, quantizer_state, images)
        return reconstruction, out.indices

    return reconstruct


def eval_weights(state: TrainState) -> tuple:
    """What evaluation and reconstructions read: the weight average when kept, and the
    quantizer's state."""
    return state.eval_params, state.extra["quantizer"]


def init_params(model, quantizer: quantizers.Quantizer, rng: jax.Array, images: jax.Array) -> tuple[dict, Any]:
    """(params {'net', 'quantizer'}, quantizer state) for `images`; the quantizer is
    initialised on the encoder's outputs (k-means++ fits them)."""
    net_rng, quantizer_rng = jax.random.split(rng)
    net = model.init(net_rng, images)["params"]
    z = model.apply({"params": net}, images, method="encode")
    variables = quantizer.init(quantizer_rng, z)
    return {"net": net, "quantizer": variables["params"]}, variables["state"]


def quantizer_step(quantizer: quantizers.Quantizer, params: dict, quantizer_state: Any, z: jax.Array,
                   out: quantizers.QuantizerOutput, step: jax.Array, rng: jax.Array) -> tuple[dict, Any, dict]:
    """The quantizer's update after the optimizer's: (params, quantizer state, metrics)."""
    variables, metrics = quantizer.update({"params": params["quantizer"], "state": quantizer_state}, z, out,
                                          step, rng)
    return {**params, "quantizer": variables["params"]}, variables["state"], metrics


def loss_metrics(losses: dict) -> dict:
    """The quantizer's weighted loss terms as metrics: `commitment_loss`, `codebook_loss`, ..."""
    return {f"{name}_loss": value for name, value in losses.items()}


class TokenizerFamily(Family):
    """The shared half of the VQ-VAE and VQGAN families (`config.model`, `config.quantizer`,
    `config.data`, `config.optim`, `config.evals`, `config.train.cpu_convolutions`)."""

    unit = "images"
    progress = {"loss": "loss", "perplexity": "ppl", "codes_used_recent": "used"}
    init_from_extra = {"quantizer": True}

    def __init__(self, config, *, mesh, workdir: str = ""):
        del workdir
        self.mesh = mesh
        self.data_cfg = config.data
        self.evals_cfg = config.evals
        self.seed = int(config.seed)
        self.model = nets.build_autoencoder(**config.model)
        self.quantizer = quantizers.build(config.quantizer, dim=config.model.embed_dim)
        if not self.quantizer.trainable:
            raise ValueError(f"config.quantizer.kind is {config.quantizer.kind!r}, which vqjax can use but "
                             "not train; choose 'ema' or 'vq'.")
        self.num_steps = int(config.train.num_steps)
        self.params_ema_decay = float(config.optim.get("params_ema_decay", 0.0))
        self.tx = optim.make_optimizer(config.optim, self.num_steps, int(config.data.batch_size))
        self.schedules = {"learning_rate": optim.make_schedule(config.optim, self.num_steps,
                                                              int(config.data.batch_size))}
        self.compiler_options = parallel.step_compiler_options(config.train.get("cpu_convolutions", "ynnpack"))
        lpips_path = config.evals.get("lpips_path", "") or config.get("loss", {}).get("lpips_path", "")
        self.evaluators = recon_eval.load_evaluators(lpips_path, config.evals.get("inception_path", "")).place(mesh)
        data_lib.check_split(self.data_cfg, self.data_cfg.eval_split)  # before step 1, not at the first evaluation
        self._compiled = {}
        self._code_bits = None

    # --- Training.

    def example(self) -> dict:
        return next(data_lib.make_dataset(self.data_cfg, self.data_cfg.train_split, train=True))

    def create_base(self, rng: jax.Array, batch: dict) -> TrainState:
        params, quantizer_state = init_params(self.model, self.quantizer, rng, batch["image"])
        return TrainState.create(seed=self.seed, params=params, tx=self.tx, extra={"quantizer": quantizer_state},
                                 params_ema_decay=self.params_ema_decay)

    def train_batches(self, start_step: int) -> Iterator[dict]:
        return data_lib.make_dataset(self.data_cfg, self.data_cfg.train_split, train=True, start_step=start_step)

    def load_for_init(self, saved: dict) -> dict:
        from vqjax.inference import legacy

        return legacy.upgrade_tokenizer_tree(saved, self.quantizer)

    # --- Evaluation.

    def _jit(self, name: str, fn: Callable) -> Callable:
        if name not in self._compiled:
            self._compiled[name] = jax.jit(fn, out_shardings=parallel.replicated(self.mesh),
                                           compiler_options=self.compiler_options)
        return self._compiled[name]

    def eval_batches(self) -> Iterator[dict]:
        return data_lib.make_dataset(self.data_cfg, self.data_cfg.eval_split, self.data_cfg.eval_batch_size,
                                     train=False)

    def evaluate(self, state: TrainState) -> dict:
        """Reconstruction metrics over `evals.num_eval_batches` eval batches (-1 = all)."""
        reconstruct = make_reconstruct(self.model, self.quantizer)
        # Replicated outputs: every process holds all sums and features.
        eval_step = self._jit("eval", recon_eval.make_eval_step(reconstruct, self.quantizer.num_codes))
        weights = eval_weights(state)
        if self._code_bits is None:  # a property of the shapes: traced once, nothing computed
            image_shape = (self.data_cfg.eval_batch_size, self.data_cfg.image_size, self.data_cfg.image_size,
                           self.data_cfg.channels)
            self._code_bits = recon_eval.code_bits_per_pixel(reconstruct, weights, image_shape,
                                                             self.quantizer.num_codes)
        return recon_eval.evaluate(eval_step, weights, self.eval_batches(), self.mesh,
                                   num_codes=self.quantizer.num_codes, code_bits=self._code_bits,
                                   evaluators=self.evaluators, num_batches=self.evals_cfg.num_eval_batches)

    def reconstruction_rows(self, state: TrainState) -> list[np.ndarray]:
        """Originals above their reconstructions (the first eval batch's first images)."""
        reconstruct = self._jit("reconstruct", make_reconstruct(self.model, self.quantizer))
        batch = next(self.eval_batches())
        reconstructions, _ = reconstruct(eval_weights(state), parallel.to_global(batch, self.mesh)["image"])
        count = min(self.evals_cfg.num_recon_images, int(batch["mask"].sum()))
        reconstructions = np.clip(np.asarray(jax.device_get(reconstructions))[:count], -1.0, 1.0)
        return [batch["image"][:count], reconstructions]

    def eval_images(self, state: TrainState) -> dict[str, np.ndarray]:
        return {"reconstructions": images_lib.image_grid(self.reconstruction_rows(state))}

    def finish(self, state: TrainState, workdir: str) -> dict:
        """reconstructions.png: originals (top row) above their reconstructions."""
        grid = images_lib.image_grid(self.reconstruction_rows(state))
        if jax.process_index() == 0:
            images_lib.save_png(paths.join(workdir, "reconstructions.png"), grid)
        return {}

    def describe(self, state: TrainState, num_devices: int) -> str:
        return (f"{optim.count_params(state.params['net']):,} parameters, {self.quantizer.num_codes} codes, "
                f"{num_devices} devices")
