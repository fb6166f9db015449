r"""VQGAN on CIFAR-10 at f = 4 (32x32 images -> 8x8 codes, 1024 codes of dimension 64).

taming's autoencoder at CIFAR size (ch 64, ch_mult (1, 2, 2), two res blocks, attention at
8x8), a two-layer PatchGAN, L1 + LPIPS reconstruction, hinge loss with taming's adaptive weight,
Adam (0.5, 0.9) for both networks. The EMA codebook with dead-code restarts keeps all codes in
use (taming's learned codebook: --config.quantizer.kind=vq --config.quantizer.dead_code_threshold=0).

The perceptual loss needs LPIPS weights (`python -m vqjax.convert lpips ... --out lpips.msgpack`):
  python -m experiments.vqgan --config=experiments/configs/vqgan_cifar10.py \
    --config.data.source=folder --config.data.path=/tmp/cifar10 \
    --config.loss.lpips_path=/tmp/lpips.msgpack --workdir=/tmp/vqgan_cifar10
or, without them, add --config.loss.perceptual_weight=0. From TFDS: drop the two data flags
(after `tfds build cifar10`).

Measured (README, 2 CPU cores): --config.loss.perceptual_weight=0 --config.loss.disc_start=100
--config.data.batch_size=32 --config.train.num_steps=400 trains without NaNs, the
discriminator active from step 100 on: 17.2 dB test PSNR, 999 of 1024 codes used. Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.vqgan_base()
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.train.cpu_convolutions = "xla"  # 1.7x the step's speed (README, Performance)
    config.data.crop = "center"  # CIFAR images are already 32x32
    config.data.random_flip = True
    config.data.batch_size = 128
    config.model.update(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,),
                        z_channels=64, embed_dim=64, resolution=32)
    config.quantizer.kind = "ema"
    config.quantizer.num_codes = 1024
    config.disc.update(ndf=64, n_layers=2)
    config.loss.update(perceptual_weight=1.0, disc_start=10_000, gen_adv_delay=0)
    config.optim.update(learning_rate=2e-4, scale_lr_by_batch=False)
    config.optim_d.update(learning_rate=2e-4, scale_lr_by_batch=False)
    config.train.update(num_steps=200_000, eval_steps=10_000, ckpt_steps=5_000)
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
