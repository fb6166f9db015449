r"""Trains a prior (GPT or MaskGIT transformer) over the code maps of a trained tokenizer.

  python -m experiments.transformer --config=experiments/configs/prior_quickstart.py \
    --workdir=/tmp/prior_quickstart --config.tokenizer_dir=/tmp/vqgan_quickstart

The tokenizer is a vqjax training workdir or a directory written by `python -m vqjax.convert
taming`. Writes metrics.json (bits per token, bits per dim), samples.png and, for MaskGIT,
inpainting.png. Running again with the same --workdir resumes from its latest checkpoint.
"""

from experiments import launch

if __name__ == "__main__":
    launch.run("prior")
