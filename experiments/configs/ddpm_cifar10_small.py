r"""DDPM on CIFAR-10 at a CPU budget: the paper's objective, schedule and optimizer with a U-Net of
ch 64, ch_mult (1, 2, 2), one res block per level, attention at 8x8 (4.4 M parameters),
batch 64.

  python -m experiments.diffusion --config=experiments/configs/ddpm_cifar10_small.py \
    --config.data.source=folder --config.data.path=/tmp/cifar10 --workdir=/tmp/ddpm_cifar10_small

Measured figures are in README. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.diffusion_base()
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.crop = "center"
    config.data.batch_size = 64
    config.model.update(channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,))
    config.optim.update(warmup_steps=1000, params_ema_decay=0.999)
    config.train.update(num_steps=50_000, eval_steps=5_000, ckpt_steps=5_000)
    config.evals.num_eval_batches = 4
    if "smoke" in common.config_args(arg):
        config = common.shrink_diffusion_for_smoke(config)
    return config
