"""Quality of generated images: FID, Inception Score and KID against real images, and the
same for a prior's samples decoded by its tokenizer."""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.core import parallel
from vqjax.data import images as data_lib
from vqjax.eval import metrics
from vqjax.nets import inception as inception_lib
from vqjax.nets.transformer import Transformer
from vqjax.sampling.prior import sample_labels, sample_tokens


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


def generation_metrics(model: Transformer, params, tokenizer, *, sampling_cfg, data_cfg, inception_path: str,
                       num_samples: int, mesh, code_shape: tuple) -> dict:
    """FID, IS and KID of `num_samples` samples of a prior (classes in turn, `sampling_cfg`'s
    settings) against as many images of `data_cfg`'s eval split; skipped with a reason without
    Inception weights."""
    if not inception_path:
        return {"skipped": {"fid": "no FID Inception weights (config.evals.inception_path); make them with "
                                   "`python -m vqjax.convert inception`"}}
    variables = parallel.replicate(inception_lib.load_variables(inception_path), mesh)
    batch = int(data_cfg.eval_batch_size)
    num_batches = -(-int(num_samples) // batch)
    rng = jax.random.fold_in(jax.random.key(int(sampling_cfg.seed)), 2)

    def fake_batches():
        for i in range(num_batches):
            labels = sample_labels(model, batch, start=i * batch)
            codes = sample_tokens(model, params, jax.random.fold_in(rng, i), labels, sampling_cfg)
            yield tokenizer.decode_indices(codes.reshape(batch, *code_shape))

    real = data_lib.make_dataset(data_cfg, data_cfg.eval_split, batch, train=False)
    real = (b for _, b in zip(range(num_batches), real))
    return sample_quality(fake_batches(), real, variables, mesh,
                                     kid_subset_size=min(1000, num_batches * batch))
