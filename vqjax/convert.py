"""Import of PyTorch weights into vqjax parameter files.

  python -m vqjax.convert lpips --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.msgpack

`--vgg` is torchvision's VGG16 ImageNet checkpoint, `--lin` the LPIPS v0.1 heads that ship
inside the `lpips` package (`lpips/weights/v0.1/vgg.pth`). Reading `.pth` files needs PyTorch
(the `[test]` extra installs it); the conversion itself is numpy.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from flax import serialization

from vqjax.nets import lpips as lpips_lib

# torchvision vgg16().features indices of the 13 convolutions (ReLUs and pools in between).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch `[out, in, kh, kw]` -> flax `[kh, kw, in, out]`."""
    return np.ascontiguousarray(np.transpose(np.asarray(weight, np.float32), (2, 3, 1, 0)))


def _take(state_dict: dict, key: str, source: str) -> np.ndarray:
    if key not in state_dict:
        raise ValueError(f"{source} has no tensor {key!r}; is it the right file?")
    return np.asarray(state_dict[key], np.float32)


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
            "kernel": conv_kernel(_take(vgg_state, _vgg_key(vgg_state, index, stage, "weight"), "--vgg")),
            "bias": _take(vgg_state, _vgg_key(vgg_state, index, stage, "bias"), "--vgg"),
        }
    params = {"vgg": vgg}
    for level in range(len(lpips_lib.VGG16_STAGES)):
        params[f"lin_{level}"] = {"kernel": conv_kernel(_take(lin_state, f"lin{level}.model.1.weight", "--lin"))}
    return params


def save_params(params: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(params))
    os.replace(tmp, path)


def _load_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise SystemExit("Reading PyTorch .pth files needs PyTorch: pip install torch (CPU is enough).") from None
    if not os.path.isfile(path):
        raise SystemExit(f"{path} is not a file.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vqjax.convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    lp = sub.add_parser("lpips", help="LPIPS (VGG16 + v0.1 heads) -> msgpack for config.loss.lpips_path")
    lp.add_argument("--vgg", required=True, help="torchvision vgg16 ImageNet weights (.pth)")
    lp.add_argument("--lin", required=True, help="lpips v0.1 heads, lpips/weights/v0.1/vgg.pth")
    lp.add_argument("--out", required=True, help="output file")
    args = parser.parse_args(argv)
    if args.kind == "lpips":
        try:
            params = lpips_params_from_torch(_load_torch(args.vgg), _load_torch(args.lin))
        except ValueError as err:
            raise SystemExit(str(err)) from None
        save_params(params, args.out)
        print(f"Wrote LPIPS weights to {args.out}; use --config.loss.lpips_path={args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
