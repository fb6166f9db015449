"""LPIPS weights: torchvision's VGG16 and the lpips package's v0.1 linear heads."""

from __future__ import annotations

from vqjax.convert.torch_io import conv_kernel, take
from vqjax.nets import lpips as lpips_lib

# torchvision vgg16().features indices of the 13 convolutions (ReLUs and pools in between).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _vgg_key(vgg_state: dict, index: int, stage: int, leaf: str) -> str:
    """torchvision's `features.{i}.*`, or the `net.slice{s}.{i}.*` of a saved lpips.LPIPS."""
    lpips_key = f"net.slice{stage}.{index}.{leaf}"
    return lpips_key if lpips_key in vgg_state else f"features.{index}.{leaf}"


def lpips_params_from_torch(vgg_state: dict, lin_state: dict) -> dict:
    """LPIPS parameters from a VGG16 state dict (torchvision's, or a whole lpips.LPIPS module's)
    and the lpips v0.1 heads (`lin{l}.model.1.weight`)."""
    vgg = {}
    stages = [s + 1 for s, widths in enumerate(lpips_lib.VGG16_STAGES) for _ in widths]
    for name, index, stage in zip(lpips_lib.conv_names(), VGG16_CONV_INDICES, stages):
        vgg[name] = {
            "kernel": conv_kernel(take(vgg_state, _vgg_key(vgg_state, index, stage, "weight"), "--vgg")),
            "bias": take(vgg_state, _vgg_key(vgg_state, index, stage, "bias"), "--vgg"),
        }
    params = {"vgg": vgg}
    for level in range(len(lpips_lib.VGG16_STAGES)):
        params[f"lin_{level}"] = {"kernel": conv_kernel(take(lin_state, f"lin{level}.model.1.weight", "--lin"))}
    return params
