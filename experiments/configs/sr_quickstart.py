r"""Quickstart: 8x8 -> 32x32 super-resolution (SR3: the U-Net sees the bicubic upsampling of the
low-resolution image beside x_t) on crops of the photographs that ship with scikit-image.

No download, minutes on two CPU cores:
  python -m experiments.diffusion --config=experiments/configs/sr_quickstart.py --workdir=/tmp/sr_quickstart

Writes <workdir>/superres.png (rows: the 8x8 input, the model's 32x32 output, the original) and
metrics.json with PSNR / SSIM of upsampled test images beside bicubic upsampling's, and the
test bits/dim. Measured figures are in README. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.diffusion_base()
    config.data.source = "embedded"
    config.data.image_size = 32
    config.data.batch_size = 16
    config.data.eval_batch_size = 250
    config.model.update(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                        dropout=0.0)
    config.diffusion.update(low_res_size=8, schedule="cosine", prediction="v", variance="fixed_small")
    config.optim.update(learning_rate=1e-3, warmup_steps=100, params_ema_decay=0.999)
    config.train.update(num_steps=1000, log_steps=100, eval_steps=500, ckpt_steps=500)
    config.evals.update(num_eval_batches=2, num_sr_images=64)
    config.sampling.update(num_samples=8, steps=50)
    if "smoke" in common.config_args(arg):
        config = common.shrink_diffusion_for_smoke(config)
    return config
