r"""Quickstart: a small VQ-VAE on 32x32 crops of the photographs that ship with scikit-image.

No download, finishes in a few minutes on two CPU cores:
  python -m experiments.vqvae --config=experiments/configs/vqvae_quickstart.py --workdir=/tmp/vqvae_quickstart

Evaluation crops come from a strip of each photograph that training never sees. Measured
(README): 28.5 dB test PSNR with all 128 codes used (perplexity 74.5) after the 1000 steps; <workdir>/reconstructions.png shows originals
above reconstructions. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.vqvae_base()
    config.data.source = "embedded"
    config.data.image_size = 32
    config.data.crop = "random"
    config.data.batch_size = 32
    config.data.eval_batch_size = 250
    config.model.hidden_channels = 64
    config.model.residual_channels = 32
    config.model.embed_dim = 32
    config.quantizer.num_codes = 128
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 1000
    config.train.log_steps = 50
    config.train.eval_steps = 500
    config.train.ckpt_steps = 500
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
