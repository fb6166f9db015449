r"""MaskGIT's class-conditional ImageNet 256x256 transformer (Chang et al. 2022; the released
maskgit_class_cond_config) over the 16x16 codes of an f16 VQGAN with 1024 codes.

  python -m experiments.transformer --config=experiments/configs/maskgit_imagenet.py \
    --config.tokenizer_dir=/data/vqgan_f16_1024 --config.data.data_dir=/data/tfds --workdir=DIR

24 layers, 16 heads, width 768, MLP 3072, dropout 0.1 (hidden and attention); label smoothing
0.1; Adam (0.9, 0.96), learning rate 1e-4 with 5000 warm-up steps, weight decay 0.045; batch
256; cosine mask schedule. Decoding: 8 steps (the paper's ImageNet 256 setting; the released
code defaults to 12-16), choice temperature 4.5. Needs accelerators (bf16 compute).
"""

from experiments.configs import common


def get_config(arg=None):
    config = common.prior_base("maskgit")
    config.tokenizer_dir = ""
    config.data.update(source="tfds", name="imagenet2012", train_split="train", eval_split="validation",
                       image_size=256, crop="random", batch_size=256, eval_batch_size=256)
    config.model.update(num_classes=1000, num_layers=24, num_heads=16, embed_dim=768, mlp_dim=3072,
                        dropout=0.1, attn_dropout=0.1, dtype="bfloat16")
    config.loss.update(label_smoothing=0.1, cond_drop=0.0)  # MaskGIT trained no null class
    config.optim.update(learning_rate=1e-4, b1=0.9, b2=0.96, weight_decay=0.045, warmup_steps=5000,
                        schedule="cosine")
    config.train.update(num_steps=2_000_000, log_steps=100, eval_steps=10_000, ckpt_steps=5_000)
    config.evals.num_eval_batches = 20
    config.sampling.update(num_samples=16, num_steps=8, choice_temperature=4.5, guidance_scale=1.0)
    if "smoke" in common.config_args(arg):
        config.data.update(source="embedded", name="", image_size=32, crop="random")
        config.model.num_classes = 8
        config.model.dtype = "float32"
        config = common.shrink_prior_for_smoke(config)
    return config
