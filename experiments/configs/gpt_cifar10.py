r"""Class-conditional GPT prior over a CIFAR-10 VQGAN's code maps (taming's transformer).

  python -m experiments.transformer --config=experiments/configs/gpt_cifar10.py \
    --config.tokenizer_dir=/tmp/wd_vqgan_cifar --workdir=/tmp/gpt_cifar10

`data.source='tokenizer'` reads the tokenizer's own data (for the folder copy of CIFAR-10 the
tokenizer's config names its path). The VQGAN of vqgan_cifar10.py maps 32x32 images to 8x8
codes of 1024: 64 tokens per image. Taming's recipe (pre-LN GPT, AdamW 0.9/0.95, weight decay
0.01 on dense kernels, no dropout) at a CIFAR size: 8 layers, 8 heads, width 512 (25 M params).
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.prior_base("gpt")
    config.tokenizer_dir = "/tmp/wd_vqgan_cifar"
    config.data.update(batch_size=128, eval_batch_size=500)
    config.model.update(num_classes=10, num_layers=8, num_heads=8, embed_dim=512, mlp_dim=2048)
    config.loss.cond_drop = 0.1
    config.optim.update(learning_rate=3e-4, warmup_steps=1000)
    config.train.update(num_steps=100_000, eval_steps=5_000, ckpt_steps=5_000)
    config.sampling.update(num_samples=40, top_k=100, guidance_scale=1.5)
    if "smoke" in common.config_args(arg):
        config = common.shrink_prior_for_smoke(config)
    return config
