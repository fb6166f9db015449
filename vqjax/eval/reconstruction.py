"""Evaluation of tokenizers: one jit-compiled step over sharded batches and one loop, used by
the tokenizer families' periodic and final evals and by `python -m experiments.evaluate`.

Per batch, on the mesh: reconstruction MSE, PSNR and SSIM (of the reconstruction clipped to
[-1, 1], as an image file would hold it), LPIPS when its weights are given, code counts, and
the FID Inception's pool features of the originals and reconstructions when its weights are
given. Sums come back to the host once per batch; features go into float64 streaming
statistics, so any number of images fits. Metrics whose weights are absent are skipped with
a one-line reason, never reported as 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp

from vqjax import quantizers
from vqjax.core import parallel
from vqjax.eval import metrics
from vqjax.losses import reconstruction as reconstruction_losses
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

    def place(self, mesh) -> "Evaluators":
        """The same evaluators with their weights replicated over `mesh` once."""
        lpips_params, inception_variables = parallel.replicate(self.frozen, mesh)
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


# Codebook usage is a [K] histogram summed over the evaluation; above this many codes (LFQ/BSQ
# with 25+ bits) it is not counted, as the quantizers never materialise their implicit codebook.
MAX_COUNTED_CODES = 2**24


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
            "recon_mse": jnp.sum(reconstruction_losses.l2_reconstruction(reconstruction, images) * mask),
            "recon_psnr": jnp.sum(metrics.psnr(clipped, images) * mask),
            "recon_ssim": jnp.sum(metrics.ssim(clipped, images) * mask),
        }
        if num_codes <= MAX_COUNTED_CODES:
            sums["code_counts"] = quantizers.code_counts(indices, num_codes, code_mask)
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
        "num_eval_examples": int(sums["num_examples"]),
    }
    if "code_counts" in sums:
        result["codebook_usage"] = float(quantizers.usage_fraction(sums["code_counts"]))
        result["perplexity"] = float(quantizers.perplexity(sums["code_counts"]))
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


def code_bits_per_pixel(reconstruct: Reconstruct, weights: Any, image_shape: tuple, num_codes: int) -> float:
    """Bits per pixel of the code maps for images of `image_shape` ([B, H, W, C]): the code
    map's shape comes from tracing `reconstruct`, nothing is computed."""
    images = jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32)
    _, indices = jax.eval_shape(reconstruct, weights, images)
    return metrics.bits_per_pixel(indices.shape[1:], image_shape[1:3], num_codes=num_codes)
