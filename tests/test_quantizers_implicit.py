"""The implicit-codebook quantizers against independent computations: FSQ (Mentzer et al.
2023) against numpy written from the paper's formulas, numpy's mixed-radix numbering and the
derivative of its bound in closed form; LFQ (Yu et al. 2023) and BSQ (Zhao et al. 2024)
against sign tables and a brute-force enumeration of all 2^d codes; all three against
vector-quantize-pytorch 1.32.0 on the same inputs."""

import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vqjax.quantizers import projection
from vqjax import quantizers
from vqjax.core import parallel
from vqjax.quantizers import fsq as fsq_lib


def _build(kind, dim, **fields):
    return quantizers.build(ml_collections.ConfigDict(dict(kind=kind, **fields)), dim=dim)


def _forward(quantizer, variables, z):
    return jax.jit(lambda v, z: quantizer(v, z, train=True))(variables, z)


def _numpy_entropy(probs):
    probs = np.asarray(probs, np.float64)
    return -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0), axis=-1)


# --- FSQ: the paper's formulas written out in numpy --------------------------------------------


def _paper_bound(z, levels):
    """Mentzer et al. appendix A.1 (with atanh and 1 + eps, as the quantizer documents)."""
    levels = np.asarray(levels, np.float64)
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    return np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset, half_l, offset


def _sweep_representatives(quantizer, variables, num_points=2001):
    """Per dimension, one input for each level the quantizer reaches on a dense sweep, found
    by running it on the sweep: (list over dims of {value: input})."""
    sweep = np.linspace(-8.0, 8.0, num_points, dtype=np.float32)
    z = np.repeat(sweep[:, None], quantizer.code_dim, axis=1)
    values = np.asarray(_forward(quantizer, variables, jnp.asarray(z)).quantized)
    return [{float(v): float(x) for x, v in zip(sweep, values[:, i])} for i in range(quantizer.code_dim)]


def test_fsq_values_lie_on_the_paper_grid_with_mixed_radix_indices():
    levels = (3, 4, 5, 2)
    quantizer = _build("fsq", dim=4, levels=levels, num_codes=120)
    z = 1.5 * jax.random.normal(jax.random.key(0), (6, 7, 4))
    variables = quantizer.init(jax.random.key(1), z)
    assert variables["params"] == {}  # dim == len(levels): no projection
    out = _forward(quantizer, variables, z)

    bounded, _, _ = _paper_bound(np.asarray(z, np.float64), levels)
    half_width = np.asarray(levels) // 2
    np.testing.assert_allclose(out.quantized, np.round(bounded) / half_width, atol=1e-6)
    digits = np.round(np.asarray(out.quantized) * half_width + half_width).astype(int)
    assert digits.min() >= 0 and np.all(digits < np.asarray(levels))
    # First dimension least significant: Fortran order in numpy's numbering.
    expected = np.ravel_multi_index(tuple(np.moveaxis(digits, -1, 0)), levels, order="F")
    np.testing.assert_array_equal(out.indices, expected)
    assert out.indices.dtype == jnp.int32 and out.losses == {}
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices), out.quantized, atol=1e-6)


def test_fsq_reaches_every_code_and_indices_round_trip_through_lookup():
    levels = (4, 3, 5)
    quantizer = _build("fsq", dim=3, levels=levels, num_codes=0)
    assert quantizer.num_codes == 60
    variables = quantizer.init(jax.random.key(0), jnp.zeros((1, 3)))
    representatives = _sweep_representatives(quantizer, variables)
    assert [len(r) for r in representatives] == list(levels)
    grid = np.asarray(list(itertools.product(*[sorted(r.values()) for r in representatives])), np.float32)
    out = _forward(quantizer, variables, jnp.asarray(grid))
    np.testing.assert_array_equal(np.sort(np.asarray(out.indices)), np.arange(60))

    codes = np.asarray(quantizer.lookup(variables, jnp.arange(60)))
    half_width = np.asarray(levels) // 2
    digits = np.round(codes * half_width + half_width).astype(int)
    np.testing.assert_allclose(codes, (digits - half_width) / half_width, atol=0)  # on the grid
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(digits.T), levels, order="F"), np.arange(60))


def test_fsq_even_levels_are_offset_by_half_a_level():
    """Even L: L values (k - L/2) / (L/2), one more below zero than above; bound(0) = 0."""
    levels = (4, 5, 2, 8)
    quantizer = _build("fsq", dim=4, levels=levels)
    variables = quantizer.init(jax.random.key(0), jnp.zeros((1, 4)))
    for level, found in zip(levels, _sweep_representatives(quantizer, variables)):
        half = level // 2
        np.testing.assert_allclose(sorted(found), (np.arange(level) - half) / half, atol=1e-7)
    out = _forward(quantizer, variables, jnp.zeros((1, 4)))
    np.testing.assert_array_equal(out.quantized, 0.0)


def test_fsq_presets_are_the_papers_table():
    table = {240: (8, 6, 5), 1000: (8, 5, 5, 5), 4375: (7, 5, 5, 5, 5), 15360: (8, 8, 8, 6, 5),
             64000: (8, 8, 8, 5, 5, 5)}
    for num_codes, levels in table.items():
        quantizer = _build("fsq", dim=16, num_codes=num_codes, levels=())
        assert quantizer.levels == levels and quantizer.num_codes == num_codes == math.prod(levels)
    # The largest preset runs without a [64000, d] codebook: lookup of the last code.
    quantizer = _build("fsq", dim=6, num_codes=64000)
    last = quantizer.lookup({"params": {}, "state": {}}, jnp.asarray([63999]))
    np.testing.assert_allclose(last, [[0.75, 0.75, 0.75, 1.0, 1.0, 1.0]])


def test_fsq_gradient_is_the_identity_through_the_bound():
    levels = (8, 5, 5, 5)
    quantizer = _build("fsq", dim=4, levels=levels)
    z = 2.0 * jax.random.normal(jax.random.key(0), (5, 4))
    weights = jax.random.normal(jax.random.key(1), z.shape)
    variables = quantizer.init(jax.random.key(2), z)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(weights * quantizer(variables, z).quantized)))(z)
    _, half_l, offset = _paper_bound(0.0, levels)
    shift = np.arctanh(offset / half_l)
    derivative = half_l * (1 - np.tanh(np.asarray(z, np.float64) + shift) ** 2) / (np.asarray(levels) // 2)
    # atol: float32's 1 - tanh^2 near saturation keeps ~1e-7 absolute, not relative, accuracy.
    np.testing.assert_allclose(grad, np.asarray(weights) * derivative, rtol=1e-5, atol=1e-6)


def test_fsq_projects_when_the_encoder_dimension_differs():
    quantizer = _build("fsq", dim=6, levels=(4, 4), num_codes=16)
    z = jax.random.normal(jax.random.key(0), (3, 5, 6))
    variables = quantizer.init(jax.random.key(1), z)
    params = variables["params"]
    assert params["project_in"]["kernel"].shape == (6, 2) and params["project_out"]["kernel"].shape == (2, 6)
    out = _forward(quantizer, variables, z)
    projected = np.asarray(z) @ np.asarray(params["project_in"]["kernel"]) + np.asarray(params["project_in"]["bias"])
    bounded, _, _ = _paper_bound(projected.astype(np.float64), (4, 4))
    codes = np.round(bounded) / 2
    expected = codes @ np.asarray(params["project_out"]["kernel"]) + np.asarray(params["project_out"]["bias"])
    np.testing.assert_allclose(out.quantized, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices), out.quantized, atol=1e-6)


def test_fsq_refuses_bad_levels_with_sentences():
    with pytest.raises(ValueError, match=r"levels is \(8, 1, 5\); every level must be at least 2"):
        _build("fsq", dim=3, levels=(8, 1, 5), num_codes=40)
    with pytest.raises(ValueError, match="make 1000 codes but config.quantizer.num_codes is 1024; set num_codes to 10"):
        _build("fsq", dim=4, levels=(8, 5, 5, 5), num_codes=1024)
    with pytest.raises(ValueError, match="num_codes is 1024, which has no preset"):
        _build("fsq", dim=4, num_codes=1024)
    with pytest.raises(ValueError, match="more than int32 indices can number"):
        _build("fsq", dim=4, levels=(2048, 2048, 2048), num_codes=0)
    with pytest.raises(ValueError, match="dimension 5 but the fsq quantizer was built for dim=4"):
        _build("fsq", dim=4, levels=(4, 4)).init(jax.random.key(0), jnp.zeros((1, 5)))


# --- LFQ / BSQ: sign tables and brute force over all 2^d codes -----------------------------------


def _all_codes(num_bits, scale):
    """Every code of {-scale, scale}^d, first dimension slowest: a probability table over
    them reshapes to [2] * d with axis i the i-th dimension."""
    return scale * np.asarray(list(itertools.product([-1.0, 1.0], repeat=num_bits)))


def _brute_force_entropies(x, num_bits, scale, inverse_temperature, groups):
    """(per-sample entropy, exact codebook entropy, grouped sum, smallest code probability)
    from the softmax over all 2^d codes of -beta ||x - c||^2, in float64."""
    x = np.asarray(x, np.float64).reshape(-1, num_bits)
    codes = _all_codes(num_bits, scale)
    logits = -inverse_temperature * np.sum((x[:, None, :] - codes[None]) ** 2, axis=-1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    mean = probs.mean(0)
    table = mean.reshape((2,) * num_bits)
    grouped = sum(_numpy_entropy(table.sum(axis=tuple(a for a in range(num_bits) if a not in g)).reshape(-1))
                  for g in groups)
    return np.mean(_numpy_entropy(probs)), _numpy_entropy(mean), grouped, probs.min()


@pytest.mark.parametrize("kind", ["lfq", "bsq"])
def test_sign_quantisation_and_bit_indices(kind):
    num_bits = 5
    quantizer = _build(kind, dim=num_bits, num_codes=2**num_bits)
    z = np.array(jax.random.normal(jax.random.key(0), (4, 6, num_bits)))
    z[0, 0] = [0.0, 1.0, -1.0, 0.0, 2.0]  # zero quantizes to the negative code
    variables = quantizer.init(jax.random.key(1), jnp.asarray(z))
    assert variables == {"params": {}, "state": {}}
    out = _forward(quantizer, variables, jnp.asarray(z))
    scale = 1 / np.sqrt(num_bits) if kind == "bsq" else 1.0
    np.testing.assert_allclose(out.quantized, np.where(z > 0, scale, -scale), rtol=1e-6)
    # vector-quantize-pytorch's order: the first dimension is the most significant bit.
    expected = np.sum((z > 0) * 2 ** np.arange(num_bits - 1, -1, -1), axis=-1)
    np.testing.assert_array_equal(out.indices, expected)
    assert int(out.indices[0, 0]) == 0b01001
    codes = np.asarray(quantizer.lookup(variables, jnp.arange(2**num_bits)))
    np.testing.assert_allclose(codes, _all_codes(num_bits, scale), rtol=1e-6)  # index order = itertools order


@pytest.mark.parametrize("kind, inverse_temperature", [("lfq", 0.7), ("bsq", 3.0)])
def test_entropy_terms_equal_a_brute_force_over_all_codes(kind, inverse_temperature):
    num_bits = 5
    z = 0.8 * jax.random.normal(jax.random.key(3), (2, 9, num_bits))
    x = np.asarray(z, np.float64)
    if kind == "bsq":
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    scale = 1 / np.sqrt(num_bits) if kind == "bsq" else 1.0
    fields = dict(num_codes=2**num_bits, inverse_temperature=inverse_temperature, beta=0.3, entropy_weight=0.2,
                  diversity_gamma=1.5)
    for group_size, groups in [(num_bits, [range(5)]), (8, [range(5)]), (2, [range(0, 2), range(2, 4), [4]]),
                               (1, [[i] for i in range(5)])]:
        quantizer = _build(kind, dim=num_bits, entropy_group_size=group_size, **fields)
        variables = quantizer.init(jax.random.key(0), z)
        out = _forward(quantizer, variables, z)
        sample, exact, grouped, _ = _brute_force_entropies(x, num_bits, scale, inverse_temperature, groups)
        np.testing.assert_allclose(out.metrics["per_sample_entropy"], sample, rtol=1e-5)
        np.testing.assert_allclose(out.metrics["codebook_entropy"], grouped, rtol=1e-5)
        if len(groups) == 1:
            np.testing.assert_allclose(grouped, exact, rtol=1e-12)
        else:
            assert grouped > exact + 1e-3  # a strict upper bound on these inputs
        np.testing.assert_allclose(out.losses["entropy"], 0.2 * (sample - 1.5 * grouped), rtol=1e-5, atol=1e-6)
        codes = np.where(x > 0, scale, -scale)
        np.testing.assert_allclose(out.losses["commitment"], 0.3 * np.mean((x - codes) ** 2), rtol=1e-5)


def test_the_default_codebook_entropy_is_exact_at_sixteen_thousand_codes():
    """14 bits with the default group size: the entropy of the batch mean over all 16,384 codes,
    computed as the mean of two 7-bit halves' outer products, equals the brute force."""
    num_bits, inverse_temperature = 14, 0.4
    z = 0.7 * jax.random.normal(jax.random.key(5), (3, 4, num_bits))
    quantizer = _build("lfq", dim=num_bits, num_codes=2**num_bits, inverse_temperature=inverse_temperature)
    out = _forward(quantizer, quantizer.init(jax.random.key(0), z), z)
    per_bit = [[i] for i in range(num_bits)]
    sample, exact, bound, _ = _brute_force_entropies(np.asarray(z), num_bits, 1.0, inverse_temperature, per_bit)
    np.testing.assert_allclose(out.metrics["codebook_entropy"], exact, rtol=1e-5)
    np.testing.assert_allclose(out.metrics["per_sample_entropy"], sample, rtol=1e-5)
    assert bound > exact + 0.1  # what a per-bit sum (group size 1) would report instead


def test_perplexity_is_that_of_the_batch_code_counts():
    quantizer = _build("lfq", dim=4, num_codes=16)
    z = jax.random.normal(jax.random.key(0), (8, 5, 4))
    out = _forward(quantizer, quantizer.init(jax.random.key(0), z), z)
    _, counts = np.unique(np.asarray(out.indices), return_counts=True)
    np.testing.assert_allclose(out.metrics["perplexity"], np.exp(_numpy_entropy(counts / counts.sum())), rtol=1e-6)


def test_two_to_the_thirty_codes_need_no_codebook():
    """2^30 codes x 30 float32s would be 120 GiB: this runs only because nothing enumerates them."""
    quantizer = _build("bsq", dim=30, num_codes=2**30)
    z = jax.random.normal(jax.random.key(0), (2, 8, 30))
    variables = quantizer.init(jax.random.key(1), z)
    out = _forward(quantizer, variables, z)
    assert int(out.indices.max()) < 2**30 and int(out.indices.min()) >= 0
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices), out.quantized, atol=1e-6)
    assert all(np.isfinite(float(v)) for v in {**out.losses, **out.metrics}.values())


@pytest.mark.parametrize("kind", ["lfq", "bsq", "fsq"])
def test_bfloat16_inputs_compute_in_float32(kind):
    fields = dict(levels=(8, 5, 5, 5), num_codes=1000) if kind == "fsq" else dict(num_codes=2**8)
    dim = 6
    quantizer = _build(kind, dim=dim, **fields)
    z32 = 40.0 * jax.random.normal(jax.random.key(0), (4, 5, dim))  # saturating inputs
    z16 = z32.astype(jnp.bfloat16)
    variables = quantizer.init(jax.random.key(1), z32)

    def objective(z):
        out = quantizer(variables, z, train=True)
        return jnp.sum(out.quantized.astype(jnp.float32)) + quantizers.total_loss(out.losses), out

    (loss, out), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(z16)
    assert out.quantized.dtype == jnp.bfloat16 and grad.dtype == jnp.bfloat16
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad, np.float32)))
    assert all(np.isfinite(float(v)) for v in {**out.losses, **out.metrics}.values())
    # The same codes as float32 inputs of the same values: nothing is rounded to bfloat16 inside.
    reference = _forward(quantizer, variables, z16.astype(jnp.float32))
    np.testing.assert_array_equal(out.indices, reference.indices)


def test_lfq_refuses_bad_settings_with_sentences():
    with pytest.raises(ValueError, match="num_codes is 24; lookup-free codebooks have 2\\^d codes"):
        _build("lfq", dim=4, num_codes=24)
    with pytest.raises(ValueError, match="num_codes is 2\\^31; its indices overflow int32"):
        _build("bsq", dim=4, num_codes=2**31)
    for size in (0, 25):
        with pytest.raises(ValueError, match=f"entropy_group_size is {size}; .* between 1 and 24"):
            _build("lfq", dim=4, num_codes=16, entropy_group_size=size)
    with pytest.raises(ValueError, match="inverse_temperature is 0.0; set it to a positive number"):
        _build("lfq", dim=4, num_codes=16, inverse_temperature=0.0)


@pytest.mark.parametrize("kind", ["fsq", "lfq", "bsq"])
def test_outputs_and_statistics_are_the_same_on_a_batch_sharded_over_four_devices(kind):
    fields = dict(levels=(4, 4)) if kind == "fsq" else dict(num_codes=16, entropy_group_size=2)
    quantizer = _build(kind, dim=6, **fields)
    z = jax.random.normal(jax.random.key(0), (8, 3, 3, 6))
    variables = quantizer.init(jax.random.key(1), z)
    call = lambda v, z: quantizer(v, z, train=True)  # noqa: E731
    single = jax.jit(call)(variables, z)
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    sharded = jax.jit(call)(jax.device_put(variables, replicated),
                            jax.device_put(z, parallel.batch_sharding(mesh)))
    np.testing.assert_array_equal(sharded.indices, single.indices)
    np.testing.assert_allclose(sharded.quantized, single.quantized, rtol=1e-6, atol=1e-6)
    for name in {**single.losses, **single.metrics}:
        value = {**sharded.losses, **sharded.metrics}[name]
        np.testing.assert_allclose(value, {**single.losses, **single.metrics}[name], rtol=1e-5, err_msg=name)


# --- parity with vector-quantize-pytorch -------------------------------------------------------


def _torch_linear_params(linear):
    return {"kernel": jnp.asarray(linear.weight.detach().numpy().T), "bias": jnp.asarray(linear.bias.detach().numpy())}


@pytest.mark.parametrize("dim", [4, 6])
def test_fsq_equals_vector_quantize_pytorch(dim):
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    levels = [8, 5, 5, 5]
    torch.manual_seed(0)
    reference = vqp.FSQ(levels=levels, dim=dim)
    x = 2.0 * torch.randn(2, 10, dim)
    x.requires_grad_(True)
    weights = torch.randn(2, 10, dim)
    ref_out, ref_indices = reference(x)
    (ref_out * weights).sum().backward()

    quantizer = _build("fsq", dim=dim, levels=tuple(levels), num_codes=1000)
    params = {}
    if dim != len(levels):
        params = {"project_in": _torch_linear_params(reference.project_in),
                  "project_out": _torch_linear_params(reference.project_out)}
    variables = {"params": params, "state": {}}
    z = jnp.asarray(x.detach().numpy())
    out = _forward(quantizer, variables, z)
    np.testing.assert_array_equal(out.indices, ref_indices.numpy())
    np.testing.assert_allclose(out.quantized, ref_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(jnp.asarray(weights.numpy()) * quantizer(variables, z).quantized)))(z)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices),
                               reference.indices_to_codes(ref_indices).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, dim, inverse_temperature", [("lfq", 5, 0.25), ("bsq", 6, 1.0)])
def test_lfq_and_bsq_equal_vector_quantize_pytorch(kind, dim, inverse_temperature):
    """Outputs, indices, the loss breakdown and the gradient of output and loss to the input.

    Where we differ on purpose: vector-quantize-pytorch enumerates all 2^d codes and takes
    log(max(p, 1e-5)) in its entropies, we use the exact factorised entropies (grouped for
    the codebook term: the default group of 8 >= d here, so exact); the inputs and inverse
    temperature are chosen so that every code's probability exceeds 1e-5 (asserted), where
    the two definitions agree. It computes the losses only in training mode, we always."""
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    num_bits = 5
    torch.manual_seed(0)
    reference = vqp.LFQ(dim=dim, codebook_size=2**num_bits, entropy_loss_weight=0.1, commitment_loss_weight=0.25,
                        diversity_gamma=1.3, spherical=kind == "bsq")
    reference.train()
    x = 0.5 * torch.randn(2, 12, dim)
    x.requires_grad_(True)
    weights = torch.randn(2, 12, dim)
    (ref_out, ref_indices, ref_aux), breakdown = reference(x, inv_temperature=inverse_temperature,
                                                           return_loss_breakdown=True)
    ((ref_out * weights).sum() + ref_aux).backward()

    quantizer = _build(kind, dim=dim, num_codes=2**num_bits, entropy_weight=0.1, beta=0.25, diversity_gamma=1.3,
                       inverse_temperature=inverse_temperature)
    params = {}
    if dim != num_bits:
        params = {"project_in": _torch_linear_params(reference.project_in),
                  "project_out": _torch_linear_params(reference.project_out)}
    variables = {"params": params, "state": {}}
    z = jnp.asarray(x.detach().numpy())

    def objective(z):
        out = quantizer(variables, z, train=True)
        return jnp.sum(jnp.asarray(weights.numpy()) * out.quantized) + quantizers.total_loss(out.losses), out

    grad, out = jax.jit(jax.grad(objective, has_aux=True))(z)

    projected = np.asarray(projection.apply_linear(params.get("project_in"), z), np.float64)
    if kind == "bsq":
        projected /= np.linalg.norm(projected, axis=-1, keepdims=True)
    scale = 1 / np.sqrt(num_bits) if kind == "bsq" else 1.0
    *_, smallest = _brute_force_entropies(projected, num_bits, scale, inverse_temperature, [])
    assert smallest > 1e-5  # vector-quantize-pytorch's log clamp does not bite

    np.testing.assert_array_equal(out.indices, ref_indices.numpy())
    np.testing.assert_allclose(out.quantized, ref_out.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.metrics["per_sample_entropy"], breakdown.per_sample_entropy.item(), rtol=1e-5)
    np.testing.assert_allclose(out.metrics["codebook_entropy"], breakdown.batch_entropy.item(), rtol=1e-5)
    np.testing.assert_allclose(out.losses["commitment"], 0.25 * breakdown.commitment.item(), rtol=1e-5)
    np.testing.assert_allclose(quantizers.total_loss(out.losses), ref_aux.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices),
                               reference.indices_to_codes(ref_indices).detach().numpy(), rtol=1e-5, atol=1e-6)
