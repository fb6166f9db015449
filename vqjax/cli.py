"""The `vqjax` command: training, evaluation, conversion and the applications, on image files.

    vqjax train experiments/configs/vqgan_quickstart.py --workdir /tmp/vqgan_quickstart
    vqjax compress --prior /tmp/prior_quickstart photo.png --out /tmp/compressed
    vqjax decompress --prior /tmp/prior_quickstart /tmp/compressed/photo.vqj --out /tmp/restored

`vqjax COMMAND --help` describes each command. Bad input (a missing or unreadable file, a model
of the wrong kind, a bitstream of other models) is one sentence on stderr and exit status 2,
with nothing written.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from typing import Optional, Sequence

# The application modules; each adds its subcommands with register(subparsers).
APPLICATIONS = ("vqjax.apps.tokens", "vqjax.apps.generate", "vqjax.apps.codec", "vqjax.apps.anomaly",
                "vqjax.apps.repair")


def _train(argv: list[str]) -> None:
    """`vqjax train CONFIG --workdir DIR [--config.a.b=v ...]`: the training entry point of the
    config's family (python -m experiments.<family> takes the same flags)."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: vqjax train CONFIG --workdir DIR [--config.FIELD=VALUE ...]")
    from vqjax.train import launch

    sys.argv = ["vqjax train", f"--config={argv[0]}", *argv[1:]]
    launch.run()


def _override(config, argument: str) -> None:
    """Applies one `--config.a.b=VALUE` to `config` (VALUE a Python literal, or text for a text
    field), as `python -m experiments.evaluate` would."""
    if not argument.startswith("--config.") or "=" not in argument:
        raise SystemExit(f"vqjax evaluate: {argument!r} is not a --config.FIELD=VALUE override.")
    key, text = argument[len("--config."):].split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    try:
        for parent in parents:
            node = node[parent]
        current = node[leaf]
    except (KeyError, TypeError):
        raise SystemExit(f"vqjax evaluate: the evaluation config has no field {key!r} "
                         "(see experiments/configs/evaluate.py).") from None
    try:
        node[leaf] = text if isinstance(current, str) else ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError) as err:
        raise SystemExit(f"vqjax evaluate: --config.{key}={text} does not fit the field ({err}).") from None


def _evaluate(argv: list[str]) -> None:
    """`vqjax evaluate DIR [--config.FIELD=VALUE ...]`: experiments.evaluate on a model directory."""
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: vqjax evaluate MODEL_DIR [--config.FIELD=VALUE ...]")
    import jax
    from absl import logging

    from vqjax.eval import evaluate_model
    from vqjax.families import defaults

    config = defaults.evaluation_base()
    config.model_dir = argv[0]
    for argument in argv[1:]:
        _override(config, argument)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO
    result = evaluate_model.evaluate_model(config)
    if jax.process_index() == 0:
        print(evaluate_model.format_table(result), flush=True)


def _convert(argv: list[str]) -> None:
    from vqjax.convert import cli as convert_cli

    convert_cli.main(argv, prog="vqjax convert")


# Commands whose flags belong to another parser (absl's config flags, the converter's).
PASS_THROUGH = {
    "train": (_train, "train a config's model: vqjax train CONFIG --workdir DIR [--config.FIELD=VALUE ...]"),
    "evaluate": (_evaluate, "evaluate a model directory: vqjax evaluate MODEL_DIR [--config.FIELD=VALUE ...]"),
    "convert": (_convert, "PyTorch weights -> vqjax: vqjax convert {taming,lpips,inception,diffusers} ..."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqjax", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in PASS_THROUGH.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    for module in APPLICATIONS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        PASS_THROUGH[argv[0]][0](argv[1:])
        return
    args = build_parser().parse_args(argv)
    from vqjax.apps.files import InputError

    try:
        args.run(args)
    except (InputError, ValueError, FileNotFoundError) as err:  # bad input: one sentence, nothing written
        print(f"vqjax {args.command}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
