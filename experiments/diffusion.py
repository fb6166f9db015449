r"""Trains a diffusion model (pixel space, super-resolution, or on a tokenizer's latents).

  python -m experiments.diffusion --config=experiments/configs/diffusion_quickstart.py --workdir=/tmp/diffusion

Any config field can be overridden (`--config.train.num_steps=100`); a misspelt field is an
error. Running again with the same --workdir resumes from its latest checkpoint.
"""

from experiments import launch

if __name__ == "__main__":
    launch.run("diffusion")
