"""Reading PyTorch checkpoints as numpy, and writing vqjax weight files.

PyTorch is needed only to read `.pth` / `.ckpt` files (the `[interop]` extra installs it);
every conversion itself is numpy.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import types
from typing import Any, Callable, Optional

import jax
import numpy as np
from flax import serialization

from vqjax.core import paths


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

    hint = hint if hint.endswith(("?", ".")) else hint + "."

    def fill(path, want):
        keys = tuple(str(getattr(p, "key", p)) for p in path)
        name, wanted = tensor_name(keys), torch_shape(tuple(want.shape))
        if name not in state:
            raise ValueError(f"{source} has no tensor {name} (vqjax {'/'.join(keys)}, shape {wanted}); {hint}")
        got = tuple(state[name].shape)
        if got != wanted:
            raise ValueError(f"{source}: tensor {name} has shape {got}, expected {wanted}; {hint}")
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
    paths.write_bytes(path, serialization.msgpack_serialize(params))


class _Placeholder:
    """Stands in for every global a checkpoint names outside `_trusted_globals`: Lightning
    callbacks, argparse.Namespace, optimizer classes, and equally `exec`, `os.system` or
    `getattr`. Built, called, filled or given state, it keeps nothing and runs nothing, so a
    malicious payload is dropped while an honest checkpoint still yields its tensors."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        # A placeholder used as a REDUCE callable (getattr(os, "system") -> placeholder) gives
        # another inert object instead of failing the whole load.
        return _Placeholder()

    def __setstate__(self, state):
        pass

    def _drop(self, *contents):
        """What a dict / list / set subclass (Lightning's AttributeDict) is filled with: dropped."""
        del contents

    __setitem__ = append = extend = add = _drop


def _rebuild_tensor_only(func, new_type, args, state):
    """Stands in for torch's `_rebuild_from_type_v2` (a tensor of a subclass, or carrying Python
    attributes): the tensor itself, without the class and attributes the checkpoint names."""
    return func(*args)


@functools.lru_cache(maxsize=1)
def _trusted_globals() -> dict:
    """`{(module, name): object}` for exactly the globals needed to rebuild state-dict tensors:
    torch's tensor rebuild functions (which torch's own weights-only unpickler trusts too, see
    torch/_weights_only_unpickler.py), dtypes, and OrderedDict. No torch class is handed out:
    pickle's NEWOBJ_EX can call a class with keywords, and torch.UntypedStorage(allocator=...)
    takes a raw pointer. numpy, `_codecs` and builtins are left out: no tensor needs them."""
    import torch

    # UntypedStorage names the storage of dtypes without a legacy storage class (uint16,
    # float8, ...); torch.load only reads its byte dtype, which an inert StorageType also has.
    untyped = torch.serialization.StorageType("ByteStorage")
    trusted = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_tensor_only,
        ("torch", "UntypedStorage"): untyped,
        ("torch.storage", "UntypedStorage"): untyped,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state"):
        if hasattr(torch._utils, name):
            trusted[("torch._utils", name)] = getattr(torch._utils, name)
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            trusted[("torch", name)] = value
    # Legacy storage classes (torch.FloatStorage, torch.cuda.HalfStorage, ...) never reach
    # find_class: torch.load's own wrapper turns every name containing "Storage" into an inert
    # StorageType first.
    return trusted


class _SafeUnpickler(pickle.Unpickler):
    # Never calls super().find_class: nothing is imported and no dotted name is walked, so the
    # only callables a checkpoint can reach are the trusted rebuild functions, OrderedDict and
    # _Placeholder, each called with arguments that are themselves data or placeholders.

    def find_class(self, module, name):
        return _trusted_globals().get((module, name), _Placeholder)


def _safe_load(file, **kwargs):
    return _SafeUnpickler(file, **kwargs).load()


# torch.load uses `Unpickler` for the main pickle and `load` for the small pickles around it
# (legacy files start with a magic number, protocol and sys info): both must be the safe one.
_safe_pickle = types.SimpleNamespace(Unpickler=_SafeUnpickler, load=_safe_load, __name__="vqjax_safe_pickle")


def load_torch_state(path: str) -> dict:
    """`{name: float32 array}` of a `.pth` state dict or of a Lightning `.ckpt`'s `state_dict`.

    Loading never runs code from the file. Lightning checkpoints also pickle callbacks and
    hyper-parameters whose classes the weights-only loader refuses; those are read with an
    unpickler that resolves only the globals needed to rebuild tensors and replaces every other
    one (including exec, os.system, getattr) by an inert placeholder.
    """
    try:
        import torch
    except ImportError:
        raise SystemExit("Reading PyTorch checkpoints needs PyTorch: pip install 'vqjax[interop]' "
                         "(or just torch; the CPU build is enough).") from None
    if not paths.is_file(path):
        raise SystemExit(f"{path} is not a file.")
    data = paths.read_bytes(path)
    # torch's weights-only loader first: it reads plain state dicts and refuses TorchScript
    # archives with a RuntimeError, so those never reach the fallback (whose weights_only=False
    # would hand them to torch.jit.load, which runs their code). The fallback is torch.load with
    # our own pickle module rather than weights_only=True plus torch.serialization.safe_globals:
    # that needs every class named in advance (process-wide state), refuses any os / sys global
    # outright and lets only exact dicts and lists take items, so a Lightning checkpoint with a
    # placeholder AttributeDict could not be read at all.
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_safe_pickle)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SystemExit(f"{path} holds a {type(state).__name__}, not a state dict.")
    # detach: a state dict saved with keep_vars=True holds Parameters, which refuse .numpy().
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
