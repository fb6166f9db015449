r"""Latent diffusion (Rombach et al. 2022) on the latents of a CIFAR-10 VQ tokenizer: the U-Net
models the encoder's outputs before quantisation (8x8x64 for vqgan_cifar10's f = 4), scaled to
unit variance; samples are quantised to their nearest codes and decoded by the tokenizer.

Train the tokenizer first (experiments/configs/vqgan_cifar10.py), then:
  python -m experiments.diffusion --config=experiments/configs/ldm_vq_cifar10.py \
    --config.tokenizer_dir=/tmp/vqgan_cifar10 --workdir=/tmp/ldm_vq_cifar10
The latents of both splits are encoded once into <workdir>/latents/. LDM's "linear" schedule
(linear in sqrt(beta), 0.0015 .. 0.0195), v prediction (LDM: eps), no clipping (latents are not
in [-1, 1]). Arg `smoke` shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.diffusion_base()
    config.data.source = "tokenizer"  # the tokenizer's data, this config's batch sizes
    config.data.batch_size = 128
    config.model.update(channels=128, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(4, 2),
                        head_channels=32, dropout=0.0)
    # v prediction where LDM predicted eps: unclipped latents leave nothing to stop an eps model's
    # x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab), 15x its error at T, from running away. 2000 steps
    # at batch 64 (2026-12-03): eps samples ended at 30x the latents' standard deviation
    # (16.5 vs 0.54), v samples at 0.63 and decode to scene-like layouts (README).
    config.diffusion.update(schedule="sqrt_linear", beta_start=0.0015, beta_end=0.0195, clip_x0=False,
                            variance="fixed_small", prediction="v")
    config.optim.update(learning_rate=1e-4, warmup_steps=1000)
    config.train.update(num_steps=200_000, eval_steps=10_000, ckpt_steps=10_000)
    config.evals.num_eval_batches = 4
    if "smoke" in common.config_args(arg):
        config = common.shrink_diffusion_for_smoke(config)
        config.latents.update(encode_batch_size=64, max_train_images=256, max_eval_images=32)
    return config
