r"""Rate and distortion of `vqjax compress` beside JPEG and WebP (Pillow), from real file sizes.

  python bench/codec.py --tokenizer=/tmp/vqgan_quickstart --prior=/tmp/prior_quickstart \
    --images=embedded --num=200
  python bench/codec.py --tokenizer=DIR --prior=DIR --images=/tmp/cifar10/test --num=500

One row per coder: the tokenizer's codes at log2 K bits each (uniform), under each --prior
(repeatable: a GPT and a MaskGIT prior of the same tokenizer), and JPEG / WebP at the quality
whose mean PSNR matches the tokenizer's reconstructions (interpolated between the two nearest
qualities) and at the prior's bits per pixel; `--lpips=FILE` (python -m vqjax.convert lpips)
adds LPIPS to PSNR and SSIM. Bits per pixel count whole files (the header
included) and the payload alone; `estimate` is the prior's information content -log2 p of the
codes, `overhead` the payload's excess over it. All vqjax rows decode to the same images (the
tokenizer's reconstructions), so they share PSNR / SSIM. Speeds are images/s of whole
compress / decompress calls (encoder + prior passes + coder), after one untimed call.

--images: `embedded` (the test crops of the photographs that ship with scikit-image, what the
quickstarts train on) or a folder (--num images evenly spaced over its sorted files, recursively:
every class of a split kept in class folders).
"""

from __future__ import annotations

import argparse
import io
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vqjax.apps import codec as codec_lib, files
from vqjax.data import images as data_images
from vqjax.eval import metrics
from vqjax.inference import prior as prior_lib, tokenizer as tokenizer_lib
from vqjax.nets import lpips as lpips_lib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_images(source: str, num: int, image_size: int) -> list[np.ndarray]:
    if source == "embedded":
        return list(data_images.embedded_images("test", image_size)[0][:num])
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(source) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not found:
        raise SystemExit(f"No images under {source}.")
    chosen = np.linspace(0, len(found) - 1, min(num, len(found))).round().astype(int)
    return files.read_images([found[i] for i in chosen])


_LPIPS_PARAMS = None  # set by --lpips: LPIPS then joins PSNR and SSIM


@jax.jit
def _lpips_distance(params, x, y):
    return lpips_lib.LPIPS().apply({"params": params}, x, y)


def quality(originals: list[np.ndarray], decoded: list[np.ndarray]) -> tuple[float, float, float]:
    """Mean per-image PSNR (dB), SSIM and LPIPS (NaN without --lpips) on uint8 images."""
    psnrs, ssims, distances = [], [], []
    for a, b in zip(originals, decoded):
        x, y = jnp.asarray(files.to_model_range(a)[None]), jnp.asarray(files.to_model_range(b)[None])
        psnrs.append(float(metrics.psnr(x, y)[0]))
        ssims.append(float(metrics.ssim(x, y)[0]))
        if _LPIPS_PARAMS is not None:
            distances.append(float(_lpips_distance(_LPIPS_PARAMS, x, y)[0]))
    return float(np.mean(psnrs)), float(np.mean(ssims)), float(np.mean(distances)) if distances else float("nan")


def pillow_sweep(images: list[np.ndarray], fmt: str, qualities) -> list[tuple[int, float, float, float]]:
    """(quality, bits per pixel, PSNR, SSIM, LPIPS) of `fmt` files at each quality."""
    rows = []
    for q in qualities:
        decoded, bits = [], 0
        for image in images:
            buffer = io.BytesIO()
            options = {"optimize": True} if fmt == "JPEG" else {"method": 6}
            Image.fromarray(image).save(buffer, format=fmt, quality=q, **options)
            bits += 8 * buffer.tell()
            decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
        pixels = sum(i.shape[0] * i.shape[1] for i in images)
        rows.append((q, bits / pixels, *quality(images, decoded)))
    return rows


def interpolate(sweep, key: int, target: float, value: int) -> float:
    """Column `value` where column `key` reaches `target`, linear between the two sweep points
    that bracket it (NaN outside the sweep)."""
    points = sorted((row[key], row[value]) for row in sweep)
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    if not xs[0] <= target <= xs[-1]:
        return float("nan")
    return float(np.interp(target, xs, ys))


def bench_vqjax(codec, images) -> dict:
    batch = codec.batch_size
    codec.compress(images[:1])  # compile
    start = time.perf_counter()
    results = []
    for i in range(0, len(images), batch):
        results += codec.compress_with_bits(images[i:i + batch])
    encode_seconds = time.perf_counter() - start
    codec.decompress(results[0][0])
    start = time.perf_counter()
    decoded = [codec.decompress(data) for data, _ in results]
    decode_seconds = time.perf_counter() - start
    pixels = sum(i.shape[0] * i.shape[1] for i in images)
    file_bits = 8 * sum(len(d) for d, _ in results)
    payload_bits = file_bits - 8 * codec_lib.Header.SIZE * len(results)
    estimate = sum(b for _, b in results)
    return {"bpp": file_bits / pixels, "payload_bpp": payload_bits / pixels, "estimate_bpp": estimate / pixels,
            "overhead": payload_bits / estimate - 1, "encode_per_s": len(images) / encode_seconds,
            "decode_per_s": len(images) / decode_seconds, "decoded": decoded}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--prior", action="append", default=[], help="a prior workdir of this tokenizer (repeatable)")
    parser.add_argument("--images", default="embedded")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None, help="MaskGIT coding steps (default: the prior's)")
    parser.add_argument("--lpips", default="", help="LPIPS weights (python -m vqjax.convert lpips): adds LPIPS")
    args = parser.parse_args()
    global _LPIPS_PARAMS
    if args.lpips:
        _LPIPS_PARAMS = lpips_lib.load_params(args.lpips)

    tokenizer = tokenizer_lib.load(args.tokenizer)
    images = load_images(args.images, args.num, int(tokenizer.config.data.image_size))
    print(f"{len(images)} images from {args.images} ({images[0].shape[1]}x{images[0].shape[0]} first), "
          f"tokenizer {args.tokenizer} ({tokenizer.num_codes} codes, factor {tokenizer.downsampling_factor}), "
          f"header {codec_lib.Header.SIZE} bytes")
    rows = [("uniform", bench_vqjax(codec_lib.Codec(tokenizer), images))]
    for path in args.prior:
        prior = prior_lib.load(path)
        codec = codec_lib.Codec(tokenizer, prior, steps=args.steps)
        name = f"{codec.kind}" + (f" ({codec.steps} steps)" if codec.kind == "maskgit" else "")
        rows.append((name, bench_vqjax(codec, images)))
    psnr, ssim, lpips = quality(images, rows[0][1]["decoded"])
    for name, row in rows:
        np.testing.assert_array_equal(np.stack(row["decoded"]), np.stack(rows[0][1]["decoded"]))

    header = f"{'coder':<28} {'bpp':>7} {'payload':>8} {'estimate':>9} {'overhead':>9} {'PSNR':>7} {'SSIM':>6} " \
             f"{'LPIPS':>6} {'enc/s':>7} {'dec/s':>7}"
    print(header)
    for name, row in rows:
        print(f"{'vqjax ' + name:<28} {row['bpp']:7.4f} {row['payload_bpp']:8.4f} {row['estimate_bpp']:9.4f} "
              f"{100 * row['overhead']:8.2f}% {psnr:7.2f} {ssim:6.3f} {lpips:6.3f} {row['encode_per_s']:7.1f} "
              f"{row['decode_per_s']:7.1f}")
    best_bpp = min(row["bpp"] for _, row in rows)
    for fmt, qualities in (("JPEG", range(1, 96, 2)), ("WebP", range(0, 101, 4))):
        sweep = pillow_sweep(images, fmt, qualities)
        bpp_at_psnr = interpolate(sweep, 2, psnr, 1)
        ssim_at_psnr, lpips_at_psnr = interpolate(sweep, 2, psnr, 3), interpolate(sweep, 2, psnr, 4)
        psnr_at_bpp, ssim_at_bpp = interpolate(sweep, 1, best_bpp, 2), interpolate(sweep, 1, best_bpp, 3)
        lpips_at_bpp = interpolate(sweep, 1, best_bpp, 4)
        lowest = min(sweep, key=lambda r: r[1])
        blank = f"{'':>8} {'':>9} {'':>9}"
        print(f"{fmt + ' at matched PSNR':<28} {bpp_at_psnr:7.4f} {blank} {psnr:7.2f} {ssim_at_psnr:6.3f} {lpips_at_psnr:6.3f}")
        print(f"{fmt + ' at matched bpp':<28} {best_bpp:7.4f} {blank} {psnr_at_bpp:7.2f} {ssim_at_bpp:6.3f} {lpips_at_bpp:6.3f}")
        print(f"{fmt + f' lowest (quality {lowest[0]})':<28} {lowest[1]:7.4f} {blank} "
              f"{lowest[2]:7.2f} {lowest[3]:6.3f} {lowest[4]:6.3f}")


if __name__ == "__main__":
    main()
