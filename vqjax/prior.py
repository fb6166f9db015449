"""`vqjax.prior.load(WORKDIR)`: a trained prior with its tokenizer (`vqjax.inference.prior`)."""

from vqjax.inference.prior import Prior, load

__all__ = ["Prior", "load"]
