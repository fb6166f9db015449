r"""Quickstart: a small pixel-space diffusion model (DDPM objective) on 32x32 crops of the
photographs that ship with scikit-image.

No download, minutes on two CPU cores:
  python -m experiments.diffusion --config=experiments/configs/diffusion_quickstart.py --workdir=/tmp/diffusion_quickstart

Writes <workdir>/samples.png (DDIM, 50 steps) and metrics.json with the test bits/dim (an
unbiased estimate; uniform noise would be 8 bits/dim). Measured figures are in README.
Arg `smoke` shrinks everything to seconds.
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
    # v prediction on the cosine schedule (Salimans & Ho 2022; Nichol & Dhariwal 2021): after
    # minutes of training an eps model's x_0 at high noise (eps divided by sqrt(alpha_bar) ~ 0.006)
    # is still off in colour, and its samples came out in saturated hues; v predicts x_0 there.
    config.diffusion.update(schedule="cosine", prediction="v", variance="fixed_small")
    config.optim.update(learning_rate=1e-3, warmup_steps=100, params_ema_decay=0.999)
    config.train.update(num_steps=2000, log_steps=100, eval_steps=1000, ckpt_steps=1000)
    config.evals.update(num_eval_batches=2, bpd_timesteps=16)
    config.sampling.update(num_samples=32, steps=50)
    if "smoke" in common.config_args(arg):
        config = common.shrink_diffusion_for_smoke(config)
    return config
