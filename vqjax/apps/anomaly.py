"""Anomaly scores and maps: how badly a tokenizer reconstructs an image, and how unlikely its
code map is under a prior (`vqjax score`).

    vqjax score --prior /tmp/prior_quickstart test/*.png --out /tmp/scores --maps
    vqjax score --tokenizer /tmp/vqgan_quickstart test/*.png --reference normal/*.png --out /tmp/scores

Three scores per image, each higher = more anomalous:
  - reconstruction: the squared error of the tokenizer's reconstruction in [0, 1] intensity units,
    averaged over channels per pixel (the map) and over pixels (the score: the MSE, so
    PSNR = -10 log10 score). Squared rather than absolute error so that a small region reproduced
    badly (a defect) outweighs a faint error spread over the whole image.
  - prior: the negative log-likelihood (nats) of each code of the image's code map under the
    prior; the score is the mean over the code positions that cover the image. GPT: exact, by
    teacher forcing (-log p(x_i | x_<i)). MaskGIT defines no likelihood: we use a pseudo-
    likelihood, -log p(x_i | every code outside i's group), from a fixed number of passes: the
    positions are split into `num_groups` interleaved groups (`mask_groups`) and one pass masks
    one group. Masking one position per pass would cost L passes; with the lattice groups (and
    K >= 4) every masked code still sees all eight neighbours, which is what a local defect is
    judged against.
    The map spreads each code's NLL (summed over a residual quantizer's stacked codes) over the
    f x f pixels it covers.
  - combined: the mean of the two scores after each is standardised by the median and the
    scaled median absolute deviation (1.4826 MAD, the standard deviation of a normal) of that
    score over reference images: the normal images of `--reference` when given, else the scored
    images themselves. The two scores have unrelated units, so neither may dominate by its
    scale; median and MAD rather than mean and standard deviation because a batch of scored
    images holds the very anomalies that would inflate a standard deviation. References that do
    not vary (a single image) give no scale: the combined score is then left empty.

The prior takes code maps of the size it was trained on (its sequence length is fixed). Images
of other sizes are padded by edge repetition to whole tiles of that size (in pixels: code shape
x downsampling factor), each tile's code map is scored on its own (so a code at a tile's edge
has less context), and the maps are cropped back to the image. Without a prior, images are
padded to a multiple of the downsampling factor the same way.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import math
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vqjax.apps import files, tiles
from vqjax.core import paths
from vqjax.eval.likelihood import token_nll
from vqjax.inference.prior import Prior
from vqjax.inference.tokenizer import Tokenizer
from vqjax.nets.transformer import Transformer

DEFAULT_NUM_GROUPS = 8

# Consistent with 1.4826 x MAD estimating the standard deviation of normally distributed scores.
MAD_TO_STD = 1.4826

# Matplotlib's "inferno" at 0, 1/8, ..., 1: its lightness rises monotonically, so a brighter
# pixel is a higher value in print and for colour-blind readers alike.
_INFERNO = np.array([
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164)], np.float64)


# --- reconstruction ---------------------------------------------------------------------------

def reconstruction_error_map(images, reconstructions) -> np.ndarray:
    """Images and reconstructions [B, H, W, C] in [-1, 1] -> squared error in [0, 1] intensity
    units, averaged over channels: [B, H, W]."""
    difference = (np.asarray(images, np.float32) - np.asarray(reconstructions, np.float32)) / 2.0
    return np.mean(np.square(difference), axis=-1)


# --- the prior's per-code negative log-likelihood ---------------------------------------------

def mask_groups(code_shape: Sequence[int], num_groups: int) -> np.ndarray:
    """int32 [h, w, *tail]: the group of each code of a code map, in [0, num_groups).

    Lattice groups: position (i, j) is in group (i * r + j) mod K with r = round(sqrt(K)), so for
    K >= 4 none of a position's eight neighbours (offsets 1, r - 1, r, r + 1 mod K) shares its
    group, and a group's positions spread over the whole map. A residual quantizer's stacked codes
    at one position share its group (they are masked together)."""
    if num_groups < 1:
        raise ValueError(f"num_groups is {num_groups}; it must be at least 1.")
    height, width, *tail = code_shape
    stride = max(1, round(math.sqrt(num_groups)))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    groups = ((rows * stride + cols) % num_groups).astype(np.int32)
    return np.broadcast_to(groups.reshape(height, width, *([1] * len(tail))), tuple(code_shape)).copy()


@functools.partial(jax.jit, static_argnums=0)
def _gpt_code_nll(model: Transformer, params, tokens, labels):
    return token_nll(model.apply({"params": params}, tokens, labels), tokens)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _maskgit_code_nll(model: Transformer, params, tokens, labels, groups, num_groups: int):
    def add_group(group, nll):
        masked = (groups == group)[None, :]
        logits = model.apply({"params": params}, jnp.where(masked, model.mask_token, tokens), labels)
        return nll + jnp.where(masked, token_nll(logits, tokens), 0.0)

    # A loop, not unrolled: one pass is compiled whatever the number of groups.
    return jax.lax.fori_loop(0, num_groups, add_group, jnp.zeros(tokens.shape, jnp.float32))


def sequence_code_nll(model: Transformer, params, tokens, labels, code_shape: Sequence[int],
                      num_groups: int = DEFAULT_NUM_GROUPS) -> jax.Array:
    """-log p of each code, in nats: tokens [N, L] (code maps of `code_shape` flattened in raster
    order), labels [N] -> [N, L]. GPT: exact (teacher forcing); MaskGIT: the pseudo-likelihood
    of `num_groups` passes over `mask_groups(code_shape, num_groups)`."""
    tokens, labels = jnp.asarray(tokens, jnp.int32), jnp.asarray(labels, jnp.int32)
    if model.causal:
        return _gpt_code_nll(model, params, tokens, labels)
    groups = jnp.asarray(mask_groups(code_shape, num_groups).reshape(-1))
    return _maskgit_code_nll(model, params, tokens, labels, groups, int(num_groups))


def code_nll_map(prior: Prior, codes, labels, num_groups: int = DEFAULT_NUM_GROUPS) -> np.ndarray:
    """Code maps [B, H, W, *tail] whose H, W are multiples of the prior's code map -> the NLL
    (nats) of each code [B, H, W, *tail], every tile of the prior's size scored on its own."""
    codes = np.asarray(codes)
    tile_hw = tuple(prior.code_shape[:2])
    if codes.shape[1] % tile_hw[0] or codes.shape[2] % tile_hw[1]:
        raise ValueError(f"Code maps of {codes.shape[1]}x{codes.shape[2]} are not whole tiles of the prior's "
                         f"{tile_hw[0]}x{tile_hw[1]}; pad the images first (score_images does).")
    code_tiles = tiles.split(codes, tile_hw)
    tile_labels = np.repeat(np.asarray(labels, np.int32), len(code_tiles) // len(codes))
    nll = sequence_code_nll(prior.model, prior.params, code_tiles, tile_labels, prior.code_shape, num_groups)
    return tiles.join(np.asarray(nll), codes.shape, tile_hw)


def upsample_nearest(values: np.ndarray, factor: int) -> np.ndarray:
    """[..., h, w] -> [..., h * factor, w * factor], each value repeated over its block."""
    return np.repeat(np.repeat(values, factor, axis=-2), factor, axis=-1)


# --- whole images -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImageScores:
    """One image's maps ([H, W], the image's size) and scores (higher = more anomalous)."""

    reconstruction_error: np.ndarray  # squared error, [0, 1] units, mean over channels
    reconstruction_mse: float  # its mean
    code_nll: Optional[np.ndarray] = None  # nats of the code covering each pixel (summed over depth)
    prior_nats_per_code: Optional[float] = None  # mean NLL of the code positions covering the image


def _score_batch(tokenizer: Tokenizer, prior: Optional[Prior], images: np.ndarray, labels: np.ndarray,
                 num_groups: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Padded images [B, H, W, C] -> (reconstruction error maps [B, H, W], per-position code NLL
    [B, h, w] or None)."""
    z_q, codes = tokenizer.encode(images)
    reconstructions = jnp.clip(tokenizer.decode(z_q), -1.0, 1.0)
    errors = reconstruction_error_map(images, jax.device_get(reconstructions))
    if prior is None:
        return errors, None
    nll = code_nll_map(prior, jax.device_get(codes), labels, num_groups)
    return errors, nll.reshape(nll.shape[:3] + (-1,)).sum(-1)


def _batches_by_shape(shapes: Sequence[tuple], batch_size: int) -> list[tuple[list[int], int]]:
    """(indices, rows) batches of images of one shape, at most `batch_size` of them, each to be
    padded to `rows`, the same for every batch of a shape: one compilation per shape."""
    by_shape: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(tuple(shape), []).append(i)
    return [(group[i:i + batch_size], min(batch_size, len(group)))
            for group in by_shape.values() for i in range(0, len(group), batch_size)]


def score_images(model: Tokenizer | Prior, images: Sequence[np.ndarray], *, label: Optional[int] = None,
                 num_groups: int = DEFAULT_NUM_GROUPS, batch_size: int = 16,
                 progress: bool = False) -> list[ImageScores]:
    """Images (each float32 [H, W, C] in [-1, 1], sizes may differ) -> their `ImageScores`, by a
    tokenizer alone (reconstruction) or a prior with its own tokenizer (and code likelihoods).
    `label`: the class a prior is conditioned on (default its null label: unconditional)."""
    prior = model if isinstance(model, Prior) else None
    tokenizer = prior.tokenizer if prior is not None else model
    label = prior.model.null_label if prior is not None and label is None else label
    multiple_h, multiple_w = tiles.padding_multiple(tokenizer, prior)
    factor = tokenizer.downsampling_factor
    padded = [files.pad_to_multiple(np.asarray(image, np.float32), multiple_h, multiple_w) for image in images]
    results: list[Optional[ImageScores]] = [None] * len(images)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(images), unit="image", desc="scoring", disable=None if progress else True)
    for batch, num_rows in _batches_by_shape([p.shape for p in padded], batch_size):
        rows = batch + [batch[-1]] * (num_rows - len(batch))  # the last image repeated
        stacked = np.stack([padded[i] for i in rows])
        labels = np.full((len(rows),), 0 if label is None else label, np.int32)
        errors, nll = _score_batch(tokenizer, prior, stacked, labels, num_groups)
        for row, index in enumerate(batch):
            height, width = images[index].shape[:2]
            error = errors[row, :height, :width]
            scores = ImageScores(error, float(np.mean(error)))
            if nll is not None:
                covering = nll[row, :-(-height // factor), :-(-width // factor)]
                scores = dataclasses.replace(
                    scores, code_nll=upsample_nearest(nll[row], factor)[:height, :width],
                    prior_nats_per_code=float(np.mean(covering)))
            results[index] = scores
        bar.update(len(batch))
    bar.close()
    return results


# --- combining and showing scores -------------------------------------------------------------

def robust_standardiser(reference: Sequence[float]) -> tuple[float, float]:
    """(median, 1.4826 x median absolute deviation) of reference scores. The spread is 0 when
    the references do not vary (one image): standardising by it is then undefined."""
    reference = np.asarray(reference, np.float64)
    median = float(np.median(reference))
    return median, MAD_TO_STD * float(np.median(np.abs(reference - median)))


def combined_scores(scores: dict[str, Sequence[float]], reference: dict[str, Sequence[float]]) -> np.ndarray:
    """The mean over score kinds of each kind standardised by `robust_standardiser` of its
    reference scores: {kind: [N]}, {kind: [M]} -> [N]; NaN where a kind's reference spread is 0
    (scores of unrelated units cannot be added without a scale)."""
    standardised = []
    for kind, values in scores.items():
        median, spread = robust_standardiser(reference[kind])
        values = np.asarray(values, np.float64)
        standardised.append((values - median) / spread if spread > 0 else np.full(values.shape, np.nan))
    return np.mean(standardised, axis=0)


def map_range(maps: Sequence[np.ndarray], percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """(low, high): the values heat maps show darkest and brightest, percentiles of all the maps'
    values (a few extreme pixels would otherwise leave the rest one colour; code NLLs sit on a
    baseline of nats that a range from 0 would show as uniform brightness)."""
    values = np.concatenate([np.ravel(m) for m in maps])
    low, high = (float(v) for v in np.percentile(values, percentiles))
    return low, max(high, low + 1e-12)


def heat_map(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """[H, W] values -> uint8 [H, W, 3]: `low` and below black, through inferno's colours, to
    `high` and above pale yellow."""
    position = np.clip((np.asarray(values, np.float64) - low) / (high - low), 0.0, 1.0) * (len(_INFERNO) - 1)
    low_anchor = np.minimum(np.floor(position).astype(np.int64), len(_INFERNO) - 2)
    weight = (position - low_anchor)[..., None]
    colours = _INFERNO[low_anchor] * (1.0 - weight) + _INFERNO[low_anchor + 1] * weight
    return np.round(colours).astype(np.uint8)


# --- `vqjax score` ----------------------------------------------------------------------------

def check_label(prior: Prior, directory: str, label: Optional[int]) -> None:
    """A label the prior was trained on; no label only for a prior that learned the unconditional
    distribution."""
    model = prior.model
    if label is not None and model.num_classes == 0:
        raise files.InputError(f"{directory}'s prior is unconditional; leave out --label.")
    if label is not None and not 0 <= label < model.num_classes:
        raise files.InputError(f"--label {label} is not a class of {directory}'s prior, which has "
                               f"{model.num_classes} classes; pass one of 0..{model.num_classes - 1} or none.")
    if label is None and model.num_classes > 0 and float(prior.config.loss.get("cond_drop", 0.0)) == 0.0:
        raise files.InputError(f"{directory}'s prior is class-conditional and was trained without condition "
                               "dropout (loss.cond_drop = 0), so it has no unconditional likelihood; pass "
                               "--label CLASS.")


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)  # floats as repr writes them: read back exactly
    return text.getvalue()


def _score_kinds(results: Sequence[ImageScores]) -> dict[str, list[float]]:
    kinds = {"reconstruction_mse": [r.reconstruction_mse for r in results]}
    if results and results[0].prior_nats_per_code is not None:
        kinds["prior_nats_per_code"] = [r.prior_nats_per_code for r in results]
    return kinds


def run(args: argparse.Namespace) -> None:
    """`vqjax score`: reads every input, scores, then writes scores.csv, scores.json and maps."""
    from vqjax.apps import models

    tokenizer_dir, prior_dir = args.tokenizer, args.prior
    if args.groups < 1:
        raise files.InputError(f"--groups is {args.groups}; pass a number of MaskGIT passes of at least 1.")
    if args.batch_size < 1:
        raise files.InputError(f"--batch-size is {args.batch_size}; pass at least 1.")
    # Everything that can be wrong with the input is found before anything is written.
    tokenizer, prior = models.load(args)
    if prior is not None:
        check_label(prior, prior_dir, args.label)
    elif args.label is not None:
        raise files.InputError("--label conditions a prior; it has no use with --tokenizer alone.")
    channels = int(tokenizer.config.data.get("channels", 3))
    images = [files.to_model_range(i) for i in files.read_images(args.images, channels)]
    reference = [files.to_model_range(i) for i in files.read_images(args.reference, channels)] \
        if args.reference else []
    map_kinds = ("recon_error", "code_nll") if prior is not None else ("recon_error",)
    map_paths = {kind: files.output_paths(args.out, args.images, f"_{kind}.png")
                 for kind in (map_kinds if args.maps else ())}

    options = dict(label=args.label, num_groups=args.groups, batch_size=args.batch_size, progress=True)
    results = score_images(prior or tokenizer, images, **options)
    reference_results = score_images(prior or tokenizer, reference, **options) if reference else results
    kinds = _score_kinds(results)
    combined = combined_scores(kinds, _score_kinds(reference_results))
    rows = [{"file": str(name), **{kind: values[i] for kind, values in kinds.items()}, "combined": _finite_or_none(combined[i])}
            for i, name in enumerate(args.images)]

    map_ranges: dict[str, dict] = {}
    if args.maps:
        maps = {"recon_error": [r.reconstruction_error for r in results]}
        reference_maps = {"recon_error": [r.reconstruction_error for r in reference_results]}
        if prior is not None:
            maps["code_nll"] = [r.code_nll for r in results]
            reference_maps["code_nll"] = [r.code_nll for r in reference_results]
        for kind, kind_maps in maps.items():
            low, high = map_range(reference_maps[kind])
            map_ranges[kind] = {"black": low, "pale_yellow": high}
            for path, values in zip(map_paths[kind], kind_maps):
                files.write_png(path, heat_map(values, low, high))
    summary = {
        "tokenizer": tokenizer_dir or prior.config.tokenizer_dir,
        "prior": prior_dir,
        "prior_likelihood": None if prior is None else (
            "exact (GPT, teacher forcing)" if prior.model.causal
            else f"pseudo-likelihood (MaskGIT, {args.groups} interleaved groups masked in turn)"),
        "label": args.label,
        "combined": "mean over score kinds of (score - median) / (1.4826 MAD), median and MAD over "
                    + (f"{len(reference)} reference images" if reference else "the scored images"),
        "standardisers": {kind: dict(zip(("median", "spread"), robust_standardiser(values)))
                          for kind, values in _score_kinds(reference_results).items()},
        "map_ranges": map_ranges,
        "images": rows,
    }
    paths.write_text(paths.join(args.out, "scores.csv"), _table(rows, list(rows[0])))
    paths.write_json(paths.join(args.out, "scores.json"), summary)
    _report(rows, args.out, bool(reference))


def _finite_or_none(value) -> Optional[float]:
    return float(value) if np.isfinite(value) else None


def _report(rows: list[dict], out: str, with_reference: bool) -> None:
    print(f"Scored {len(rows)} image{'s' * (len(rows) != 1)}: {paths.join(out, 'scores.csv')}, "
          f"{paths.join(out, 'scores.json')}")
    ranked = sorted((r for r in rows if r["combined"] is not None), key=lambda r: -r["combined"])
    if not ranked:
        print("No combined score: the reference scores do not vary (one image?); pass --reference with "
              "several normal images.", file=sys.stderr)
    elif not with_reference:
        print("Combined scores are standardised over these images; pass --reference NORMAL_IMAGES... "
              "to compare them with known normal ones.", file=sys.stderr)
    for row in ranked[:5]:
        print(f"  {row['combined']:+8.2f}  {row['file']}")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="anomaly scores (reconstruction error, code likelihood) and heat maps of images",
        description="Anomaly scores of image files: the tokenizer's reconstruction error and, with "
                    "--prior, the negative log-likelihood of their codes under the prior; a combined score "
                    "standardised against --reference images (or the scored images). Writes OUT/scores.csv, "
                    "OUT/scores.json and, with --maps, OUT/<name>_recon_error.png and <name>_code_nll.png.")
    from vqjax.apps import models

    models.add_arguments(parser, "the likelihood of the codes under it is scored too")
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="PNG or JPEG files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--maps", action="store_true", help="also write heat maps of each image")
    parser.add_argument("--reference", nargs="+", metavar="IMAGE", default=[],
                        help="normal images: the combined score and the heat maps' colour range are set by theirs")
    parser.add_argument("--groups", type=int, default=DEFAULT_NUM_GROUPS,
                        help="MaskGIT: passes of the pseudo-likelihood, each masking one group of codes")
    parser.add_argument("--label", type=int, default=None,
                        help="class of a class-conditional prior (default: its unconditional model)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call")
    parser.set_defaults(run=run)
