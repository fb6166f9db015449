r"""taming-transformers' class-conditional ImageNet transformer ("cIN", Esser et al. 2021,
Table 7 / Sec. 4.1) over the 16x16 codes of the f16-16384 VQGAN.

  python -m vqjax.convert taming --ckpt last.ckpt --config model.yaml --out /data/vqgan_f16_16384
  python -m experiments.transformer --config=experiments/configs/gpt_imagenet_cin.py \
    --config.tokenizer_dir=/data/vqgan_f16_16384 --config.data.data_dir=/data/tfds --workdir=DIR

48 layers, width 1536, 24 heads (about 1.4 B parameters), 256 tokens of 16384 codes plus the
class token; no dropout; AdamW (0.9, 0.95), weight decay 0.01 on dense kernels, taming's
learning rate 4.5e-6 x global batch. Sampling as taming's cIN samples: top-k 600, top-p 0.92,
temperature 1.0. Needs accelerators: bf16 compute and a large batch per device.
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.prior_base("gpt")
    config.tokenizer_dir = ""
    config.data.update(source="tfds", name="imagenet2012", train_split="train", eval_split="validation",
                       image_size=256, crop="random", batch_size=256, eval_batch_size=256)
    config.tokens.encode_batch_size = 256
    config.model.update(num_classes=1000, num_layers=48, num_heads=24, embed_dim=1536, mlp_dim=6144,
                        dtype="bfloat16")
    config.optim.update(learning_rate=4.5e-6, scale_lr_by_batch=True, schedule="constant",
                        warmup_steps=0, grad_clip_norm=0.0)
    config.train.update(num_steps=1_000_000, log_steps=100, eval_steps=10_000, ckpt_steps=5_000)
    config.evals.num_eval_batches = 20
    config.sampling.update(num_samples=16, top_k=600, top_p=0.92, temperature=1.0, guidance_scale=1.0)
    if "smoke" in common.config_args(arg):
        config.data.update(source="embedded", name="", image_size=32, crop="random")
        config.model.num_classes = 8
        config.model.dtype = "float32"
        config = common.shrink_prior_for_smoke(config)
    return config
