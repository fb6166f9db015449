"""vqjax: discrete image tokenizers (VQ-VAE, VQGAN) and generators over their codes, in JAX."""

__version__ = "0.1.0"
