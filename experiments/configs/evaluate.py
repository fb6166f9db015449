r"""Evaluates a tokenizer (a vqjax training workdir or a converted model directory) or a prior.

  python -m experiments.evaluate --config=experiments/configs/evaluate.py \
    --config.model_dir=/tmp/vqgan_quickstart

writes `<out>/eval.json` (default out: `<model_dir>/eval`) and prints a table: reconstruction
MSE, PSNR, SSIM, LPIPS (with `evals.lpips_path`), rFID (with `evals.inception_path`), codebook
usage and perplexity, bits per pixel of the code maps. Metrics without weights are skipped
with a reason. `data.source='model'` (default) evaluates on the data the model's config names
(its eval split); any other source uses this `data` section as training configs do, e.g.
`--config.data.source=folder --config.data.path=/tmp/cifar/cifar10 --config.data.image_size=32`.

A prior's workdir (python -m experiments.transformer) gets bits per token and per dimension on
its eval split and, with `evals.inception_path`, FID / IS / KID of `evals.num_fid_samples`
samples against as many eval images.
"""

import ml_collections

from experiments.configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
    config = common.evaluation_base()
    if "smoke" in common.config_args(arg):
        config.data.eval_batch_size = 8
        config.evals.num_eval_batches = 2
        config.evals.num_fid_samples = 16
    return config
