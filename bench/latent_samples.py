r"""Checks a latent diffusion workdir's samples against its data: the standard deviation of sampled
latents beside the test latents', and SDEdit of test latents at several strengths decoded and
compared (PSNR) with the tokenizer's decoding of the same latents. A model whose samples run
away shows it at strength 1 while its edits at low strength stay close.

  python bench/latent_samples.py --workdir=/tmp/ldm_v [--num=32]
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import vqjax.diffusion
from vqjax.eval import metrics
from vqjax.inference import diffusion as diffusion_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A latent diffusion workdir (config.tokenizer_dir set).", required=True)
_NUM = flags.DEFINE_integer("num", 32, "Test latents edited and samples drawn.")
STRENGTHS = (0.1, 0.3, 0.5, 1.0)


def main(argv):
    del argv
    model = vqjax.diffusion.load(_WORKDIR.value)
    if model.tokenizer is None:
        raise SystemExit(f"{_WORKDIR.value} holds a pixel-space model; this check is for latent diffusion.")
    with np.load(os.path.join(_WORKDIR.value, "latents", "test.npz")) as cache:
        latents = jnp.asarray(cache["latents"][: _NUM.value], jnp.float32)
    scale = model.latent_scale
    reference = diffusion_lib.decode_latents(model.tokenizer, latents * scale, scale)
    options = diffusion_lib.compiler_options_of(model.config)
    print(f"{_WORKDIR.value}: {len(latents)} test latents of standard deviation {float(jnp.std(latents)):.3f}")
    for strength in STRENGTHS:
        start = latents * scale if strength < 1 else None
        sampled = diffusion_lib.generate_jit(
            model.model, model.params, model.spec, jax.random.key(0), jax.random.normal(jax.random.key(1), latents.shape),
            None, None, None, None, start, compiler_options=options, sampler="ddim", steps=50, spacing="uniform",
            eta=0.0, guidance_scale=1.0, strength=strength)
        decoded = diffusion_lib.decode_latents(model.tokenizer, sampled, scale)
        print(f"  strength {strength}: latents' standard deviation {float(jnp.std(sampled / scale)):.3f}, "
              f"PSNR to the tokenizer's decoding {float(jnp.mean(metrics.psnr(decoded, reference))):.2f} dB")


if __name__ == "__main__":
    app.run(main)
