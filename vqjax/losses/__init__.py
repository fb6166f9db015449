"""Loss functions, one concern per module: reconstruction (pixel and perceptual), adversarial
(GAN losses, adaptive weight, LeCam, R1), vector quantization."""
