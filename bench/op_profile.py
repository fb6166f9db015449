"""Where a train step's time goes, by kind of work, for a compiled XLA step and for PyTorch.

XLA: the step runs under `jax.profiler.trace`; every executed HLO operation (a "thunk": a
fusion, a convolution, a copy) is a timed event named after its instruction, and the
instruction's metadata says which JAX operation and which flax module it came from
(`jvp(VQAutoencoder.decode)/decoder/up_0_block_1/norm1/...`; `transpose(...)` for the
backward pass). PyTorch: `torch.profiler`, each ATen operator's own (self) time.

Both are sorted into the same kinds so that the tables can be read side by side. The split is
by what an operation computes, as far as its name tells: XLA fuses element-wise work into
convolutions (a bias, a residual, swish's derivative), and that time counts as convolution.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
from typing import Any, Callable

import jax

# GroupNorm and swish are one kind: vqjax computes them as one layer (blocks.GroupNorm).
KINDS = ("convolution, forward", "convolution, backward", "layout copies", "GroupNorm + swish",
         "matmul", "other")
# The network an operation belongs to, from the flax module names in its metadata.
PARTS = ("autoencoder", "LPIPS", "discriminator", "other (quantizer, losses, optimizers)")
_PART_PATTERNS = (("LPIPS", r"\bLPIPS\b"), ("discriminator", r"NLayerDiscriminator"),
                  ("autoencoder", r"VQAutoencoder|VQVAE\b"))

# One HLO instruction: `%name = <shape> opcode(operands), ..., calls=%computation, metadata=...`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\(.*$", re.M)
_COMPUTATION = re.compile(r"^%([\w.\-]+) .*?\{\n(.*?)\n\}", re.M | re.S)


def _hlo_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (kind, part), for every instruction of a compiled module."""
    bodies = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo_text)}
    kinds = {}
    for m in _INSTRUCTION.finditer(hlo_text):
        line, opcode = m.group(0), m.group(2)
        called = re.search(r"calls=%([\w.\-]+)", line)
        body = bodies.get(called.group(1), "") if called else ""
        # A fusion may carry no metadata of its own: its fused instructions do.
        op_name = re.search(r'op_name="([^"]*)"', line) or re.search(r'op_name="([^"]*)"', body)
        op_name = op_name.group(1) if op_name else ""
        kinds[m.group(1)] = (_kind(opcode, body, op_name), _part(op_name))
    return kinds


def _part(op_name: str) -> str:
    return next((part for part, pattern in _PART_PATTERNS if re.search(pattern, op_name)), PARTS[-1])


def _kind(opcode: str, body: str, op_name: str) -> str:
    if opcode == "convolution" or " convolution(" in body:
        # Forward convolutions carry their layer's jvp(...) name; the two gradients are under
        # transpose(...), or unnamed where XLA rewrote a weight gradient into another layout.
        forward = "jvp(" in op_name and "transpose(" not in op_name
        return "convolution, forward" if forward else "convolution, backward"
    if opcode in ("copy", "transpose") or "transpose_copy" in body or " transpose(" in body:
        return "layout copies"
    if opcode == "dot" or " dot(" in body:
        return "matmul"
    modules = op_name.split("/")
    if any(re.fullmatch(r"norm\w*", module) or module == "jit(silu)" for module in modules):
        return "GroupNorm + swish"
    return "other"


def xla_profile(compiled, step: Callable[[Any], Any], state: Any, num_steps: int) -> dict[str, dict[str, float]]:
    """Milliseconds per step `{"by_kind": {kind: ms}, "by_part": {part: ms}}`, `num_steps` calls
    of `state = step(state)` traced. `step` may donate its argument: `state` is not usable
    afterwards."""
    kinds = _hlo_kinds(compiled.as_text())
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            for _ in range(num_steps):
                state = jax.block_until_ready(step(state))
        (path,) = glob.glob(f"{logdir}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_kind = collections.Counter({kind: 0.0 for kind in KINDS})
    by_part = collections.Counter({part: 0.0 for part in PARTS})
    for event in events:
        if event.get("ph") == "X" and event.get("name") in kinds:
            kind, part = kinds[event["name"]]
            by_kind[kind] += event["dur"] / 1e3 / num_steps
            by_part[part] += event["dur"] / 1e3 / num_steps
    return {"by_kind": dict(by_kind), "by_part": dict(by_part)}


def _torch_kind(name: str) -> str:
    name = name.lower()
    if "conv" in name:
        return "convolution, backward" if "backward" in name else "convolution, forward"
    if "group_norm" in name or "sigmoid" in name:
        return "GroupNorm + swish"  # taming's swish is x * sigmoid(x); its `mul` counts as other
    if name.split("::")[-1] in ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear"):
        return "matmul"
    if name.split("::")[-1] in ("copy_", "contiguous", "clone", "permute", "transpose", "t"):
        return "layout copies"
    return "other"


def torch_profile(step: Callable[[Any], Any], num_steps: int) -> dict[str, dict[str, float]]:
    """Milliseconds per step of each kind, `{"by_kind": {kind: ms}}`: the self time of every
    ATen operator."""
    import torch  # pylint: disable=import-outside-toplevel

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(num_steps):
            step(None)
    totals = collections.Counter({kind: 0.0 for kind in KINDS})
    for event in prof.key_averages():
        totals[_torch_kind(event.key)] += event.self_cpu_time_total / 1e3 / num_steps
    return {"by_kind": dict(totals)}


def print_table(columns: dict[str, dict[str, float]], rows: tuple[str, ...] = KINDS) -> None:
    """One row per kind (or part), one column per implementation, ms per step and share of
    the total."""
    names = list(columns)
    print(f"  {'ms per step':38s}" + "".join(f"{name:>20s}" for name in names))
    for kind in rows + ("total",):
        cells = []
        for name in names:
            total = sum(columns[name].values())
            value = total if kind == "total" else columns[name].get(kind, 0.0)
            cells.append(f"{value:12.0f} ({value / total:4.0%})" if total else f"{'-':>20s}")
        print(f"  {kind:38s}" + "".join(f"{cell:>20s}" for cell in cells))
