"""Token-level repair (`vqjax repair`): the codes a MaskGIT prior finds least likely, or those
under a user's mask, are masked and resampled by the prior, then decoded; or, with a diffusion
model, the pixels under a mask are inpainted.

    vqjax repair --prior /tmp/prior_quickstart scratched.png --fraction 0.1 --out /tmp/repaired
    vqjax repair --prior /tmp/prior_quickstart photo.png --mask hole.png --out /tmp/inpainted
    vqjax repair --diffusion /tmp/diffusion_quickstart photo.png --mask hole.png --out /tmp/inpainted

One command for defect removal (the least likely codes: `--fraction` of them, or those above
`--threshold` nats, under the pseudo-likelihood of `vqjax score`), inpainting (a mask inside the
image) and outpainting (a mask at its border). The kept codes are kept exactly; MaskGIT's
iterative decoding fills the rest given them. A GPT prior sees only the codes before a position,
so it cannot fill a hole to fit what lies after it: repair takes MaskGIT priors. Images of other
sizes than the prior's are repaired tile by tile (edge-padded to whole tiles, cropped back).

A diffusion model (pixel-space or latent) inpaints the mask's pixels with its sampler, the
other pixels kept exactly (`Diffusion.inpaint`), tile by tile at its image size; it has no
per-code likelihood, so it takes --mask only.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.apps import anomaly, files, models, tiles
from vqjax.apps.files import InputError
from vqjax.core import images as images_lib
from vqjax.inference.prior import Prior
from vqjax.sampling import decode


def least_likely(code_nll: np.ndarray, fraction: Optional[float] = None, threshold: Optional[float] = None,
                 valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-position NLL [h, w] -> bool [h, w], True = regenerate: among the `valid` positions
    (default all; padding is not), the round(fraction x their number) of highest NLL (ties to
    the earlier position in raster order), or those above `threshold` nats."""
    valid = np.ones(code_nll.shape, bool) if valid is None else np.asarray(valid, bool)
    if (fraction is None) == (threshold is None):
        raise InputError("Pass one of --fraction (the share of codes to regenerate) or --threshold (nats).")
    if threshold is not None:
        return (code_nll > threshold) & valid
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"--fraction is {fraction}; pass a share of the codes in [0, 1].")
    count = int(round(fraction * valid.sum()))
    order = np.argsort(np.where(valid, -code_nll, np.inf).reshape(-1), kind="stable")
    chosen = np.zeros(code_nll.size, bool)
    chosen[order[:count]] = True
    return chosen.reshape(code_nll.shape)


def repair_codes(prior: Prior, codes: np.ndarray, regenerate: np.ndarray, rng: jax.Array,
                 label: Optional[int] = None) -> np.ndarray:
    """Code maps [B, H, W(, depth)] (H, W whole tiles of the prior's map) and positions to
    regenerate [B, H, W] -> code maps with those positions resampled by the prior given the rest
    (every code of a regenerated position, all depths)."""
    if prior.model.causal:
        raise InputError("Repair needs a MaskGIT prior (it fills a hole from the codes on every side of it); "
                         "this is a GPT prior, which sees only the codes before each position.")
    codes = np.asarray(codes, np.int32)
    regenerate = np.broadcast_to(np.asarray(regenerate, bool).reshape(regenerate.shape + (1,) * (codes.ndim - 3)),
                                 codes.shape)
    tile = tuple(prior.code_shape[:2])
    code_tiles = tiles.split(codes, tile)
    tile_masks = tiles.split(regenerate, tile)
    label = prior.model.null_label if label is None else label
    labels = jnp.full((len(code_tiles),), label, jnp.int32)
    sampling = prior.config.sampling
    guidance = prior.model.num_classes > 0 and float(sampling.guidance_scale) != 1.0 and label != prior.model.null_label
    repaired = decode.sample_maskgit(prior.model, prior.params, rng, labels, tokens=jnp.asarray(code_tiles),
                                     token_mask=jnp.asarray(tile_masks), num_steps=int(sampling.num_steps),
                                     schedule=sampling.schedule, temperature=float(sampling.temperature),
                                     choice_temperature=float(sampling.choice_temperature), guidance=guidance,
                                     guidance_scale=float(sampling.guidance_scale))
    return tiles.join(np.asarray(repaired), codes.shape, tile)


def read_mask(path: str, shape: tuple) -> np.ndarray:
    """A mask image -> bool [H, W], True (white, >= 128) = repair; its size must be the image's."""
    mask = files.read_image(path, channels=1)[..., 0]
    if mask.shape != tuple(shape):
        raise InputError(f"The mask {path} is {mask.shape[1]}x{mask.shape[0]}; the image is {shape[1]}x{shape[0]}: "
                         "make it the image's size (white = repair).")
    return mask >= 128


def repair_image(prior: Prior, image: np.ndarray, rng: jax.Array, *, mask: Optional[np.ndarray] = None,
                 fraction: Optional[float] = None, threshold: Optional[float] = None, dilation: int = 0,
                 label: Optional[int] = None, num_groups: int = anomaly.DEFAULT_NUM_GROUPS):
    """uint8 [H, W, C] -> (the repaired uint8 image, the regenerated positions [h, w] of the
    padded code map)."""
    tokenizer = prior.tokenizer
    factor = tokenizer.downsampling_factor
    height, width = image.shape[:2]
    padded = files.pad_to_multiple(image, *tiles.padding_multiple(tokenizer, prior))
    _, indices = tokenizer.encode(jnp.asarray(files.to_model_range(padded)[None]))
    codes = np.asarray(indices)
    if mask is not None:
        pixel_mask = np.zeros(padded.shape[:2], bool)
        pixel_mask[:height, :width] = mask
        regenerate = np.asarray(decode.token_mask_from_pixels(pixel_mask[None], factor, dilation))[0]
    else:
        labels = np.full((1,), prior.model.null_label if label is None else label, np.int32)
        nll = anomaly.code_nll_map(prior, codes, labels, num_groups)[0]
        nll = nll.reshape(nll.shape[:2] + (-1,)).sum(-1)
        covers_image = np.zeros(nll.shape, bool)  # padding codes are never chosen
        covers_image[: math.ceil(height / factor), : math.ceil(width / factor)] = True
        regenerate = least_likely(nll, fraction, threshold, valid=covers_image)
    repaired = repair_codes(prior, codes, regenerate[None], rng, label)
    decoded = images_lib.to_uint8(tokenizer.decode_indices(jnp.asarray(repaired)))[0]
    return decoded[:height, :width], regenerate


def inpaint_image(model, image: np.ndarray, repair: np.ndarray, rng: jax.Array, *, label: Optional[int] = None,
                  batch_size: int = 16, **settings) -> np.ndarray:
    """A diffusion model's inpainting of uint8 [H, W, C] where `repair` [H, W] is True, in tiles
    of the model's image size (edge-padded, each tile alone, cropped back) -> uint8 [H, W, C]."""
    tile = tuple(model.pixel_shape[:2])
    padded = files.pad_to_multiple(image, *tile)
    keep = np.ones(padded.shape[:2] + (1,), np.float32)  # the padding is kept: it continues the image
    keep[: image.shape[0], : image.shape[1], 0] = ~np.asarray(repair, bool)
    image_tiles = files.to_model_range(tiles.split_images(padded, tile))
    keep_tiles = tiles.split_images(keep, tile)
    out = []
    for start in range(0, len(image_tiles), batch_size):
        batch = slice(start, start + batch_size)
        labels = None if label is None else [label] * len(image_tiles[batch])
        out.append(np.asarray(model.inpaint(image_tiles[batch], keep_tiles[batch], jax.random.fold_in(rng, start),
                                            labels=labels, **settings)))
    inpainted = tiles.join_images(images_lib.to_uint8(np.concatenate(out)), padded.shape)
    return inpainted[: image.shape[0], : image.shape[1]]


def _diffusion_repair_command(args) -> None:
    if args.mask is None:
        raise InputError("A diffusion model inpaints a mask: pass --mask MASK.png (white = repair); --fraction and "
                         "--threshold choose codes by a prior's likelihood (--prior DIR).")
    if len(args.images) != 1:
        raise InputError("--mask applies to one image; repair the images one at a time.")
    model = models.load_diffusion(args.diffusion)
    if model.spec.low_res_size:
        raise InputError(f"--diffusion {args.diffusion} is a super-resolution model; inpainting takes a model that "
                         "generates images (vqjax upsample runs this one).")
    image = files.read_images(args.images, model.pixel_shape[-1])[0]
    mask = read_mask(args.mask, image.shape[:2])
    output = files.output_paths(args.out, args.images, ".png")[0]
    repaired = inpaint_image(model, image, mask, jax.random.key(args.seed), label=args.label, steps=args.steps,
                             sampler=args.sampler)
    files.write_png(output, repaired)
    print(f"{output}: {int(mask.sum())} of {mask.size} pixels inpainted")


def _repair_command(args) -> None:
    if args.diffusion:
        return _diffusion_repair_command(args)
    tokenizer, prior = models.load(args)
    if prior is None:
        raise InputError("Repair resamples codes with a prior: pass --prior DIR (a MaskGIT prior workdir).")
    if args.mask is None and args.fraction is None and args.threshold is None:
        raise InputError("Say what to repair: --mask MASK.png (white = repair), --fraction F (the least likely "
                         "share of the codes) or --threshold NATS.")
    if args.mask is not None and len(args.images) != 1:
        raise InputError("--mask applies to one image; repair the images one at a time.")
    images = files.read_images(args.images, int(tokenizer.config.data.get("channels", 3)))
    mask = None if args.mask is None else read_mask(args.mask, images[0].shape[:2])
    outputs = files.output_paths(args.out, args.images, ".png")
    results = [repair_image(prior, image, jax.random.fold_in(jax.random.key(args.seed), i), mask=mask,
                            fraction=None if mask is not None else args.fraction,
                            threshold=None if mask is not None else args.threshold, dilation=args.dilation,
                            label=args.label) for i, image in enumerate(images)]
    for path, (image, regenerated) in zip(outputs, results):
        files.write_png(path, image)
        print(f"{path}: {int(regenerated.sum())} of {regenerated.size} code positions regenerated")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "repair", help="regenerate the least likely codes (or a mask's) with a MaskGIT prior, or inpaint a mask "
        "with a diffusion model", description=__doc__.split("\n\n")[0])
    models.add_arguments(parser, "a MaskGIT prior resamples the codes",
                         diffusion_use="a pixel-space or latent diffusion model inpaints --mask")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--mask", default=None, metavar="MASK.png", help="white = repair (inpainting, outpainting)")
    parser.add_argument("--fraction", type=float, default=None, help="regenerate this share of the least likely codes")
    parser.add_argument("--threshold", type=float, default=None, help="regenerate codes above this NLL (nats)")
    parser.add_argument("--dilation", type=int, default=1,
                        help="with --mask: also regenerate this many codes around the masked ones (blends edges)")
    parser.add_argument("--label", type=int, default=None, help="class-conditional priors and diffusion models: the class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="--diffusion: sampling steps")
    parser.add_argument("--sampler", default="ddim", help="--diffusion: ddpm, ddim or dpm_solver")
    parser.set_defaults(run=_repair_command)
