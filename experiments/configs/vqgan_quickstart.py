r"""Quickstart: a small VQGAN on 32x32 crops of the photographs that ship with scikit-image.

No download, a few minutes on two CPU cores:
  python -m experiments.vqgan --config=experiments/configs/vqgan_quickstart.py --workdir=/tmp/vqgan_quickstart

taming's architecture at a small size (f = 4: 32x32 images -> 8x8 codes, 128 codes), L1
reconstruction, EMA codebook with dead-code restarts, a PatchGAN discriminator that starts
learning at step 200 and reaches the generator (through taming's adaptive weight) from step
300 of 600. No perceptual loss: the LPIPS weights are not shipped (see vqgan_cifar10.py to add them).
Measured (README): 20.0 dB test PSNR (20.0 to 21.6 over seeds 0-3) with 128 of 128 codes used,
about 6 minutes on 2 CPU cores; the VQ-VAE quickstart reaches a higher PSNR in less time, the point here is the adversarial
machinery at work. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.vqgan_base()
    config.data.source = "embedded"
    config.data.image_size = 32
    config.train.cpu_convolutions = "xla"  # 115 vs 80 images/s (bench/train_step.py)
    config.data.crop = "random"
    config.data.batch_size = 32
    config.data.eval_batch_size = 250
    config.model.update(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(),
                        z_channels=32, embed_dim=32, resolution=32)
    config.quantizer.kind = "ema"
    config.quantizer.num_codes = 128
    config.disc.update(ndf=32, n_layers=2)
    config.loss.update(perceptual_weight=0.0, disc_start=200, gen_adv_delay=100)
    config.optim.update(learning_rate=1e-3, scale_lr_by_batch=False)
    config.optim_d.update(learning_rate=2e-4, scale_lr_by_batch=False)
    config.train.update(num_steps=600, log_steps=50, eval_steps=300, ckpt_steps=300)
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
