r"""Which quantizer to pick: a utilisation study on CIFAR-10, and each quantizer's step beside
vector-quantize-pytorch's.

Study (`--data`, a folder with train/<class>/*.jpg and test/<class>/*.jpg, e.g. the shared
CIFAR-10 copy unpacked under /tmp): the same autoencoder (--config, vqvae_cifar10 by default,
read from an image folder) is trained for --steps steps at --batch with each quantizer of
--kinds at each codebook size of --codes, and evaluated on --eval_batches batches of the test
split. One row per run: codebook usage on the test split (the fraction of codes used at least
once), perplexity, test PSNR / SSIM, bits per pixel of the code maps (log2 K per code), training
images/s. With --prior_steps=N a MaskGIT prior (maskgit_cifar10's model) is trained on each
tokenizer's code maps for N steps and its test bits per dimension (bits per token x tokens per
image / (32 x 32 x 3)) is added.

Codebook sizes are the nearest each kind can take: FSQ uses the paper's level presets (1000,
15360 and 64000 codes for 1k, 16k and 65k), LFQ / BSQ need a power of two, and residual VQ has
4 stages of K codes each (a code is 4 indices: its bits per pixel are 4x the others').

Step (`--step`): the training-mode quantizer alone on N = --num_vectors vectors of dimension
--dim, forward and backward (a sum of the outputs and losses), at each --step_codes size, vqjax
(jit) beside vector-quantize-pytorch's module of the same settings in the same process, on the
same cores: median ms, the ratio, and XLA's memory figure for vqjax's compiled step.

Commands, from the repository root (the study writes its runs under --workdir):

  tar -xzf ../shared/data/cifar10_jpeg.tar.gz -C /tmp
  python bench/quantizers.py --data=/tmp/cifar10 --workdir=/tmp/quantizer_study \
      --kinds=vq,ema,fsq,lfq,bsq,simvq,cosine,residual --codes=1024,16384,65536 --steps=500
  python bench/quantizers.py --step [--step_codes=16384,65536] [--num_vectors=2048]

Any `--config.*` override of the autoencoder's config works as in the entry points.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

# torch before TensorFlow (loaded by the data pipeline): see bench/train_step.py.
try:
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
except ImportError:
    torch = None

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import median_seconds, write_json, xla_memory_mb  # noqa: E402
from vqjax import quantizers  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/vqvae_cifar10.py",
                                          "The autoencoder every quantizer is trained in.")
_DATA = flags.DEFINE_string("data", "", "Image folder with train/ and test/ (the study runs when given).")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/quantizer_study", "Where the study's runs are written.")
_KINDS = flags.DEFINE_list("kinds", ["vq", "ema", "fsq", "lfq", "bsq", "simvq", "cosine", "residual"],
                           "Quantizer kinds (config.quantizer.kind).")
_CODES = flags.DEFINE_list("codes", ["1024", "16384", "65536"], "Codebook sizes of the study.")
_STEPS = flags.DEFINE_integer("steps", 500, "Training steps of each study run.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size of each study run.")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", -1, "Test batches evaluated (-1: the whole split).")
_PRIOR_STEPS = flags.DEFINE_integer("prior_steps", 0, "Train a MaskGIT prior on each tokenizer (0: no).")
_STEP = flags.DEFINE_bool("step", False, "Time each quantizer's step beside vector-quantize-pytorch's.")
_STEP_CODES = flags.DEFINE_list("step_codes", ["16384", "65536"], "Codebook sizes of the step timing.")
_NUM_VECTORS = flags.DEFINE_integer("num_vectors", 2048, "Vectors per step timing (the study's batch: 32 x 8 x 8 codes).")
_DIM = flags.DEFINE_integer("dim", 64, "Vector dimension of the step timing.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per figure (median).")
_JSON = flags.DEFINE_string("json", "", "Also write the figures here as JSON.")

# FSQ takes the paper's level table (Mentzer et al. 2023, table 1) at the size nearest each K.
FSQ_SIZE = {1024: 1000, 16384: 15360, 65536: 64000}


def quantizer_settings(kind: str, num_codes: int) -> dict:
    """config.quantizer fields for `kind` at about `num_codes` codes."""
    settings = {"kind": kind, "num_codes": num_codes, "dead_code_threshold": 0.0}
    if kind == "fsq":
        settings.update(num_codes=FSQ_SIZE.get(num_codes, num_codes), levels=())
    if kind in ("lfq", "bsq") and num_codes & (num_codes - 1):
        raise ValueError(f"--codes={num_codes}: LFQ and BSQ need a power of two.")
    if kind == "residual":
        settings.update(stage="vq", depth=4)
    return settings


def study_run(kind: str, num_codes: int) -> dict:
    """Train and evaluate the autoencoder with one quantizer: its row of the table."""
    from vqjax.train import experiment  # pylint: disable=import-outside-toplevel

    config = _CONFIG.value.copy_and_resolve_references()
    config.data.source, config.data.path = "folder", _DATA.value
    config.data.batch_size = _BATCH.value
    config.train.num_steps = _STEPS.value
    config.train.eval_steps = config.train.ckpt_steps = _STEPS.value
    config.evals.num_eval_batches = _EVAL_BATCHES.value
    for field, value in quantizer_settings(kind, num_codes).items():
        config.quantizer[field] = value
    workdir = os.path.join(_WORKDIR.value, f"{kind}_{num_codes}")
    start = time.perf_counter()
    metrics = experiment.train_and_evaluate(config, workdir)
    row = {"kind": kind, "K": int(quantizers.build(config.quantizer, dim=config.model.embed_dim).num_codes),
           "usage": metrics.get("codebook_usage"), "perplexity": metrics.get("perplexity"),
           "psnr": metrics["recon_psnr"], "ssim": metrics["recon_ssim"], "bpp": metrics["bits_per_pixel"],
           "images_per_sec": metrics.get("images_per_sec"), "minutes": (time.perf_counter() - start) / 60}
    if _PRIOR_STEPS.value > 0:
        row["bits_per_dim"] = prior_bits_per_dim(workdir, config)
    return row


def prior_bits_per_dim(tokenizer_dir: str, tokenizer_config) -> float:
    """Test bits per dimension of a MaskGIT prior trained on the tokenizer's code maps."""
    from experiments.configs import maskgit_cifar10  # pylint: disable=import-outside-toplevel
    from vqjax.train import experiment  # pylint: disable=import-outside-toplevel

    config = maskgit_cifar10.get_config()
    config.tokenizer_dir = tokenizer_dir
    config.data.source, config.data.path = "folder", _DATA.value
    config.train.num_steps = _PRIOR_STEPS.value
    config.train.eval_steps = config.train.ckpt_steps = _PRIOR_STEPS.value
    metrics = experiment.train_and_evaluate(config, os.path.join(tokenizer_dir, "prior"))
    size = tokenizer_config.data.image_size
    codes = np.load(os.path.join(tokenizer_dir, "prior", "tokens", "train.npz"))["codes"].shape[1:]
    return metrics["bits_per_token"] * math.prod(codes) / (size * size * 3)


def format_table(rows: list[dict]) -> str:
    columns = [("kind", "{}"), ("K", "{}"), ("usage", "{:.1%}"), ("perplexity", "{:.0f}"), ("psnr", "{:.2f}"),
               ("ssim", "{:.3f}"), ("bpp", "{:.3f}"), ("images_per_sec", "{:.0f}"), ("bits_per_dim", "{:.3f}")]
    columns = [(name, fmt) for name, fmt in columns if any(name in row for row in rows)]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.format(row[name]) if row.get(name) is not None else "-" for name, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the quantizer step beside vector-quantize-pytorch ---------------------------------------

def vqjax_step_fn(quantizer):
    """Forward and backward of a training-mode quantizer: d(sum of outputs + losses)/dz."""

    def objective(params, state, z, rng):
        out = quantizer({"params": params, "state": state}, z, train=True, rng=rng)
        return jnp.sum(out.quantized) + quantizers.total_loss(out.losses), out.indices

    return jax.jit(jax.grad(objective, argnums=(0, 2), has_aux=True))


def torch_peer(kind: str, num_codes: int, dim: int):
    """vector-quantize-pytorch's module of the same settings, or None where it has none."""
    import vector_quantize_pytorch as vqp  # pylint: disable=import-outside-toplevel

    if kind == "vq":
        return vqp.VectorQuantize(dim=dim, codebook_size=num_codes, learnable_codebook=True, ema_update=False)
    if kind == "ema":
        return vqp.VectorQuantize(dim=dim, codebook_size=num_codes, decay=0.99)
    if kind == "cosine":
        return vqp.VectorQuantize(dim=dim, codebook_size=num_codes, codebook_dim=32, use_cosine_sim=True)
    if kind == "simvq":
        return vqp.SimVQ(dim=dim, codebook_size=num_codes)
    if kind == "fsq":
        return vqp.FSQ(levels=list(quantizers.PRESET_LEVELS[FSQ_SIZE[num_codes]]), dim=dim)
    if kind == "lfq":
        return vqp.LFQ(dim=dim, codebook_size=num_codes)
    if kind == "residual":
        return vqp.ResidualVQ(dim=dim, codebook_size=num_codes, num_quantizers=4)
    return None


def torch_step_ms(module, z: np.ndarray) -> float:
    # np.array copies: a jax array viewed by numpy is read-only, which torch refuses to wrap silently.
    x = torch.from_numpy(np.array(z)).reshape(1, *z.shape).requires_grad_(True)
    module.train()

    def step():
        out = module(x)  # (quantized, indices) for FSQ, (quantized, indices, loss) for the others
        total = out[0].sum() + (out[2].sum() if len(out) > 2 else 0.0)
        total.backward()
        return None

    return 1e3 * median_seconds(step, _REPEATS.value)


def step_row(kind: str, num_codes: int) -> dict:
    settings = quantizer_settings(kind, num_codes)
    import ml_collections  # pylint: disable=import-outside-toplevel

    quantizer = quantizers.build(ml_collections.ConfigDict(settings), dim=_DIM.value)
    z = jax.random.normal(jax.random.key(0), (_NUM_VECTORS.value, _DIM.value), jnp.float32)
    variables = quantizer.init(jax.random.key(1), z)
    step = vqjax_step_fn(quantizer)
    args = (variables["params"], variables["state"], z, jax.random.key(2))
    row = {"kind": kind, "K": int(quantizer.num_codes),
           "vqjax_ms": 1e3 * median_seconds(lambda: step(*args), _REPEATS.value),
           "vqjax_mem_mb": xla_memory_mb(step.lower(*args).compile())}
    peer = torch_peer(kind, num_codes, _DIM.value) if torch is not None else None
    if peer is not None:
        torch.set_num_threads(os.cpu_count() or 1)
        row["torch_ms"] = torch_step_ms(peer, np.asarray(z))
        row["speedup"] = row["torch_ms"] / row["vqjax_ms"]
    return row


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # as experiments/launch.py: Orbax logs every save at INFO
    report = {}
    if _DATA.value:
        rows = []
        for num_codes in map(int, _CODES.value):
            for kind in _KINDS.value:
                rows.append(study_run(kind, num_codes))
                print(json.dumps(rows[-1]), flush=True)
        report["study"] = rows
        print(f"\nAfter {_STEPS.value} steps at batch {_BATCH.value} ({_CONFIG.value.model.name}, "
              f"{_CONFIG.value.model.embed_dim}-dimensional codes):")
        print(format_table(rows))
    if _STEP.value:
        rows = []
        for num_codes in map(int, _STEP_CODES.value):
            for kind in _KINDS.value:
                rows.append(step_row(kind, num_codes))
                print(json.dumps(rows[-1]), flush=True)  # a long timing keeps its finished rows
        report["step"] = rows
        print(f"\nQuantizer step (forward + backward), {_NUM_VECTORS.value} vectors of dimension {_DIM.value}:")
        print("| kind | K | vqjax ms | vqjax MiB | vector-quantize-pytorch ms | speed-up |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['kind']} | {r['K']} | {r['vqjax_ms']:.1f} | {r['vqjax_mem_mb']:.0f} | "
                  f"{r.get('torch_ms', float('nan')):.1f} | {r.get('speedup', float('nan')):.2f}x |")
    if not report:
        raise app.UsageError("Pass --data=FOLDER for the study and/or --step for the step timing.")
    if _JSON.value:
        write_json(_JSON.value, report)


if __name__ == "__main__":
    app.run(main)
