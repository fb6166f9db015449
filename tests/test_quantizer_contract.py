"""Every registered quantizer holds to the `Quantizer` interface: shapes and dtypes, jit,
gradients reaching the encoder, index range, lookup(indices) == quantized, the update outside
the gradient, and the same result on one device and on a batch sharded over four."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vqjax import quantizers
from vqjax.core import parallel

NUM_CODES, DIM = 16, 4
# Fields a kind needs to make NUM_CODES codes for DIM-dimensional vectors: FSQ's 4 x 4 grid
# on 2 code dimensions, which also puts its learned projections 4 -> 2 -> 4 under test.
KIND_FIELDS = {"fsq": dict(levels=(4, 4))}


def _build(kind, **overrides):
    fields = dict(kind=kind, num_codes=NUM_CODES, beta=0.25, init="uniform", dead_code_threshold=0.5,
                  usage_decay=0.5, decay=0.9)
    fields.update(KIND_FIELDS.get(kind, {}))
    fields.update(overrides)
    return quantizers.build(ml_collections.ConfigDict(fields), dim=DIM)


def _z(seed=0, shape=(8, 3, 3, DIM)):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.fixture(params=sorted(quantizers.QUANTIZERS))
def quantizer(request):
    return _build(request.param)


def test_registry_builds_each_kind_and_refuses_an_unknown_one():
    for kind, cls in quantizers.QUANTIZERS.items():
        assert type(_build(kind)) is cls
    with pytest.raises(ValueError, match="config.quantizer.kind is 'nope'"):
        _build("nope")


@pytest.mark.parametrize("train", [False, True])
def test_shapes_dtypes_range_and_lookup(quantizer, train):
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    out = jax.jit(lambda v, z, rng: quantizer(v, z, train=train, rng=rng))(variables, z, jax.random.key(2))
    chex.assert_shape(out.quantized, z.shape)
    assert out.indices.shape == quantizer.index_shape(z.shape)
    assert quantizer.index_shape(z.shape)[:z.ndim - 1] == z.shape[:-1]  # one index (or more) per vector
    assert out.indices.dtype == quantizer.index_dtype
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < quantizer.num_codes
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices), out.quantized, rtol=1e-6, atol=1e-6)
    for name, value in {**out.losses, **out.metrics}.items():
        assert value.shape == () and np.isfinite(float(value)), name
    assert "perplexity" in out.metrics


def test_gradient_reaches_the_encoder_and_the_trained_parameters(quantizer):
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    weights = jax.random.normal(jax.random.key(3), z.shape)

    def objective(params, z):
        out = quantizer({"params": params, "state": variables["state"]}, z, train=True, rng=jax.random.key(2))
        return jnp.sum(weights * out.quantized) + quantizers.total_loss(out.losses)

    grad_params, grad_z = jax.grad(objective, argnums=(0, 1))(variables["params"], z)
    assert float(jnp.sum(jnp.abs(grad_z))) > 0  # the encoder learns through the quantizer
    for leaf in jax.tree.leaves(grad_params):
        assert float(jnp.sum(jnp.abs(leaf))) > 0  # every trained parameter gets a gradient


@pytest.mark.parametrize("kind", ["vq", "ema"])
def test_nearest_code_quantizers_pass_the_gradient_straight_through(kind):
    quantizer = _build(kind, beta=0.0)  # no commitment term: only the straight-through path
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    weights = jax.random.normal(jax.random.key(3), z.shape)
    grad = jax.grad(lambda z: jnp.sum(weights * quantizer(variables, z).quantized))(z)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)


def test_update_keeps_shapes_and_is_the_same_sharded(quantizer):
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)

    def step(variables, z):
        out = quantizer(variables, z, train=True, rng=jax.random.key(2))
        return quantizer.update(variables, z, out, jnp.int32(1), jax.random.key(4))

    single = jax.jit(step)(variables, z)
    chex.assert_trees_all_equal_shapes_and_dtypes(single[0], variables)
    mesh = parallel.make_mesh()
    assert mesh.devices.size == 4
    sharded_z = jax.device_put(z, parallel.batch_sharding(mesh))
    replicated = parallel.replicated(mesh)
    sharded = jax.jit(step, out_shardings=replicated)(jax.device_put(variables, replicated), sharded_z)
    chex.assert_trees_all_close(jax.device_get(sharded), jax.device_get(single), rtol=1e-5, atol=1e-6)


def test_dead_codes_restart_at_encoder_outputs():
    """Far-away codes are never used; with a threshold their usage falls and the update
    moves them onto vectors of z (for the learned codebook: its parameter)."""
    for kind in ("vq", "ema"):
        quantizer = _build(kind, dead_code_threshold=0.9, usage_decay=0.0)
        z = _z()
        variables = quantizer.init(jax.random.key(1), z)
        out = quantizer(variables, z)
        variables, metrics = quantizer.update(variables, z, out, jnp.int32(1), jax.random.key(4))
        assert float(metrics["codes_restarted"]) > 0
        flat = np.asarray(z).reshape(-1, DIM)
        codebook = np.asarray(quantizer.lookup(variables, jnp.arange(NUM_CODES)))
        unused = np.setdiff1d(np.arange(NUM_CODES), np.asarray(out.indices))
        for code in unused:
            assert np.min(np.abs(flat - codebook[code]).sum(-1)) < 1e-6, (kind, code)
