"""Applications: what people do with trained models, on ordinary image files.

Each module is one use (codec, anomaly, repair, ...) built on the inference objects
(`vqjax.pretrained.load`, `vqjax.prior.load`, `vqjax.diffusion.load`), never on training code,
and registers its `vqjax` subcommands with a `register(subparsers)` function (vqjax/cli.py).
"""
