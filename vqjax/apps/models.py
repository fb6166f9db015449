"""The models an application runs on, named on its command line: `--tokenizer DIR` alone,
`--prior DIR` (a prior workdir, which names its own tokenizer), or for the applications that
take one `--diffusion DIR`."""

from __future__ import annotations

import argparse
from typing import Optional

from vqjax.apps.files import InputError
from vqjax.core import paths
from vqjax.inference import legacy, prior as prior_lib, tokenizer as tokenizer_lib


def add_arguments(parser: argparse.ArgumentParser, prior_use: str, diffusion_use: Optional[str] = None) -> None:
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--tokenizer", metavar="DIR", help="a tokenizer: a vqvae/vqgan workdir or "
                        "`vqjax convert taming` output")
    models.add_argument("--prior", metavar="DIR", help=f"a prior workdir (with the tokenizer it was trained on): {prior_use}")
    if diffusion_use:
        models.add_argument("--diffusion", metavar="DIR", help=f"a diffusion workdir: {diffusion_use}")


def _check_directory(directory: str, flag: str) -> None:
    if not paths.is_dir(directory):
        raise InputError(f"{flag} {directory}: no such directory; pass a training workdir or a converted model.")


def load(args: argparse.Namespace) -> tuple[tokenizer_lib.Tokenizer, Optional[prior_lib.Prior]]:
    """(tokenizer, prior or None) from --tokenizer / --prior, with one-sentence errors."""
    if args.prior:
        _check_directory(args.prior, "--prior")
        family = legacy.read_model_config(args.prior).family
        if family != "prior":
            raise InputError(f"--prior {args.prior} holds a {family} model, not a prior"
                             + ("; pass it with --tokenizer." if family in ("vqvae", "vqgan") else "."))
        prior = prior_lib.load(args.prior)
        return prior.tokenizer, prior
    _check_directory(args.tokenizer, "--tokenizer")
    family = legacy.read_model_config(args.tokenizer).family
    if family == "prior":
        raise InputError(f"--tokenizer {args.tokenizer} holds a prior, not a tokenizer; pass it with --prior.")
    return tokenizer_lib.load(args.tokenizer), None


def load_diffusion(directory: str):
    """The diffusion model of --diffusion DIR, with one-sentence errors."""
    from vqjax.inference import diffusion as diffusion_lib

    _check_directory(directory, "--diffusion")
    family = legacy.read_model_config(directory).family
    if family != "diffusion":
        raise InputError(f"--diffusion {directory} holds a {family} model, not a diffusion model"
                         + ("; pass it with --prior." if family == "prior" else "."))
    return diffusion_lib.load(directory)
