"""Import of PyTorch weights into vqjax: taming-transformers / latent-diffusion VQGANs, LPIPS
and the FID InceptionV3 of pytorch-fid.

  python -m vqjax.convert taming --ckpt last.ckpt --config model.yaml --out DIR
  python -m vqjax.convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips.msgpack
  python -m vqjax.convert inception --pth pt_inception-2015-12-05-6726825d.pth --out inception.msgpack

Reading PyTorch files needs torch (`pip install 'vqjax[interop]'`); the conversions are numpy.
"""

from vqjax.convert.cli import main
from vqjax.convert.lpips import lpips_params_from_torch
from vqjax.convert.torch_io import conv_kernel, load_torch_state, save_params

__all__ = ["main", "lpips_params_from_torch", "conv_kernel", "load_torch_state", "save_params"]
