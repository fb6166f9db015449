"""The families' default configs (vqjax.families.defaults), which every experiment config here
starts from."""

from vqjax.families.defaults import (prior_base, shrink_for_smoke, shrink_prior_for_smoke, vqgan_base,
                                     vqvae_base)

__all__ = ["prior_base", "shrink_for_smoke", "shrink_prior_for_smoke", "vqgan_base", "vqvae_base"]
