"""Reading PyTorch checkpoints as numpy, and writing vqjax weight files.

PyTorch is needed only to read `.pth` / `.ckpt` files (the `[interop]` extra installs it);
every conversion itself is numpy.
"""

from __future__ import annotations

import os
import pickle
import types
from typing import Any, Callable, Optional

import jax
import numpy as np
from flax import serialization


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch `[out, in, kh, kw]` -> flax `[kh, kw, in, out]`."""
    return np.ascontiguousarray(np.transpose(np.asarray(weight, np.float32), (2, 3, 1, 0)))


def torch_shape(flax_shape: tuple) -> tuple:
    """The PyTorch shape of a flax array: conv kernels HWIO -> OIHW, dense kernels transposed."""
    if len(flax_shape) == 4:
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    return tuple(reversed(flax_shape))


def to_flax(tensor: np.ndarray) -> np.ndarray:
    """A PyTorch tensor in the layout of the flax array it becomes (inverse of `torch_shape`)."""
    tensor = np.asarray(tensor, np.float32)
    return conv_kernel(tensor) if tensor.ndim == 4 else np.ascontiguousarray(tensor.T)


def fill_from_torch(expected: Any, state: dict, tensor_name: Callable, source: str, hint: str,
                    used: Optional[set] = None) -> Any:
    """A tree shaped like `expected` (ShapeDtypeStructs) filled from the state dict `state`: each
    array's tensor is `state[tensor_name(path)]`, shape-checked and recorded in `used`, so no array
    is left at random init. A missing tensor or another shape is a ValueError naming the tensor,
    both shapes and `hint` (what is probably wrong)."""

    def fill(path, want):
        keys = tuple(str(getattr(p, "key", p)) for p in path)
        name, wanted = tensor_name(keys), torch_shape(tuple(want.shape))
        if name not in state:
            raise ValueError(f"{source} has no tensor {name} (vqjax {'/'.join(keys)}, shape {wanted}); {hint}.")
        got = tuple(state[name].shape)
        if got != wanted:
            raise ValueError(f"{source}: tensor {name} has shape {got}, expected {wanted}; {hint}.")
        if used is not None:
            used.add(name)
        return to_flax(state[name])

    return jax.tree_util.tree_map_with_path(fill, expected)


def take(state_dict: dict, key: str, source: str) -> np.ndarray:
    if key not in state_dict:
        raise ValueError(f"{source} has no tensor {key!r}; is it the right file?")
    return np.asarray(state_dict[key], np.float32)


def save_params(params: dict, path: str) -> None:
    """A msgpack of a params tree, written atomically (a kill never leaves half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(params))
    os.replace(tmp, path)


class _Placeholder:
    """Stands in for a pickled object whose class is not importable (Lightning callbacks,
    loggers, optimizer classes of another library): it accepts and drops whatever state it gets."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _TolerantUnpickler(pickle.Unpickler):
    # Tensors, containers and numbers resolve as usual; any other class becomes a placeholder
    # instead of importing (or running) code from the checkpoint's training environment.
    _KNOWN = ("torch", "collections", "numpy", "builtins", "_codecs")

    def find_class(self, module, name):
        if module.split(".")[0] in self._KNOWN:
            return super().find_class(module, name)
        return _Placeholder


_tolerant_pickle = types.SimpleNamespace(Unpickler=_TolerantUnpickler, load=pickle.load,
                                         __name__="vqjax_tolerant_pickle")


def load_torch_state(path: str) -> dict:
    """`{name: float32 array}` of a `.pth` state dict or of a Lightning `.ckpt`'s `state_dict`.

    Lightning checkpoints also pickle callbacks and hyper-parameters whose classes the
    weights-only loader refuses; those are read with a loader that replaces every class
    outside torch / numpy / the standard containers by an inert placeholder.
    """
    try:
        import torch
    except ImportError:
        raise SystemExit("Reading PyTorch checkpoints needs PyTorch: pip install 'vqjax[interop]' "
                         "(or just torch; the CPU build is enough).") from None
    if not os.path.isfile(path):
        raise SystemExit(f"{path} is not a file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SystemExit(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
