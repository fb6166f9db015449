"""Converting a full-size taming-transformers VQGAN, and the converted model against taming's own.

Measures, for a model the size of taming's released ImageNet f16-16384 VQGAN (random weights,
torch.manual_seed(0); ch 128, ch_mult 1,1,2,2,4, attention at 16, z 256, 16384 codes of 256,
plus its 2-layer NLayerDiscriminator):

  * `python -m vqjax.convert taming` (through `vqjax.convert.main`): wall seconds, the
    converted directory's size on disk and its parameter count;
  * `vqjax.pretrained.load`: seconds;
  * agreement with taming's PyTorch modules on --batch uniform(-1, 1) images: the encoder's
    pre-quantization output and the reconstruction (max |difference| / the reference's max
    magnitude), the fraction of equal code indices, and for unequal ones whether they are
    near-ties (both codes' squared distances, in float64, from taming's encoder output);
  * reconstruction (encode + decode) throughput, PyTorch vs vqjax (the first vqjax call,
    compilation included, reported on its own), and the ratio vqjax / PyTorch;
  * the process's peak resident memory after each phase.

Both frameworks run on CPU with every core. Command, from the repository root:

  python bench/taming_convert.py [--batch 2] [--size 256] [--repeats 3] \
      [--workdir /tmp/bench_taming] [--out bench/results/taming_convert.json] [--lpips]

Prints a table and writes every figure as JSON to --out. Runtime on 2 CPU cores with the
defaults: about 1.5 minutes (a 256x256 reconstruction takes 3-4 s per image in either framework,
XLA compilation a few seconds) and 2.7 GB peak memory; ~600 MB of files under --workdir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import yaml
from taming.modules.diffusionmodules import model as taming_model
from taming.modules.discriminator import model as taming_disc
from taming.modules.vqvae import quantize as taming_quantize

# `python bench/taming_convert.py` puts bench/ on the path, not the repository root; vqjax (and
# the experiments/ configs its converter reads) come from the checkout when not installed.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vqjax  # pylint: disable=wrong-import-position
from vqjax import convert, pretrained  # pylint: disable=wrong-import-position

VQLPIPS = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
# taming's configs for the released ImageNet f16-16384 VQGAN.
DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
EMBED_DIM, N_EMBED = 256, 16384
LOSSCONFIG = {"target": VQLPIPS,
              "params": dict(disc_conditional=False, disc_in_channels=3, disc_num_layers=2, disc_start=0,
                             disc_weight=0.75, codebook_weight=1.0)}


class TamingVQ(torch.nn.Module):
    """taming's VQModel attribute layout, so state_dict keys are those of its Lightning checkpoints."""

    def __init__(self, with_lpips: bool):
        super().__init__()
        self.encoder = taming_model.Encoder(**DDCONFIG)
        self.decoder = taming_model.Decoder(**DDCONFIG)
        self.quant_conv = torch.nn.Conv2d(DDCONFIG["z_channels"], EMBED_DIM, 1)
        self.post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)
        self.quantize = taming_quantize.VectorQuantizer2(N_EMBED, EMBED_DIM, beta=0.25)
        self.loss = torch.nn.Module()
        self.loss.discriminator = taming_disc.NLayerDiscriminator(3, 64, n_layers=2)
        if with_lpips:
            import lpips  # pylint: disable=import-outside-toplevel

            self.loss.perceptual_loss = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images NCHW -> (pre-quantization output, quantized vectors, indices [B, h, w])."""
        h = self.quant_conv(self.encoder(x))
        z_q, _, (_, _, indices) = self.quantize(h)
        return h, z_q, indices.reshape(h.shape[0], h.shape[2], h.shape[3])

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=2, help="images per comparison / timed call")
    parser.add_argument("--size", type=int, default=256, help="image side (a multiple of 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed reconstruction calls per framework")
    parser.add_argument("--workdir", default="/tmp/bench_taming", help="checkpoint, YAML and converted model")
    parser.add_argument("--out", default="bench/results/taming_convert.json", help="JSON results file")
    parser.add_argument("--lpips", action="store_true",
                        help="also put LPIPS (random VGG) under loss.perceptual_loss, as released "
                        "checkpoints do")
    return parser.parse_args(argv)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def random_images(batch: int, size: int, seed: int) -> np.ndarray:
    """uniform(-1, 1) images, NCHW float32."""
    return np.random.default_rng(seed).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)


def build_module(with_lpips: bool, seed: int = 0) -> TamingVQ:
    """The taming-layout module with random weights and a codebook on the encoder's scale."""
    torch.manual_seed(seed)
    module = TamingVQ(with_lpips).eval()
    images = torch.from_numpy(random_images(2, 64, seed))
    with torch.no_grad():
        h = module.quant_conv(module.encoder(images))
        # A trained codebook lies where the encoder's outputs do; taming's uniform(-1/K, 1/K)
        # init would put every code next to the origin and make every index the same.
        module.quantize.embedding.weight.copy_(torch.randn(N_EMBED, EMBED_DIM) * h.std() + h.mean())
    return module


def write_inputs(module: TamingVQ, workdir: str) -> tuple[str, str]:
    """A Lightning-style .ckpt and taming's YAML config under `workdir`; returns their paths."""
    os.makedirs(workdir, exist_ok=True)
    ckpt, config = os.path.join(workdir, "last.ckpt"), os.path.join(workdir, "model.yaml")
    torch.save({"state_dict": module.state_dict(), "global_step": 0}, ckpt)
    model = {"target": "taming.models.vqgan.VQModel",
             "params": {"embed_dim": EMBED_DIM, "n_embed": N_EMBED, "ddconfig": DDCONFIG,
                        "lossconfig": LOSSCONFIG}}
    with open(config, "w") as f:
        yaml.safe_dump({"model": model}, f)
    return ckpt, config


def directory_mb(path: str) -> float:
    total = sum(os.path.getsize(os.path.join(root, name))
                for root, _, names in os.walk(path) for name in names)
    return total / 2**20


def count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def torch_counts(module: TamingVQ) -> dict[str, int]:
    """Parameters of the PyTorch module by part (buffers such as BatchNorm statistics excluded)."""
    parts = {"autoencoder": ("encoder.", "decoder.", "quant_conv.", "post_quant_conv."),
             "codebook": ("quantize.",), "discriminator": ("loss.discriminator.",),
             "lpips": ("loss.perceptual_loss.",)}
    return {part: sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefixes))
            for part, prefixes in parts.items()}


def convert_and_load(module: TamingVQ, args: argparse.Namespace) -> tuple[pretrained.Tokenizer, dict]:
    """Runs the command and the loader; returns the tokenizer and their figures."""
    ckpt, config = write_inputs(module, args.workdir)
    out = os.path.join(args.workdir, "converted")
    shutil.rmtree(out, ignore_errors=True)
    _, convert_s = timed(lambda: convert.main(["taming", "--ckpt", ckpt, "--config", config, "--out", out]))
    rss_convert = peak_rss_mb()
    tokenizer, load_s = timed(lambda: pretrained.load(out))
    with open(os.path.join(out, "conversion.json")) as f:
        conversion = json.load(f)
    return tokenizer, {
        "checkpoint_mb": os.path.getsize(ckpt) / 2**20, "convert_s": convert_s, "load_s": load_s,
        "converted_dir": out, "converted_mb": directory_mb(out), "imported": conversion["imported"],
        "notes": conversion["notes"], "autoencoder_params": count(tokenizer.params),
        "codebook_params": int(np.prod(tokenizer.codebook.shape)), "torch_params": torch_counts(module),
        "peak_rss_mb_after_convert": rss_convert, "peak_rss_mb_after_load": peak_rss_mb()}


def torch_reconstruct(module: TamingVQ, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Pre-quantization output, indices and reconstruction, NHWC numpy."""
    with torch.no_grad():
        h, z_q, indices = module.encode(images)
        reconstruction = module.decode(z_q)
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
    return {"h": nhwc(h), "indices": indices.numpy(), "reconstruction": nhwc(reconstruction)}


def vqjax_reconstruct(tokenizer: pretrained.Tokenizer, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(indices, reconstruction) of the tokenizer, computed to the end."""
    z_q, indices = tokenizer.encode(images)
    return jax.block_until_ready((indices, tokenizer.decode(z_q)))


def throughput(fn: Callable[[], Any], repeats: int, batch: int) -> dict[str, Any]:
    """The first call's seconds, then the mean of `repeats` calls and images/s."""
    result, first_s = timed(fn)
    seconds = [timed(fn)[1] for _ in range(repeats)]
    mean = float(np.mean(seconds))
    return {"result": result, "first_call_s": first_s, "mean_s": mean, "all_s": seconds,
            "images_per_s": batch / mean}


def relative_max_diff(actual: Any, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|."""
    expected = np.asarray(expected, np.float64)
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


def index_agreement(h: np.ndarray, torch_indices: np.ndarray, jax_indices: np.ndarray,
                    codebook: np.ndarray) -> dict[str, Any]:
    """Fraction of equal indices; for unequal ones, both codes' float64 squared distances from
    taming's encoder output, and their relative gap (a near-tie when tiny)."""
    jax_indices = np.asarray(jax_indices)
    unequal = np.argwhere(torch_indices != jax_indices)
    result = {"equal_fraction": float(np.mean(torch_indices == jax_indices)), "unequal": len(unequal),
              "total": int(torch_indices.size), "distinct_codes_torch": int(len(np.unique(torch_indices))),
              "distinct_codes_vqjax": int(len(np.unique(jax_indices))), "mismatches": []}
    codebook = np.asarray(codebook, np.float64)
    for b, i, j in unequal[:20]:
        z = h[b, i, j].astype(np.float64)
        d_torch = float(np.sum((z - codebook[torch_indices[b, i, j]]) ** 2))
        d_jax = float(np.sum((z - codebook[jax_indices[b, i, j]]) ** 2))
        result["mismatches"].append({"position": [int(b), int(i), int(j)],
                                     "torch_index": int(torch_indices[b, i, j]),
                                     "vqjax_index": int(jax_indices[b, i, j]), "torch_dist": d_torch,
                                     "vqjax_dist": d_jax, "relative_gap": abs(d_torch - d_jax) / d_torch})
    return result


def compare(module: TamingVQ, tokenizer: pretrained.Tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    """Timings and agreement of both frameworks' reconstructions of the same images."""
    images = random_images(args.batch, args.size, seed=1)
    images_torch, images_jax = torch.from_numpy(images), jnp.asarray(images.transpose(0, 2, 3, 1))
    vqjax_t = throughput(lambda: vqjax_reconstruct(tokenizer, images_jax), args.repeats, args.batch)
    rss_vqjax = peak_rss_mb()
    torch_t = throughput(lambda: torch_reconstruct(module, images_torch), args.repeats, args.batch)
    ref = torch_t.pop("result")
    indices, reconstruction = vqjax_t.pop("result")
    encode = jax.jit(lambda params, x: tokenizer.model.apply({"params": params}, x, method="encode"))
    h = encode(tokenizer.params, images_jax)
    agreement = index_agreement(ref["h"], ref["indices"], indices, tokenizer.codebook)
    figures = {"encoder_rel_max_diff": relative_max_diff(h, ref["h"]),
               "reconstruction_rel_max_diff": relative_max_diff(reconstruction, ref["reconstruction"]),
               "indices": agreement}
    if agreement["unequal"]:  # the decoders alone, from the same codes
        same_codes = tokenizer.decode_indices(jnp.asarray(ref["indices"], jnp.int32))
        figures["reconstruction_from_torch_indices_rel_max_diff"] = relative_max_diff(
            same_codes, ref["reconstruction"])
    figures.update(torch=torch_t, vqjax=vqjax_t,
                   vqjax_over_torch=vqjax_t["images_per_s"] / torch_t["images_per_s"],
                   peak_rss_mb_after_vqjax=rss_vqjax, peak_rss_mb_after_torch=peak_rss_mb())
    return figures


def environment() -> dict[str, Any]:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "jax": jax.__version__, "torch": torch.__version__, "vqjax": getattr(vqjax, "__version__", "?"),
            "python": platform.python_version(), "device": str(jax.devices()[0]),
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def _conversion_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    conv, size = results["conversion"], results["size"]
    torch_params = conv["torch_params"]
    return [
        ("model", f"taming VQModel at f16-16384 size; {results['batch']} images of {size}x{size}"),
        ("torch checkpoint", f"{conv['checkpoint_mb']:.1f} MB"),
        ("convert (CLI)", f"{conv['convert_s']:.2f} s"),
        ("pretrained.load", f"{conv['load_s']:.2f} s"),
        ("converted dir", f"{conv['converted_mb']:.1f} MB; imported {', '.join(conv['imported'])}"),
        ("parameters", f"{conv['autoencoder_params']:,} autoencoder + {conv['codebook_params']:,} codebook "
                       f"(torch {torch_params['autoencoder']:,} + {torch_params['codebook']:,}; "
                       f"discriminator {torch_params['discriminator']:,})"),
    ]


def _agreement_rows(cmp: dict[str, Any]) -> list[tuple[str, str]]:
    idx = cmp["indices"]
    rows = [
        ("encoder rel. max diff", f"{cmp['encoder_rel_max_diff']:.2e}"),
        ("reconstruction rel. max diff", f"{cmp['reconstruction_rel_max_diff']:.2e}"),
        ("equal code indices", f"{idx['equal_fraction']:.4%} ({idx['total'] - idx['unequal']}/"
                               f"{idx['total']}; {idx['distinct_codes_torch']} distinct codes)"),
    ]
    for m in idx["mismatches"]:
        rows.append(("  mismatch", f"at {m['position']}: torch {m['torch_index']} vs vqjax "
                                   f"{m['vqjax_index']}, distance gap {m['relative_gap']:.2e} (relative)"))
    if "reconstruction_from_torch_indices_rel_max_diff" in cmp:
        rows.append(("  decode(torch indices) diff",
                     f"{cmp['reconstruction_from_torch_indices_rel_max_diff']:.2e}"))
    return rows


def _speed_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    env, cmp = results["environment"], results["comparison"]
    torch_t, vqjax_t = cmp["torch"], cmp["vqjax"]
    return [
        ("torch reconstruct", f"{torch_t['images_per_s']:.3f} img/s (mean {torch_t['mean_s']:.2f} s; "
                              f"first {torch_t['first_call_s']:.2f} s)"),
        ("vqjax reconstruct", f"{vqjax_t['images_per_s']:.3f} img/s (mean {vqjax_t['mean_s']:.2f} s)"),
        ("vqjax first call", f"{vqjax_t['first_call_s']:.2f} s (compilation + one call)"),
        ("vqjax / torch throughput", f"{cmp['vqjax_over_torch']:.2f}x"),
        ("peak RSS", f"{results['conversion']['peak_rss_mb_after_convert']:.0f} MB after convert, "
                     f"{cmp['peak_rss_mb_after_torch']:.0f} MB at the end"),
        ("environment", f"jax {env['jax']}, torch {env['torch']}, {env['device']}, {env['cpu_count']} CPUs"),
    ]


def print_table(results: dict[str, Any]) -> None:
    rows = _conversion_rows(results) + _agreement_rows(results["comparison"]) + _speed_rows(results)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    module = build_module(args.lpips)
    tokenizer, conversion = convert_and_load(module, args)
    comparison = compare(module, tokenizer, args)
    results = {"benchmark": "taming_convert", "batch": args.batch, "size": args.size,
               "repeats": args.repeats, "with_lpips": args.lpips, "environment": environment(),
               "conversion": conversion, "comparison": comparison, "total_s": time.perf_counter() - start}
    print()
    print_table(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nWrote {os.path.abspath(args.out)} (total {results['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
