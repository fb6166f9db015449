r"""Trains a VQGAN (taming-transformers' autoencoder, PatchGAN discriminator, LPIPS).

  python -m experiments.vqgan --config=experiments/configs/vqgan_quickstart.py --workdir=/tmp/vqgan

Any config field can be overridden (`--config.loss.disc_start=100`); a misspelt field is an
error. Running again with the same --workdir resumes from its latest checkpoint.
"""

from experiments import launch

if __name__ == "__main__":
    launch.run("vqgan")
