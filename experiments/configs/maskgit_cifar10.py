r"""Class-conditional MaskGIT prior over a CIFAR-10 VQGAN's code maps.

  python -m experiments.transformer --config=experiments/configs/maskgit_cifar10.py \
    --config.tokenizer_dir=/tmp/wd_vqgan_cifar --workdir=/tmp/maskgit_cifar10

MaskGIT's recipe (Adam 0.9/0.96, weight decay 0.045, label smoothing 0.1, dropout 0.1, cosine
masking, warm-up 5000 steps; 8 decoding steps at choice temperature 4.5) at a CIFAR size: 8
layers, 8 heads, width 512 over the 8x8 codes of the VQGAN of vqgan_cifar10.py.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.prior_base("maskgit")
    config.tokenizer_dir = "/tmp/wd_vqgan_cifar"
    config.data.update(batch_size=128, eval_batch_size=500)
    config.model.update(num_classes=10, num_layers=8, num_heads=8, embed_dim=512, mlp_dim=2048)
    config.loss.cond_drop = 0.1
    config.optim.update(learning_rate=2e-4)
    config.train.update(num_steps=100_000, eval_steps=5_000, ckpt_steps=5_000)
    config.sampling.update(num_samples=40, guidance_scale=2.0)
    if "smoke" in common.config_args(arg):
        config = common.shrink_prior_for_smoke(config)
    return config
