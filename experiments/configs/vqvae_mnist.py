r"""VQ-VAE on MNIST: 28x28 digits padded to 32x32, one channel, K = 128 codes.

  python -m experiments.vqvae --config=experiments/configs/vqvae_mnist.py --workdir=/tmp/vqvae_mnist

Needs TFDS's mnist prepared beforehand (`tfds build mnist`). Reconstructions become sharp
within a few thousand steps. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.vqvae_base()
    config.data.source = "tfds"
    config.data.name = "mnist"
    config.data.image_size = 32
    config.data.channels = 1
    config.data.crop = "resize"
    config.data.random_flip = False
    config.model.hidden_channels = 128
    config.model.residual_channels = 64
    config.model.embed_dim = 32
    config.model.out_channels = 1
    config.quantizer.num_codes = 128
    config.train.num_steps = 20_000
    config.train.eval_steps = 5_000
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
