"""Reading a PyTorch checkpoint never runs code from it.

Every malicious file below carries a payload that writes a marker file if any unpickler ever
calls it; each one also holds a real tensor, which must still come back unchanged. The payloads
reach code only through globals the old loader trusted (builtins, numpy), so these tests fail
against a loader that resolves whole modules and pass only with an explicit allow-list.
"""

import argparse
import builtins
import collections
import io
import pickle
import shlex
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vqjax.convert import torch_io  # noqa: E402
from vqjax.convert.torch_io import load_torch_state  # noqa: E402


# --- payloads: each __reduce__ names a global that runs code when the unpickler calls it ---

class _Exec:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('x')",)


class _Eval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.eval, (f"open({self.marker!r}, 'w').write('x')",)


class _ImportOs:
    def __reduce__(self):
        return builtins.__import__, ("os",)


class _GetSystem:
    # Pickling a REDUCE needs a callable on the saving side; on load it is getattr(os, "system").
    def __call__(self, *args):
        raise AssertionError("never called while saving")

    def __reduce__(self):
        return builtins.getattr, (_ImportOs(), "system")


class _System:
    """os.system reached through builtins.__import__ and builtins.getattr."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _GetSystem(), (f"touch {shlex.quote(self.marker)}",)


class _NumpyRunstring:
    """numpy.testing's runstring is an exec in disguise: a whole-module numpy allowance runs it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from numpy.testing._private.utils import runstring
        return runstring, (f"open({self.marker!r}, 'w').write('x')", {})


PAYLOADS = {"exec": _Exec, "eval": _Eval, "os.system": _System, "numpy": _NumpyRunstring}
# The attacker picks the pickle protocol: below 3, Python spells builtins "__builtin__", from 3 on
# "builtins", the spelling a loader that trusts the builtins module resolves.
ATTACK_PROTOCOL = 4


# --- a training environment that does not exist when the checkpoint is read ---

def _fake_lightning_module():
    """A module with Lightning-like classes, registered only while saving."""
    module = types.ModuleType("fake_lightning_for_tests")

    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.best_model_path = "val/rec_loss", "/ckpt/best.ckpt"
            self.best_model_score = torch.tensor(0.25)

    class AttributeDict(dict):  # pickled as NEWOBJ + SETITEMS
        pass

    class CallbackList(list):  # pickled as NEWOBJ + APPENDS
        pass

    for cls in (ModelCheckpoint, AttributeDict, CallbackList):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    return module


def _save_with_missing_module(obj_builder, path, **save_kwargs):
    """torch.save of obj_builder(module) while the fake module is importable; it is gone after."""
    module = _fake_lightning_module()
    sys.modules[module.__name__] = module
    try:
        torch.save(obj_builder(module), path, **save_kwargs)
    finally:
        del sys.modules[module.__name__]


def _state_dict(untyped=True):
    """Tensors as a VQGAN state dict holds them; `untyped` adds a uint16 tensor, whose storage is
    pickled as an UntypedStorage (torch reads that only from zip-format files)."""
    g = torch.Generator().manual_seed(0)
    with_attribute = torch.randn(3, generator=g)
    with_attribute.note = "pickled through _rebuild_from_type_v2"
    state_dict = collections.OrderedDict([
        ("encoder.conv_in.weight", torch.randn(4, 3, 3, 3, generator=g)),
        ("encoder.conv_in.bias", torch.randn(4, generator=g)),
        ("quantize.embedding.weight", torch.randn(8, 4, generator=g).half()),
        ("decoder.norm_out.weight", with_attribute),
        ("loss.discriminator.num_batches_tracked", torch.tensor(7)),
    ])
    if untyped:
        state_dict["quantize.usage"] = torch.tensor([0, 1, 2, 3, 500, 65535], dtype=torch.uint16)
    return state_dict


def _lightning_checkpoint(module, state_dict, extra=None):
    hparams = argparse.Namespace(embed_dim=4, n_embed=8, ddconfig={"ch": 4})
    checkpoint = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": state_dict,
        "callbacks": {module.ModelCheckpoint: module.ModelCheckpoint()},
        "hyper_parameters": hparams,
        "hparams": module.AttributeDict(lr=4.5e-6, batch_size=12),
        "loops": module.CallbackList([module.ModelCheckpoint()]),
        "optimizer_states": [
            {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(4)}},
             "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}]},
        ],
        "lr_schedulers": [],
    }
    checkpoint.update(extra or {})
    return checkpoint


def _load_without_running(path, marker, payload):
    """load_torch_state(path), checking the marker even when loading fails: code run by a load
    that then raises has still run."""
    try:
        return load_torch_state(str(path))
    finally:
        assert not marker.exists(), f"loading the {payload} payload ran code"


def _assert_same_tensors(loaded, state_dict):
    assert set(loaded) == set(state_dict)
    for name, tensor in state_dict.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], tensor.detach().float().numpy())


# --- malicious checkpoints ---

@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_malicious_state_dict_runs_nothing(tmp_path, payload, zipfile_format):
    # A plain .pth: the payload sits beside the tensors, so weights_only fails and the
    # fallback reads the whole dict.
    marker = tmp_path / "pwned"
    state_dict = _state_dict(untyped=zipfile_format)
    path = tmp_path / "model.pth"
    torch.save({**state_dict, "evil": PAYLOADS[payload](marker)}, path, pickle_protocol=ATTACK_PROTOCOL,
               _use_new_zipfile_serialization=zipfile_format)

    _assert_same_tensors(_load_without_running(path, marker, payload), state_dict)


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_malicious_lightning_checkpoint_runs_nothing(tmp_path, payload):
    # A Lightning .ckpt: classes of a missing module send it to the fallback, where the payload
    # hides among the hyper-parameters, inside a callback and in the state dict itself.
    marker = tmp_path / "pwned"
    state_dict = _state_dict()
    path = tmp_path / "last.ckpt"

    def build(module):
        poisoned = collections.OrderedDict(state_dict)
        poisoned["evil"] = PAYLOADS[payload](marker)
        callback = module.ModelCheckpoint()
        callback.dirpath = PAYLOADS[payload](marker)
        return _lightning_checkpoint(module, poisoned, {
            "hyper_parameters": argparse.Namespace(cmd=PAYLOADS[payload](marker)),
            "callbacks": {"ModelCheckpoint": callback},
        })

    _save_with_missing_module(build, path, pickle_protocol=ATTACK_PROTOCOL)
    _assert_same_tensors(_load_without_running(path, marker, payload), state_dict)


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_malicious_legacy_header_runs_nothing(tmp_path, payload):
    # The legacy (non-zip) format starts with small pickles (magic number, protocol, sys info)
    # that torch reads with the fallback's own `load`: it must be just as strict.
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(_state_dict(untyped=False), buffer, _use_new_zipfile_serialization=False)
    path = tmp_path / "model.pth"
    path.write_bytes(pickle.dumps(PAYLOADS[payload](marker), protocol=ATTACK_PROTOCOL) + buffer.getvalue())

    with pytest.raises(RuntimeError, match="magic number"):  # a placeholder is no magic number
        _load_without_running(path, marker, payload)


def test_torchscript_archive_is_never_loaded_as_a_program(tmp_path, monkeypatch):
    # torch.load(weights_only=False) hands TorchScript archives to torch.jit.load, which runs
    # their code; the weights-only first attempt must stop such a file before the fallback.
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called on an untrusted file")

    monkeypatch.setattr(torch.jit, "load", refuse)
    with pytest.raises(RuntimeError, match="TorchScript"):
        load_torch_state(str(path))


# --- honest checkpoints still load ---

def test_lightning_checkpoint_yields_its_state_dict(tmp_path):
    state_dict = _state_dict()
    path = tmp_path / "last.ckpt"
    _save_with_missing_module(lambda module: _lightning_checkpoint(module, state_dict), path)

    with pytest.raises(pickle.UnpicklingError):  # so load_torch_state takes the fallback
        torch.load(path, map_location="cpu", weights_only=True)
    _assert_same_tensors(load_torch_state(str(path)), state_dict)


def test_plain_state_dict_loads_with_weights_only(tmp_path, monkeypatch):
    # A clean .pth never reaches the fallback unpickler.
    def refuse(self, module, name):
        raise AssertionError(f"fallback unpickler used for {module}.{name}")

    monkeypatch.setattr(torch_io._SafeUnpickler, "find_class", refuse)
    state_dict = _state_dict()
    state_dict["param"] = torch.nn.Parameter(torch.arange(3.0))
    path = tmp_path / "model.pth"
    torch.save(state_dict, path)

    _assert_same_tensors(load_torch_state(str(path)), state_dict)


# --- the fallback unpickler itself ---

@pytest.mark.parametrize("module,name", [
    ("builtins", "exec"), ("builtins", "eval"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("builtins", "compile"), ("os", "system"), ("posix", "system"),
    ("subprocess", "Popen"), ("torch", "load"), ("torch.serialization", "load"),
    ("torch", "_utils._rebuild_tensor_v2.__globals__"), ("numpy.testing._private.utils", "runstring"),
    ("_codecs", "lookup"), ("argparse", "Namespace"), ("not_a_module", "Anything"),
    # Real torch classes: NEWOBJ_EX could call them with keywords such as allocator=<pointer>.
    ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"), ("torch", "Size"), ("torch", "device"),
])
def test_untrusted_globals_become_placeholders(module, name):
    unpickler = torch_io._SafeUnpickler(io.BytesIO(b""))
    assert unpickler.find_class(module, name) is torch_io._Placeholder


@pytest.mark.parametrize("module,name", [
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch.storage", "UntypedStorage"), ("torch", "float16"),
])
def test_tensor_rebuilding_globals_are_real(module, name):
    unpickler = torch_io._SafeUnpickler(io.BytesIO(b""))
    assert unpickler.find_class(module, name) is not torch_io._Placeholder


def test_no_torch_class_is_trusted():
    classes = [value for value in torch_io._trusted_globals().values() if isinstance(value, type)]
    assert classes == [collections.OrderedDict]


def test_placeholder_keeps_and_runs_nothing():
    built = torch_io._Placeholder("rm -rf /", shell=True)
    built.__setstate__({"a": 1})
    built["key"] = "value"
    built.append(1)
    built.extend([2])
    built.add(3)
    called = built("touch /tmp/x")
    assert isinstance(called, torch_io._Placeholder)
    assert vars(built) == {} and vars(called) == {}
