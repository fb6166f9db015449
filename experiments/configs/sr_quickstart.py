r"""Quickstart: 8x8 -> 32x32 super-resolution (SR3: the U-Net sees the bicubic upsampling of the
low-resolution image beside x_t; as in SRDiff it denoises the residual image - upsampling, scaled
to about unit variance) on crops of the photographs that ship with scikit-image.

No download, minutes on two CPU cores:
  python -m experiments.diffusion --config=experiments/configs/sr_quickstart.py --workdir=/tmp/sr_quickstart

Writes <workdir>/superres.png (rows: the 8x8 input, the model's 32x32 output, the original) and
metrics.json with PSNR / SSIM of upsampled test images beside bicubic upsampling's, and the
test bits/dim. Measured figures are in README. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common, diffusion_quickstart


def get_config(arg=None):
    args = common.config_args(arg)
    config = diffusion_quickstart.get_config()  # the same U-Net, schedule and optimizer
    config.diffusion.low_res_size = 8
    # The residual's standard deviation is 0.117 on these crops (np.std(images - vqjax.inference.
    # diffusion.low_res_condition(images, 8)[1]) over the first 16 training batches, 256 crops;
    # 0.110-0.127 over groups of 64): 8 makes it about unit variance, the schedule's scale.
    config.diffusion.residual_scale = 8.0
    config.train.update(num_steps=1000, eval_steps=500, ckpt_steps=500)
    config.evals.update(bpd_timesteps=4, num_sr_images=64)
    config.sampling.num_samples = 8
    if "smoke" in args:
        config = common.shrink_diffusion_for_smoke(config)
    return config
