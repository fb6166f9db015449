r"""DDPM on CIFAR-10 with the paper's settings (Ho et al. 2020, appendix B).

U-Net ch 128, ch_mult (1, 2, 2, 2), 2 res blocks per level, attention at 16x16, dropout 0.1
(35.7 M parameters); T = 1000 linear betas 1e-4 .. 0.02, eps prediction, L_simple; Adam 2e-4
with 5000 warm-up steps, gradient clipping at 1, batch 128, weight average 0.9999, random
flips, 800k steps. The paper reports FID 3.17, IS 9.46 and NLL <= 3.75 bits/dim (3.70 train).

From a folder with train/<class>/*.jpg and test/<class>/*.jpg (or TFDS cifar10):
  python -m experiments.diffusion --config=experiments/configs/ddpm_cifar10.py \
    --config.data.source=folder --config.data.path=/tmp/cifar10 --workdir=/tmp/ddpm_cifar10
FID / IS / KID of samples: add --config.evals.inception_path=inception.msgpack
(python -m vqjax.convert inception). Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.diffusion_base()
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.crop = "center"  # CIFAR images are already 32x32
    config.data.random_flip = True
    if "smoke" in common.config_args(arg):
        config = common.shrink_diffusion_for_smoke(config)
    return config
