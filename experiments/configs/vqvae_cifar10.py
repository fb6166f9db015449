r"""VQ-VAE on CIFAR-10 with the paper's settings (van den Oord et al. 2017, section 4.2).

256 hidden channels, two residual blocks, K = 512 codes of dimension D = 64, beta = 0.25,
EMA decay 0.99, Adam 2e-4, batch 128, 32x32 -> 8x8 codes.

From TFDS (prepared beforehand with `tfds build cifar10`):
  python -m experiments.vqvae --config=experiments/configs/vqvae_cifar10.py --workdir=/tmp/vqvae_cifar10

From a folder with train/<class>/*.jpg and test/<class>/*.jpg:
  python -m experiments.vqvae --config=experiments/configs/vqvae_cifar10.py \
    --config.data.source=folder --config.data.path=/tmp/cifar10 --workdir=/tmp/vqvae_cifar10

Measured (README): 500 steps at batch 32 on 2 CPU cores reach 23.8 dB test PSNR with all 512
codes used on the test split. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.vqvae_base()
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.crop = "center"  # CIFAR images are already 32x32
    config.data.random_flip = False
    config.data.batch_size = 128
    config.train.num_steps = 250_000
    config.train.eval_steps = 10_000
    config.train.ckpt_steps = 5_000
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
