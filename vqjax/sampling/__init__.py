"""Sampling code maps from priors: logits filters, GPT and MaskGIT decoding, guidance,
inpainting masks (`decode`), and a prior's samples with a config's settings (`prior`)."""

from vqjax.sampling.decode import (filter_logits, guide, mask_ratio, masked_counts, sample_gpt,
                                   sample_maskgit, token_mask_from_pixels, top_k_mask, top_p_mask)

__all__ = ["filter_logits", "guide", "mask_ratio", "masked_counts", "sample_gpt", "sample_maskgit",
           "token_mask_from_pixels", "top_k_mask", "top_p_mask"]
