"""Evaluation: metrics (PSNR, SSIM, FID, IS, KID, bits), reconstruction of tokenizers,
likelihood of code maps under priors, quality of samples, and whole model directories
(`evaluate_model`)."""
