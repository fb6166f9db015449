"""FID InceptionV3 weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.

That file is the state dict of torchvision's Inception3 with pytorch-fid's FID blocks, so its keys
are the flax module paths with dots (`Mixed_5b.branch1x1.conv.weight`) and PyTorch's leaf names.
The mapping is driven by the flax tree, so every variable of the module comes from the file.
"""

from __future__ import annotations

import jax
import numpy as np

from vqjax.convert.torch_io import conv_kernel, take
from vqjax.nets import inception as inception_lib

# (flax collection, flax leaf) -> PyTorch leaf.
TORCH_LEAF = {
    ("params", "kernel"): "weight",  # Conv2d [out, in, kh, kw] or Linear [out, in]
    ("params", "scale"): "weight",  # BatchNorm2d gamma
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _torch_layout(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a flax kernel shape (identity for vectors)."""
    if len(flax_shape) == 4:  # [kh, kw, in, out] -> [out, in, kh, kw]
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    return tuple(reversed(flax_shape))


def _to_flax(tensor: np.ndarray) -> np.ndarray:
    if tensor.ndim == 4:
        return conv_kernel(tensor)
    return np.ascontiguousarray(tensor.T)  # Linear [out, in] -> Dense [in, out]; vectors unchanged


def inception_variables_from_torch(state_dict: dict[str, np.ndarray]) -> dict:
    """`{"params", "batch_stats"}` of `vqjax.nets.inception.InceptionV3` from pytorch-fid's state dict.

    Raises ValueError naming the tensor when one is missing or has another shape; tensors the
    module does not use (`num_batches_tracked`) are ignored.
    """

    def convert(path, want: jax.ShapeDtypeStruct) -> np.ndarray:
        collection, *modules, leaf = (str(k.key) for k in path)
        key = ".".join([*modules, TORCH_LEAF[collection, leaf]])
        tensor = take(state_dict, key, "--pth")
        expected = _torch_layout(tuple(want.shape))
        if tensor.shape != expected:
            raise ValueError(f"--pth tensor {key!r} has shape {tensor.shape}, expected {expected} for the "
                             "FID InceptionV3; is it pytorch-fid's pt_inception-2015-12-05-6726825d.pth?")
        return _to_flax(tensor)

    return jax.tree_util.tree_map_with_path(convert, inception_lib.abstract_variables())
