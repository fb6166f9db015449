"""Networks by name, from plain keyword arguments (a config section splatted by a family's
builder): the autoencoders a tokenizer is made of, and compute dtypes by name."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vqjax.nets.autoencoder import VQAutoencoder
from vqjax.nets.vqvae import VQVAE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AUTOENCODERS = {"vqvae": VQVAE, "vqgan": VQAutoencoder}


def parse_dtype(name: str, field: str = "config.model.dtype") -> jnp.dtype:
    """'float32' | 'bfloat16' -> the dtype; `field` names the setting in the error."""
    if name not in DTYPES:
        raise ValueError(f"{field} is {name!r}; use one of {sorted(DTYPES)}.")
    return DTYPES[name]


def build_autoencoder(name: str = "vqvae", dtype: str = "float32", **fields) -> nn.Module:
    """'vqvae' (van den Oord et al.) or 'vqgan' (taming's autoencoder) with `fields` as its
    constructor arguments (`config.model`)."""
    if name not in AUTOENCODERS:
        raise ValueError(f"config.model.name is {name!r}; use one of {sorted(AUTOENCODERS)}.")
    try:
        return AUTOENCODERS[name](dtype=parse_dtype(dtype), **fields)
    except TypeError as err:  # an unknown field: the TypeError names it
        raise ValueError(f"config.model does not fit model {name!r} ({err}).") from None


def downsampling_factor(model: nn.Module) -> int:
    """Image side / code-map side of an autoencoder."""
    if isinstance(model, VQAutoencoder):
        return 2 ** (len(model.ch_mult) - 1)
    return 2 ** model.num_downsamples


PRIORS = {"gpt": True, "maskgit": False}  # name -> causal


def build_transformer(name: str, num_codes: int, seq_len: int, dtype: str = "float32", **fields) -> nn.Module:
    """The prior `name` ('gpt' causal, 'maskgit' bidirectional) over `seq_len` codes of a
    `num_codes` codebook, with `fields` as its constructor arguments (`config.model`)."""
    from vqjax.nets.transformer import Transformer

    if name not in PRIORS:
        raise ValueError(f"config.model.name is {name!r}; a prior is one of {sorted(PRIORS)}.")
    try:
        return Transformer(vocab_size=num_codes, seq_len=seq_len, causal=PRIORS[name], dtype=parse_dtype(dtype),
                           **fields)
    except TypeError as err:
        raise ValueError(f"config.model does not fit a {name} transformer ({err}).") from None
