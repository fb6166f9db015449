"""`python -m vqjax.convert {taming,lpips,inception,diffusers} ...`: PyTorch weights -> vqjax files."""

from __future__ import annotations

import argparse

from vqjax.convert.torch_io import load_torch_state, save_params


def _taming(args) -> None:
    from vqjax.convert import taming

    summary = taming.convert_checkpoint(args.ckpt, args.config, args.out, with_loss=not args.no_loss,
                                        overwrite=args.overwrite)
    print(summary)


def _lpips(args) -> None:
    from vqjax.convert.lpips import lpips_params_from_torch

    params = lpips_params_from_torch(load_torch_state(args.vgg), load_torch_state(args.lin))
    save_params(params, args.out)
    print(f"Wrote LPIPS weights to {args.out}; use --config.loss.lpips_path={args.out}")


def _inception(args) -> None:
    from vqjax.convert.inception import inception_variables_from_torch

    save_params(inception_variables_from_torch(load_torch_state(args.pth)), args.out)
    print(f"Wrote FID InceptionV3 weights to {args.out}.")


def _diffusers(args) -> None:
    from vqjax.convert import diffusers

    print(diffusers.convert_pipeline(args.pipeline, args.out, overwrite=args.overwrite))


def main(argv=None, prog: str = "python -m vqjax.convert") -> None:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="PyTorch weights -> vqjax weight files.")
    sub = parser.add_subparsers(dest="kind", required=True)

    tm = sub.add_parser("taming", help="taming-transformers / latent-diffusion VQGAN -> a vqjax model "
                        "directory for vqjax.pretrained.load and config.init_from")
    tm.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt) or state dict (.pth)")
    tm.add_argument("--config", required=True, help="the model's YAML config (model.params.ddconfig, ...)")
    tm.add_argument("--out", required=True, help="output directory (created)")
    tm.add_argument("--no-loss", action="store_true",
                    help="leave out the discriminator and LPIPS weights the checkpoint may hold")
    tm.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    tm.set_defaults(run=_taming)

    lp = sub.add_parser("lpips", help="LPIPS (VGG16 + v0.1 heads) -> msgpack for config.loss.lpips_path")
    lp.add_argument("--vgg", required=True, help="torchvision vgg16 ImageNet weights (.pth)")
    lp.add_argument("--lin", required=True, help="lpips v0.1 heads, lpips/weights/v0.1/vgg.pth")
    lp.add_argument("--out", required=True, help="output file")
    lp.set_defaults(run=_lpips)

    inc = sub.add_parser("inception", help="pytorch-fid's FID InceptionV3 -> msgpack")
    inc.add_argument("--pth", required=True, help="pt_inception-2015-12-05-6726825d.pth")
    inc.add_argument("--out", required=True, help="output file")
    inc.set_defaults(run=_inception)

    df = sub.add_parser("diffusers", help="a diffusers DDPM pipeline (google/ddpm-*) -> a vqjax diffusion "
                        "directory for vqjax.diffusion.load")
    df.add_argument("--pipeline", required=True, help="directory with unet/ and scheduler/ (save_pretrained)")
    df.add_argument("--out", required=True, help="output directory (created)")
    df.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    df.set_defaults(run=_diffusers)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ValueError as err:  # a mismatch between the files and what vqjax expects: one sentence
        raise SystemExit(str(err)) from None
