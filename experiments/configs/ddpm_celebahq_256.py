r"""The DDPM CelebA-HQ 256x256 architecture of the google/ddpm-celebahq-256 release (diffusers'
UNet2DModel: ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 res blocks, attention at 16x16, T = 1000
linear betas), for imported weights and fine-tuning:

  python -m vqjax.convert diffusers --pipeline ddpm-celebahq-256 --out /tmp/ddpm_celebahq_256
  python -m experiments.diffusion --config=experiments/configs/ddpm_celebahq_256.py \
    --config.init_from=/tmp/ddpm_celebahq_256 --config.data.source=folder \
    --config.data.path=/data/celebahq --workdir=/tmp/ddpm_celebahq_ft

Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.diffusion_base()
    config.data.source = "folder"
    config.data.image_size = 256
    config.data.crop = "resize"
    config.data.batch_size = 64
    config.data.eval_batch_size = 64
    config.model.update(channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                        attention_resolutions=(16,), dropout=0.0)
    config.optim.update(learning_rate=2e-5, warmup_steps=0)
    if "smoke" in common.config_args(arg):
        config.data.update(source="embedded", image_size=32)
        config = common.shrink_diffusion_for_smoke(config)
    return config
