"""The quantizer at large codebooks: vqjax against haiku's `VectorQuantizerEMA` and the roofline.

For N vectors of dimension D and each codebook size K, in one process on the same device:

  * roofline: the distance matmul alone, `z @ codebook.T` ([N, D] x [D, K], float32, its
    [N, K] output written to memory), the least a search that materialises the distances
    must do; and the compute bound, 2 N K D flops at the GFLOP/s of a square 2048^3 float32
    matmul measured in the same run (a search that keeps its distances in cache can beat the
    first, never the second);
  * search: `vqjax.quantizers.nearest_code` (indices only);
  * step: the full training-mode EMA quantizer step, the work haiku's
    `VectorQuantizerEMA(is_training=True)` does: nearest codes, code vectors with the
    straight-through estimator, commitment loss, EMA update of counts, sums and codebook,
    perplexity of the batch;
  * haiku: `hk.nets.VectorQuantizerEMA` in training mode (it builds the [N, K] one-hot matrix
    and multiplies by it), jit-compiled.

Prints ms (median of --repeats calls after one warm-up call), GFLOP/s (2 N K D / time), the
ratio haiku / vqjax, the roofline fraction (matmul time / step time), the compute-bound
fraction (compute-bound time / step time) and the peak memory of each compiled function (XLA's own accounting: arguments + outputs + temporaries). Command,
from the repository root (about 1.5 minutes on 2 CPU cores, most of it haiku at K = 65536):

  python bench/quantizer.py [--num_vectors 8192] [--dim 64] [--codes 1024,16384,65536] \
      [--repeats 5] [--no_haiku] [--json bench/results/quantizer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import median_seconds, xla_memory_mb  # pylint: disable=wrong-import-position
from vqjax import quantizers  # pylint: disable=wrong-import-position

BETA = 0.25
DECAY = 0.99
EPSILON = 1e-5


def time_ms(fn: Callable, *args, repeats: int) -> float:
    """Median wall milliseconds of `fn(*args)` after one warm-up call (compilation)."""
    return 1e3 * median_seconds(lambda: fn(*args), repeats)


def peak_memory_mb(jitted: Callable, *args) -> float:
    """XLA's memory figure for one call (the one that grows with K for a one-hot matmul)."""
    return xla_memory_mb(jitted.lower(*args).compile())


def distance_matmul(z: jax.Array, codebook: jax.Array) -> jax.Array:
    return jnp.einsum("nd,kd->nk", z, codebook, precision=jax.lax.Precision.HIGHEST)


def vqjax_step(state: quantizers.CodebookState, z: jax.Array) -> tuple[Any, ...]:
    """Training-mode EMA quantizer: what haiku's module computes, with vqjax's functions."""
    out = quantizers.quantize(z, state.embedding)
    loss = BETA * jnp.mean(out.commitment_loss)
    state = quantizers.ema_update(state, z, out.indices, decay=DECAY, epsilon=EPSILON,
                                  debias=True)
    perplexity = quantizers.perplexity(quantizers.code_counts(out.indices, state.num_codes))
    return state, out.quantized, loss, perplexity


def haiku_step_fn(num_codes: int, dim: int):
    """`(params, hk_state, z) -> (outputs, hk_state)` of haiku's VectorQuantizerEMA, and its init."""
    import haiku as hk  # pylint: disable=import-outside-toplevel

    def forward(z):
        vq = hk.nets.VectorQuantizerEMA(embedding_dim=dim, num_embeddings=num_codes,
                                        commitment_cost=BETA, decay=DECAY, epsilon=EPSILON)
        out = vq(z, is_training=True)
        return out["quantize"], out["loss"], out["perplexity"]

    transformed = hk.without_apply_rng(hk.transform_with_state(forward))
    return transformed


def peak_matmul_gflops(repeats: int, size: int = 2048) -> float:
    """float32 matmul GFLOP/s at a size where compute, not memory, bounds it."""
    a = jax.random.normal(jax.random.key(2), (size, size), jnp.float32)
    ms = time_ms(jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)),
                 a, a, repeats=repeats)
    return 2.0 * size**3 / (ms * 1e6)


def bench_codebook_size(z: jax.Array, num_codes: int, peak_gflops: float, args) -> dict:
    num_vectors, dim = z.shape
    rng = jax.random.key(num_codes)
    embedding = quantizers.uniform_codebook(rng, num_codes, dim)
    state = quantizers.CodebookState.from_embedding(embedding, initial_count=0.0)
    flops = 2.0 * num_vectors * num_codes * dim

    matmul = jax.jit(distance_matmul)
    search = jax.jit(quantizers.nearest_code)
    step = jax.jit(vqjax_step)
    result = {
        "K": num_codes,
        "matmul_ms": time_ms(matmul, z, embedding, repeats=args.repeats),
        "search_ms": time_ms(search, z, embedding, repeats=args.repeats),
        "ms": time_ms(step, state, z, repeats=args.repeats),
        "peak_mem_mb": peak_memory_mb(step, state, z),
        "search_peak_mem_mb": peak_memory_mb(search, z, embedding),
        "matmul_peak_mem_mb": peak_memory_mb(matmul, z, embedding),
    }
    result["roofline_fraction"] = result["matmul_ms"] / result["ms"]
    result["compute_bound_ms"] = flops / (peak_gflops * 1e6)
    result["compute_bound_fraction"] = result["compute_bound_ms"] / result["ms"]
    result["gflops"] = flops / (result["ms"] * 1e6)
    result["matmul_gflops"] = flops / (result["matmul_ms"] * 1e6)

    if args.no_haiku:
        result.update(haiku_ms=None, ratio_vs_haiku=None, haiku_peak_mem_mb=None)
        return result
    transformed = haiku_step_fn(num_codes, dim)
    params, hk_state = transformed.init(jax.random.key(0), z)
    haiku_apply = jax.jit(transformed.apply)
    # Slow calls are timed fewer times: one haiku step at K = 65536 takes seconds on a CPU.
    haiku_repeats = max(1, min(args.repeats, int(2000 // max(result["ms"], 1.0))))
    result["haiku_ms"] = time_ms(haiku_apply, params, hk_state, z, repeats=haiku_repeats)
    result["haiku_peak_mem_mb"] = peak_memory_mb(haiku_apply, params, hk_state, z)
    result["ratio_vs_haiku"] = result["haiku_ms"] / result["ms"]
    return result


COLUMNS = (("K", "K", "{:>6}"), ("matmul_ms", "matmul ms", "{:>10.1f}"),
           ("compute_bound_ms", "bound ms", "{:>9.1f}"), ("search_ms", "search ms", "{:>10.1f}"),
           ("ms", "step ms", "{:>8.1f}"), ("gflops", "GFLOP/s", "{:>8.0f}"),
           ("roofline_fraction", "roofline", "{:>9.2f}"), ("compute_bound_fraction", "bound", "{:>6.2f}"),
           ("haiku_ms", "haiku ms", "{:>9.1f}"), ("ratio_vs_haiku", "x haiku", "{:>8.1f}"),
           ("peak_mem_mb", "mem MB", "{:>7.0f}"), ("haiku_peak_mem_mb", "haiku MB", "{:>9.0f}"))


def print_header() -> None:
    print(" ".join(f"{title:>{len(fmt.format(0))}}" for _, title, fmt in COLUMNS))


def print_row(result: dict) -> None:
    cells = []
    for key, _, fmt in COLUMNS:
        value = result[key]
        cells.append(fmt.format(value) if value is not None else f"{'-':>{len(fmt.format(0))}}")
    print(" ".join(cells), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_vectors", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--codes", default="1024,16384,65536",
                        help="comma-separated codebook sizes K")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_haiku", action="store_true", help="skip the haiku peer")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    print(f"{args.num_vectors} vectors of dimension {args.dim} on {jax.device_count()} x "
          f"{device.device_kind} ({device.platform}), jax {jax.__version__}")
    peak_gflops = peak_matmul_gflops(args.repeats)
    print(f"float32 matmul peak (2048^3): {peak_gflops:.0f} GFLOP/s")
    z = jax.random.normal(jax.random.key(1), (args.num_vectors, args.dim), jnp.float32)
    results = []
    print_header()
    for num_codes in (int(k) for k in args.codes.split(",")):
        results.append(bench_codebook_size(z, num_codes, peak_gflops, args))
        print_row(results[-1])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"num_vectors": args.num_vectors, "dim": args.dim,
                       "device": device.device_kind, "jax": jax.__version__,
                       "peak_matmul_gflops": peak_gflops, "results": results}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
