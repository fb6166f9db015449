"""Helpers shared by the benchmark scripts (importable because `python bench/x.py` puts
bench/ on the path)."""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable

import jax


def median_seconds(call: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `call()` (its result waited for) after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def xla_memory_mb(compiled) -> float:
    """MiB XLA reserves for one call of a compiled function: arguments, outputs and the largest
    set of live temporaries, less donated (aliased) buffers; NaN where the backend does not say."""
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes
            + stats.temp_size_in_bytes - stats.alias_size_in_bytes) / 2**20


def write_json(path: str, report: dict) -> None:
    """A benchmark's figures as JSON (the --json flag)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")
