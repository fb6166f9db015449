"""Generation from the command line: `vqjax sample` (a prior's or a diffusion model's samples as
a grid) and `vqjax upsample` (a super-resolution diffusion model on image files)."""

from __future__ import annotations

import jax
import numpy as np

from vqjax.apps import files, tiles
from vqjax.apps.files import InputError
from vqjax.core import images as images_lib, paths
from vqjax.inference import legacy


def _labels(text: str, count: int):
    if not text:
        return None
    try:
        labels = [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--labels {text!r}: pass comma-separated class numbers, e.g. --labels 0,1,2.") from None
    return (labels * count)[:count]  # repeated to `count` samples


def _model_family(directory: str) -> str:
    if not paths.is_dir(directory):
        raise InputError(f"{directory}: no such directory; pass a prior or diffusion workdir.")
    return legacy.read_model_config(directory).family


def _sample_command(args) -> None:
    family = _model_family(args.model_dir)
    rng = jax.random.key(args.seed)
    labels = _labels(args.labels, args.num)
    if family == "prior":
        from vqjax.inference import prior as prior_lib

        prior = prior_lib.load(args.model_dir)
        settings = {} if args.steps is None else {"num_steps": args.steps}
        if labels is None:
            samples = prior.sample(rng, num_samples=args.num, **settings)
        else:
            samples = prior.sample(rng, labels=labels, **settings)
    elif family == "diffusion":
        from vqjax.inference import diffusion as diffusion_lib

        model = diffusion_lib.load(args.model_dir)
        samples = model.sample(rng, args.num, labels=labels, sampler=args.sampler,
                               steps=50 if args.steps is None else args.steps)
    else:
        raise InputError(f"{args.model_dir} holds a {family} model, which does not generate; pass a prior or "
                         "diffusion workdir (a tokenizer reconstructs: vqjax reconstruct).")
    samples = np.asarray(samples)
    rows = [samples[i:i + args.per_row] for i in range(0, len(samples), args.per_row)]
    if len(rows) > 1 and len(rows[-1]) < args.per_row:  # the grid's last row padded with white
        rows[-1] = np.concatenate([rows[-1], np.ones((args.per_row - len(rows[-1]),) + samples.shape[1:], samples.dtype)])
    files.write_png(args.out, _with_channels(images_lib.image_grid(rows, min_tile=samples.shape[1])))
    print(f"{args.out}: {len(samples)} samples of {samples.shape[2]}x{samples.shape[1]}")


def _with_channels(grid: np.ndarray) -> np.ndarray:
    return grid[..., None] if grid.ndim == 2 else grid


def _upsample_command(args) -> None:
    from vqjax.inference import diffusion as diffusion_lib

    if _model_family(args.model_dir) != "diffusion":
        raise InputError(f"{args.model_dir} is not a diffusion workdir; upsample takes a super-resolution diffusion "
                         "model (config.diffusion.low_res_size > 0).")
    model = diffusion_lib.load(args.model_dir)
    size = model.spec.low_res_size
    if not size:
        raise InputError(f"{args.model_dir} generates images but does not upsample them: train a "
                         "super-resolution config (experiments/configs/sr_quickstart.py).")
    images = files.read_images(args.images, model.image_shape[-1])
    outputs = files.output_paths(args.out, args.images, ".png")
    rng = jax.random.key(args.seed)
    results = [upsample_image(model, image, jax.random.fold_in(rng, i), batch_size=args.batch_size,
                              sampler=args.sampler, steps=args.steps) for i, image in enumerate(images)]
    for path, image in zip(outputs, results):
        files.write_png(path, image)
        print(f"{path}: {image.shape[1]}x{image.shape[0]}")


def upsample_image(model, image: np.ndarray, rng: jax.Array, *, batch_size: int = 16, **settings) -> np.ndarray:
    """uint8 [h, w, C] -> uint8 [h x r, w x r, C] by a super-resolution model of ratio r. Images of
    another size than the model's low resolution s are upsampled in s x s tiles (edge-padded to
    whole tiles, cropped back), each tile alone: seams between tiles can show."""
    size = model.spec.low_res_size
    ratio = model.image_shape[0] // size
    padded = files.pad_to_multiple(image, size, size)
    low_res = files.to_model_range(tiles.split_images(padded, (size, size)))
    upsampled = [np.asarray(model.upsample(low_res[start:start + batch_size], jax.random.fold_in(rng, start),
                                           **settings)) for start in range(0, len(low_res), batch_size)]
    high_res = tiles.join_images(images_lib.to_uint8(np.concatenate(upsampled)),
                                 (padded.shape[0] * ratio, padded.shape[1] * ratio, padded.shape[2]))
    return high_res[: image.shape[0] * ratio, : image.shape[1] * ratio]


def register(subparsers) -> None:
    sample = subparsers.add_parser("sample", help="a prior's or diffusion model's samples -> a PNG grid")
    sample.add_argument("model_dir", metavar="MODEL_DIR", help="a prior or diffusion workdir")
    sample.add_argument("-n", "--num", type=int, default=16, help="number of samples")
    sample.add_argument("--out", required=True, metavar="FILE.png")
    sample.add_argument("--labels", default="", help="class-conditional models: comma-separated classes, repeated")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--steps", type=int, default=None,
                        help="decoding steps (MaskGIT: the config's; diffusion: 50)")
    sample.add_argument("--sampler", default="ddim", help="diffusion: ddpm, ddim or dpm_solver")
    sample.add_argument("--per-row", type=int, default=8, help="samples per grid row")
    sample.set_defaults(run=_sample_command)

    upsample = subparsers.add_parser("upsample", help="low-resolution images -> a super-resolution model's samples")
    upsample.add_argument("images", nargs="+", metavar="IMAGE")
    upsample.add_argument("--model-dir", "--diffusion", dest="model_dir", required=True, metavar="DIR",
                          help="a super-resolution diffusion workdir")
    upsample.add_argument("--out", required=True, metavar="DIR")
    upsample.add_argument("--seed", type=int, default=0)
    upsample.add_argument("--steps", type=int, default=50)
    upsample.add_argument("--sampler", default="ddim", help="ddpm, ddim or dpm_solver")
    upsample.add_argument("--batch-size", type=int, default=16)
    upsample.set_defaults(run=_upsample_command)
