"""`vqjax.pretrained.load(DIR)`: a trained or converted tokenizer (`vqjax.inference.tokenizer`)."""

from vqjax.inference.tokenizer import Tokenizer, load

__all__ = ["Tokenizer", "load"]
