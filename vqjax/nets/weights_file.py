"""Reading the msgpack weight files of frozen networks (LPIPS, FID Inception) that
`python -m vqjax.convert` writes: one place for the checks and their sentences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import serialization

from vqjax.core import paths


def read(path: str, expected, what: str, how: str):
    """The tree in `path`, checked against `expected` (ShapeDtypeStructs): a foreign file or a
    missing or mis-shaped array is a ValueError naming it and ending with `how` (the fix)."""
    try:
        tree = serialization.msgpack_restore(paths.read_bytes(path))
    except Exception as err:  # msgpack raises several types for a foreign file
        raise ValueError(f"{path} is not an {what} weights file ({type(err).__name__}); {how}.") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path} is not an {what} weights file (it holds a {type(tree).__name__}); {how}.")
    flat = {"/".join(str(k.key) for k in p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    for p, want in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = "/".join(str(k.key) for k in p)
        got = getattr(flat.get(name), "shape", None)
        if got is None or tuple(got) != tuple(want.shape):
            raise ValueError(f"{path}: {what} weight {name} is {'missing' if got is None else tuple(got)}, "
                             f"expected {tuple(want.shape)}; {how}.")
    return jax.tree.map(jnp.asarray, tree)
