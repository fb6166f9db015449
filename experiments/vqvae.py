r"""Trains a VQ-VAE.

  python -m experiments.vqvae --config=experiments/configs/vqvae_quickstart.py --workdir=/tmp/vq

Any config field can be overridden (`--config.train.num_steps=100`); a misspelt field is an
error. Running again with the same --workdir resumes from its latest checkpoint.
"""

from experiments import launch

if __name__ == "__main__":
    launch.run("vqvae")
