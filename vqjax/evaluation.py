"""Evaluation of tokenizers: one jit-compiled step over sharded batches and one loop, used by
the trainer's periodic and final evals and by `python -m experiments.evaluate`.

Per batch, on the mesh: reconstruction MSE, PSNR and SSIM (of the reconstruction clipped to
[-1, 1], as an image file would hold it), LPIPS when its weights are given, code counts, and
the FID Inception's pool features of the originals and reconstructions when its weights are
given. Sums come back to the host once per batch; features go into float64 streaming
statistics, so any number of images fits. Metrics whose weights are absent are skipped with
a one-line reason, never reported as 0.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vqjax import losses, metrics, parallel, quantizers
from vqjax.nets import inception as inception_lib
from vqjax.nets import lpips as lpips_lib

# reconstruct(weights, images) -> (reconstruction, code indices)
Reconstruct = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass
class Evaluators:
    """The frozen networks some metrics need, their weights, and why a metric is skipped."""

    lpips_params: Optional[Any] = None
    inception_variables: Optional[Any] = None
    skipped: dict = dataclasses.field(default_factory=dict)

    @property
    def frozen(self) -> tuple:
        """Arguments of the compiled eval step (weights are arguments, not baked-in constants)."""
        return (self.lpips_params, self.inception_variables)

    def place(self, sharding) -> "Evaluators":
        """The same evaluators with their weights put on the mesh once."""
        lpips_params, inception_variables = jax.device_put(self.frozen, sharding)
        return dataclasses.replace(self, lpips_params=lpips_params, inception_variables=inception_variables)


def load_evaluators(lpips_path: str = "", inception_path: str = "") -> Evaluators:
    """LPIPS and FID-Inception weights from the converter's files; an empty path skips the metric
    with a reason, a path that does not load is an error (a typo should not silently skip)."""
    evaluators = Evaluators()
    if lpips_path:
        evaluators.lpips_params = lpips_lib.load_params(lpips_path)
    else:
        evaluators.skipped["lpips"] = ("no LPIPS weights (config.evals.lpips_path); make them with "
                                       "`python -m vqjax.convert lpips`")
    if inception_path:
        evaluators.inception_variables = inception_lib.load_variables(inception_path)
    else:
        evaluators.skipped["rfid"] = ("no FID Inception weights (config.evals.inception_path); make them "
                                      "with `python -m vqjax.convert inception`")
    return evaluators


def make_eval_step(reconstruct: Reconstruct, num_codes: int) -> Callable:
    """`eval_step(weights, batch, lpips_params, inception_variables) -> (sums, features)`.

    `sums` are masked sums over the batch (the caller adds them up); `features` holds the
    Inception pool features of originals and reconstructions (empty without Inception weights)
    and the mask, replicated so every process can read them.
    """

    def eval_step(weights, batch: dict, lpips_params=None, inception_variables=None):
        images, mask = batch["image"], batch["mask"]
        reconstruction, indices = reconstruct(weights, images)
        clipped = jnp.clip(reconstruction, -1.0, 1.0)
        code_mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (indices.ndim - 1)), indices.shape)
        sums = {
            "num_examples": jnp.sum(mask),
            "recon_mse": jnp.sum(losses.l2_reconstruction(reconstruction, images) * mask),
            "recon_psnr": jnp.sum(metrics.psnr(clipped, images) * mask),
            "recon_ssim": jnp.sum(metrics.ssim(clipped, images) * mask),
            "code_counts": quantizers.code_counts(indices, num_codes, code_mask),
        }
        if lpips_params is not None:
            distance = lpips_lib.LPIPS().apply({"params": lpips_params}, clipped, images)
            sums["lpips"] = jnp.sum(distance * mask)
        features = {}
        if inception_variables is not None:
            net = inception_lib.InceptionV3()
            features = {"real": net.apply(inception_variables, images).pool,
                        "fake": net.apply(inception_variables, clipped).pool, "mask": mask}
        return sums, features

    return eval_step


def evaluate(eval_step: Callable, weights: Any, batches: Iterable[dict], mesh, *, num_codes: int,
             code_bits: float, evaluators: Evaluators, num_batches: int = -1) -> dict:
    """Runs `eval_step` (compiled, replicated outputs) over `batches` (host-local numpy batches
    with a `mask`) and returns the metrics. `code_bits` is log2(K) x codes per pixel, the
    bits per pixel of the code maps (`metrics.bits_per_pixel`)."""
    sums, real, fake = None, None, None
    for i, batch in enumerate(batches):
        if 0 <= num_batches <= i:
            break
        out, features = eval_step(weights, parallel.to_global(batch, mesh), *evaluators.frozen)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if features:
            features = jax.device_get(features)
            if real is None:
                real = metrics.FeatureStats(features["real"].shape[-1])
                fake = metrics.FeatureStats(features["fake"].shape[-1])
            real.add(features["real"], mask=features["mask"])
            fake.add(features["fake"], mask=features["mask"])
    if sums is None:
        raise ValueError("The eval split gave no batch; check config.data.eval_split and the data path.")
    return summarize(jax.device_get(sums), real, fake, code_bits, evaluators.skipped)


def summarize(sums: dict, real=None, fake=None, code_bits: Optional[float] = None,
              skipped: Optional[dict] = None) -> dict:
    """Accumulated sums (and feature statistics) -> the reported metrics."""
    count = max(float(sums["num_examples"]), 1.0)
    result = {
        "recon_mse": float(sums["recon_mse"] / count),
        "recon_psnr": float(sums["recon_psnr"] / count),
        "recon_ssim": float(sums["recon_ssim"] / count),
        "codebook_usage": float(quantizers.usage_fraction(sums["code_counts"])),
        "perplexity": float(quantizers.perplexity(sums["code_counts"])),
        "num_eval_examples": int(sums["num_examples"]),
    }
    if code_bits is not None:
        result["bits_per_pixel"] = float(code_bits)
    if "lpips" in sums:
        result["lpips"] = float(sums["lpips"] / count)
    if real is not None:
        result["rfid"] = float(metrics.frechet_distance(real.mean(), real.covariance(),
                                                        fake.mean(), fake.covariance()))
    if skipped:
        result["skipped"] = dict(skipped)
    return result


def sample_quality(fake_batches: Iterable[jax.Array], real_batches: Iterable[dict], inception_variables,
                   mesh, *, kid_subset_size: int = 1000) -> dict:
    """FID, Inception Score and KID of generated images against real ones.

    `fake_batches`: image arrays [B, H, W, C] in [-1, 1] (B a multiple of the device count);
    `real_batches`: host-local data batches with `image` and `mask`. Pool features go into
    float64 streaming statistics (and are kept for KID); IS uses the samples' 1008 logits.
    """
    replicated = parallel.replicated(mesh)
    net = inception_lib.InceptionV3()
    features = jax.jit(lambda variables, images: net.apply(variables, jnp.clip(images, -1.0, 1.0)),
                       out_shardings=replicated, compiler_options=parallel.compiler_options())
    fake = metrics.FeatureStats(2048, keep=kid_subset_size)
    real = metrics.FeatureStats(2048, keep=kid_subset_size)
    logits = []
    for images in fake_batches:
        out = jax.device_get(features(inception_variables, jax.device_put(images, parallel.batch_sharding(mesh))))
        fake.add(out.pool)
        logits.append(out.logits)
    for batch in real_batches:
        out = jax.device_get(features(inception_variables, parallel.to_global(batch["image"], mesh)))
        real.add(out.pool, mask=jax.device_get(parallel.to_global(batch["mask"], mesh)))
    logits = np.concatenate(logits)
    inception_score, inception_score_std = metrics.inception_score(logits, num_splits=min(10, len(logits)))
    kid, kid_std = metrics.kernel_inception_distance(fake.features(), real.features(), subset_size=kid_subset_size)
    return {"fid": fake.fid_against(real), "inception_score": inception_score,
            "inception_score_std": inception_score_std, "kid": kid, "kid_std": kid_std,
            "num_fid_samples": fake.count, "num_fid_real": real.count}


def code_bits_per_pixel(reconstruct: Reconstruct, weights: Any, image_shape: tuple, num_codes: int) -> float:
    """Bits per pixel of the code maps for images of `image_shape` ([B, H, W, C]): the code
    map's shape comes from tracing `reconstruct`, nothing is computed."""
    images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    _, indices = jax.eval_shape(reconstruct, weights, images)
    return metrics.bits_per_pixel(indices.shape[1:], image_shape[1:3], num_codes=num_codes)


def log_line(result: dict) -> str:
    """One line for logs: the numeric metrics (a NaN shows as nan, it is not hidden)."""
    return ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, (int, float)))


# ----------------------------------------------------------------------------------------
# A whole evaluation of a model directory (`python -m experiments.evaluate`).


def resolve_data(data_cfg, model_data_cfg):
    """`data.source='model'`: the model config's data with this config's eval split and batch."""
    if data_cfg.source != "model":
        return data_cfg
    resolved = ml_collections.ConfigDict(model_data_cfg.to_dict())
    resolved.eval_split, resolved.eval_batch_size = data_cfg.eval_split, data_cfg.eval_batch_size
    return resolved


def evaluate_model(config, *, devices=None) -> dict:
    """Evaluates `config.model_dir` (a workdir or a converted model) on `config.data`; writes
    `<config.out or model_dir/eval>/eval.json` and returns the metrics. A tokenizer gets
    reconstruction metrics, a prior (vqjax.prior) likelihoods and sample quality."""
    from vqjax import checkpoints

    if not config.model_dir:
        raise ValueError("config.model_dir is empty; pass --config.model_dir=DIR, a vqjax training "
                         "workdir or a directory written by `python -m vqjax.convert taming`.")
    if "tokenizer_dir" in checkpoints.read_config(config.model_dir):  # a prior over code maps
        from vqjax import prior

        result = prior.evaluate_workdir(config, devices=devices)
    else:
        result = evaluate_tokenizer(config, devices=devices)
    result["model_dir"] = os.path.abspath(config.model_dir)
    out = config.out or os.path.join(config.model_dir, "eval")
    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        checkpoints.write_json(os.path.join(out, "eval.json"), result)
    return result


def evaluate_tokenizer(config, *, devices=None) -> dict:
    """Reconstruction, codebook and compression metrics of the tokenizer in `config.model_dir`."""
    from vqjax import data as data_lib, pretrained

    tokenizer = pretrained.load(config.model_dir)
    data_cfg = resolve_data(config.data, tokenizer.config.data)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(data_cfg.eval_batch_size, mesh, "config.data.eval_batch_size")
    replicated = parallel.replicated(mesh)

    reconstruct = tokenizer.reconstruct_fn()
    eval_step = jax.jit(make_eval_step(reconstruct, tokenizer.num_codes), out_shardings=replicated,
                        compiler_options=parallel.config_compiler_options(tokenizer.config))
    evaluators = load_evaluators(config.evals.lpips_path, config.evals.inception_path).place(replicated)
    weights = jax.device_put(tokenizer.weights, replicated)
    image_shape = (data_cfg.eval_batch_size, data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
    code_bits = code_bits_per_pixel(reconstruct, weights, image_shape, tokenizer.num_codes)

    batches = data_lib.make_dataset(data_cfg, data_cfg.eval_split, data_cfg.eval_batch_size, train=False)
    result = evaluate(eval_step, weights, batches, mesh, num_codes=tokenizer.num_codes, code_bits=code_bits,
                      evaluators=evaluators, num_batches=config.evals.num_eval_batches)
    result["data"] = {k: data_cfg[k] for k in ("source", "name", "path", "eval_split", "image_size")}
    return result


def format_table(result: dict) -> str:
    """The metrics as an aligned two-column table, skipped ones with their reason."""
    rows = [(k, f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in result.items()
            if isinstance(v, (int, float))]
    rows += [(k, f"skipped: {reason}") for k, reason in result.get("skipped", {}).items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
