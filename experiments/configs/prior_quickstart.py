r"""Quickstart prior: a class-conditional MaskGIT over the VQGAN quickstart's code maps.

Train the tokenizer first (about 6 minutes), then the prior (a few minutes), on 2 CPU cores:
  python -m experiments.vqgan --config=experiments/configs/vqgan_quickstart.py --workdir=/tmp/vqgan_quickstart
  python -m experiments.transformer --config=experiments/configs/prior_quickstart.py \
    --config.tokenizer_dir=/tmp/vqgan_quickstart --workdir=/tmp/prior_quickstart

The tokenizer maps 32x32 crops to 8x8 codes of 128; the prior (4 layers, width 128) learns them
conditioned on which of the 8 photographs a crop comes from (the embedded dataset's label),
with 10% condition dropout for classifier-free guidance. Writes samples.png (a column per
photograph), inpainting.png and bits per token / per dimension. `:gpt` trains the
autoregressive prior instead (exact likelihood, no inpainting.png); `:smoke` (or `:gpt,smoke`)
shrinks everything to seconds.
"""

from experiments.configs import common


def get_config(arg=None):
    args = common.config_args(arg, ("gpt", "smoke"))
    kind = "gpt" if "gpt" in args else "maskgit"
    config = common.prior_base(kind)
    config.tokenizer_dir = "/tmp/vqgan_quickstart"
    config.data.update(batch_size=64, eval_batch_size=250)
    config.model.update(num_classes=8, num_layers=4, num_heads=4, embed_dim=128, mlp_dim=512)
    config.loss.cond_drop = 0.1
    config.optim.update(learning_rate=1e-3, warmup_steps=100, final_lr_fraction=0.1)
    config.train.update(num_steps=1000, log_steps=50, eval_steps=500, ckpt_steps=500)
    # 8x8 code maps: a dilated hole would leave only the border ring known.
    config.sampling.update(num_samples=32, guidance_scale=2.0, top_k=0, inpaint_dilation=0)
    if "smoke" in args:
        config = common.shrink_prior_for_smoke(config)
    return config
