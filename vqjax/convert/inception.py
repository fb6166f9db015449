"""FID InceptionV3 weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.

That file is the state dict of torchvision's Inception3 with pytorch-fid's FID blocks, so its keys
are the flax module paths with dots (`Mixed_5b.branch1x1.conv.weight`) and PyTorch's leaf names.
The mapping is driven by the flax tree, so every variable of the module comes from the file.
"""

from __future__ import annotations

import numpy as np

from vqjax.convert.torch_io import fill_from_torch
from vqjax.nets import inception as inception_lib

# (flax collection, flax leaf) -> PyTorch leaf.
TORCH_LEAF = {
    ("params", "kernel"): "weight",  # Conv2d [out, in, kh, kw] or Linear [out, in]
    ("params", "scale"): "weight",  # BatchNorm2d gamma
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def tensor_name(path: tuple[str, ...]) -> str:
    """(params, Mixed_5b, branch1x1, conv, kernel) -> Mixed_5b.branch1x1.conv.weight."""
    collection, *modules, leaf = path
    return ".".join([*modules, TORCH_LEAF[collection, leaf]])


def inception_variables_from_torch(state_dict: dict[str, np.ndarray]) -> dict:
    """`{"params", "batch_stats"}` of `vqjax.nets.inception.InceptionV3` from pytorch-fid's state dict.

    Raises ValueError naming the tensor when one is missing or has another shape; tensors the
    module does not use (`num_batches_tracked`) are ignored.
    """
    return fill_from_torch(inception_lib.abstract_variables(), state_dict, tensor_name, "--pth",
                           hint="is it pytorch-fid's pt_inception-2015-12-05-6726825d.pth?")
