"""The quantizer zoo against independent computations: the rotation trick (Fifty et al. 2024)
against its matrix written out in numpy, cosine VQ (ViT-VQGAN) against a numpy argmax of cosine
similarity, SimVQ's frozen codebook under an optimizer step, residual VQ stage by stage in
numpy; and each against vector-quantize-pytorch 1.32.0 with the same weights."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vqjax import quantizers
from vqjax.quantizers import search

NUM_CODES, DIM = 16, 4


def _build(kind, **fields):
    config = dict(kind=kind, num_codes=NUM_CODES, init="uniform")
    config.update(fields)
    return quantizers.build(ml_collections.ConfigDict(config), dim=DIM)


def _z(seed=0, shape=(2, 5, DIM)):
    return jax.random.normal(jax.random.key(seed), shape)


def _np_nearest(x, codes):
    """Index of the nearest code (squared L2, float64) for each row of x [..., D]."""
    x, codes = np.asarray(x, np.float64), np.asarray(codes, np.float64)
    return np.argmin(((x[..., None, :] - codes) ** 2).sum(-1), axis=-1)


def _np_unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _np_rotation(z, q):
    """(lambda, R) of the rotation trick (Fifty et al., sec. 4.2): R = I - 2 r r^T + 2 q^ e^T
    with e = z/|z|, q^ = q/|q|, r = (e + q^)/|e + q^|; lambda = |q|/|z|."""
    e, q_hat = _np_unit(z), _np_unit(q)
    r = _np_unit(e + q_hat)
    rotation = np.eye(len(z)) - 2 * np.outer(r, r) + 2 * np.outer(q_hat, e)
    return np.linalg.norm(q) / np.linalg.norm(z), rotation


def _grad_z(quantizer, variables, z, weights):
    """d/dz of sum(weights * quantized) + the quantizer's losses."""
    def objective(z):
        out = quantizer(variables, z, train=True, rng=jax.random.key(9))
        return jnp.sum(weights * out.quantized) + quantizers.total_loss(out.losses)
    return jax.grad(objective)(z)


# --- the rotation trick -------------------------------------------------------------------

def test_rotation_trick_jacobian_is_lambda_times_the_rotation():
    rng = np.random.default_rng(0)
    z, q = rng.normal(size=3), rng.normal(size=3)
    jacobian = np.asarray(jax.jacobian(lambda z: search.rotation_trick(z, jnp.asarray(q, jnp.float32)))(
        jnp.asarray(z, jnp.float32)), np.float64)
    scale, rotation = _np_rotation(z, q)
    np.testing.assert_allclose(jacobian, scale * rotation, rtol=1e-5, atol=1e-6)
    # The map the gradient goes through is lambda times a proper rotation taking z/|z| to q/|q|.
    rotation_part = jacobian / scale
    np.testing.assert_allclose(rotation_part @ rotation_part.T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotation_part), 1.0, atol=1e-5)
    np.testing.assert_allclose(rotation_part @ _np_unit(z), _np_unit(q), atol=1e-6)


def test_rotation_trick_acts_on_each_vector_alone_and_passes_nothing_to_the_code():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)
    jacobian = np.asarray(jax.jacobian(search.rotation_trick)(z, q))  # [3, 2, 3, 2]
    for i in range(3):
        for j in range(3):
            if i == j:
                scale, rotation = _np_rotation(np.asarray(z[i]), np.asarray(q[i]))
                np.testing.assert_allclose(jacobian[i, :, j], scale * rotation, rtol=1e-5, atol=1e-6)
            else:
                assert not np.any(jacobian[i, :, j]), (i, j)
    assert not np.any(np.asarray(jax.jacobian(search.rotation_trick, argnums=1)(z, q)))


def test_rotation_trick_with_opposite_directions_still_maps_z_onto_the_code():
    z, q = jnp.asarray([1.0, 2.0, -1.0]), jnp.asarray([-2.0, -4.0, 2.0])
    jacobian = np.asarray(jax.jacobian(lambda z: search.rotation_trick(z, q))(z))
    assert np.all(np.isfinite(jacobian))
    np.testing.assert_allclose(jacobian @ np.asarray(z), np.asarray(q), rtol=1e-6)


@pytest.mark.parametrize("kind", ["vq", "ema", "simvq"])
def test_rotation_gradient_gives_the_nearest_code_exactly_and_rotates_the_gradient(kind):
    quantizer = _build(kind, gradient="rotation", beta=0.0)  # no commitment: only the estimator
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    out = quantizer(variables, z)
    codes = np.asarray(quantizer.lookup(variables, jnp.arange(NUM_CODES)))
    flat_z = np.asarray(z).reshape(-1, DIM)
    nearest = _np_nearest(flat_z, codes)
    np.testing.assert_array_equal(np.asarray(out.indices).ravel(), nearest)
    np.testing.assert_array_equal(np.asarray(out.quantized).reshape(-1, DIM), codes[nearest])  # bit for bit

    weights = np.array(_z(3, z.shape))
    grad = np.asarray(jax.grad(lambda z: jnp.sum(weights * quantizer(variables, z).quantized))(z))
    for vector, code, weight, got in zip(flat_z, codes[nearest], weights.reshape(-1, DIM), grad.reshape(-1, DIM)):
        scale, rotation = _np_rotation(vector, code)
        np.testing.assert_allclose(got, scale * rotation.T @ weight, rtol=2e-5, atol=2e-6)


def test_unknown_gradient_estimators_are_refused():
    for kind in ("vq", "ema", "cosine", "simvq", "residual"):
        with pytest.raises(ValueError, match="config.quantizer.gradient is 'rotate'"):
            _build(kind, gradient="rotate")


def _assert_equals_reference(ours, grad, quantized, indices, loss, x):
    """Our output and input gradient equal vector-quantize-pytorch's `VectorQuantize` call
    (indices exactly; its loss is the commitment term alone, with its codebook frozen)."""
    np.testing.assert_array_equal(np.asarray(ours.indices), indices.numpy())
    np.testing.assert_allclose(np.asarray(ours.quantized), quantized.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(ours.losses["commitment"]), loss.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_rotation_trick_gradient_equals_vector_quantize_pytorch():
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    # Our 'ema' kind: vector-quantize-pytorch's VectorQuantize defaults to an EMA codebook whose
    # loss is the commitment term alone, weighted like our beta.
    quantizer = _build("ema", gradient="rotation", beta=0.7)
    z = _z(shape=(2, 6, DIM))
    variables = quantizer.init(jax.random.key(1), z)
    weights = np.array(_z(3, z.shape))
    ours = quantizer(variables, z, train=True)
    grad = _grad_z(quantizer, variables, z, weights)

    reference = vqp.VectorQuantize(dim=DIM, codebook_size=NUM_CODES, rotation_trick=True, commitment_weight=0.7)
    reference.train()
    with torch.no_grad():
        reference._codebook.embed.copy_(torch.from_numpy(np.array(variables["state"].embedding))[None])
    x = torch.from_numpy(np.array(z)).requires_grad_()
    quantized, indices, loss = reference(x, freeze_codebook=True)
    ((torch.from_numpy(weights) * quantized).sum() + loss).backward()

    _assert_equals_reference(ours, grad, quantized, indices, loss, x)


# --- cosine VQ -----------------------------------------------------------------------------

def _cosine_variables(quantizer, z, seed=1):
    """Initial variables with random biases, so that the projections' biases are under test."""
    variables = quantizer.init(jax.random.key(seed), z)
    keys = jax.random.split(jax.random.key(seed + 100), 2)
    params = dict(variables["params"])
    for key, name in zip(keys, ("project_in", "project_out")):
        params[name] = {**params[name], "bias": 0.3 * jax.random.normal(key, params[name]["bias"].shape)}
    return {"params": params, "state": variables["state"]}


def test_cosine_quantizer_picks_the_code_of_largest_cosine_and_projects_it_back():
    quantizer = _build("cosine", codebook_dim=3, beta=0.4)
    z = _z()
    variables = _cosine_variables(quantizer, z)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    projected = np.asarray(z, np.float64) @ params["project_in"]["kernel"] + params["project_in"]["bias"]
    unit_vectors, unit_codes = _np_unit(projected), _np_unit(params["codebook"])
    cosines = unit_vectors @ unit_codes.T
    expected = np.argmax(cosines, axis=-1)

    out = quantizer(variables, z)
    np.testing.assert_array_equal(np.asarray(out.indices), expected)
    chosen = unit_codes[expected]
    projected_back = chosen @ params["project_out"]["kernel"] + params["project_out"]["bias"]
    np.testing.assert_allclose(out.quantized, projected_back, rtol=1e-5, atol=1e-6)
    distance = ((unit_vectors - chosen) ** 2).mean(-1).mean()  # both terms in the normalised space
    np.testing.assert_allclose(out.losses["commitment"], 0.4 * distance, rtol=1e-5)
    np.testing.assert_allclose(out.losses["codebook"], distance, rtol=1e-5)
    # Only directions matter: scaling the codes changes nothing.
    scaled = {"params": {**variables["params"], "codebook": 5.0 * variables["params"]["codebook"]},
              "state": variables["state"]}
    np.testing.assert_array_equal(quantizer(scaled, z).indices, out.indices)


def test_cosine_dead_codes_restart_at_normalised_projections():
    quantizer = _build("cosine", codebook_dim=3, dead_code_threshold=0.9, usage_decay=0.0)
    z = _z()
    variables = _cosine_variables(quantizer, z)
    out = quantizer(variables, z)
    updated, metrics = quantizer.update(variables, z, out, jnp.int32(1), jax.random.key(4))
    assert float(metrics["codes_restarted"]) > 0
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    projected = np.asarray(z, np.float64) @ params["project_in"]["kernel"] + params["project_in"]["bias"]
    projected = _np_unit(projected)
    codebook = np.asarray(updated["params"]["codebook"])
    for code in np.setdiff1d(np.arange(NUM_CODES), np.asarray(out.indices)):
        assert np.min(np.abs(projected.reshape(-1, 3) - codebook[code]).max(-1)) < 1e-5, code


@pytest.mark.parametrize("gradient", ["straight_through", "rotation"])
def test_cosine_quantizer_equals_vector_quantize_pytorch(gradient):
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    codebook_dim, beta = 3, 0.6
    quantizer = _build("cosine", codebook_dim=codebook_dim, beta=beta, gradient=gradient)
    z = _z(shape=(2, 6, DIM))
    variables = _cosine_variables(quantizer, z)
    weights = np.array(_z(3, z.shape))
    ours = quantizer(variables, z, train=True)
    grad = _grad_z(quantizer, variables, z, weights)

    # vector-quantize-pytorch's cosine codebook is an EMA one (ours is learned by its loss term):
    # the forward pass, the commitment term and the gradient to the input are what both share.
    reference = vqp.VectorQuantize(dim=DIM, codebook_size=NUM_CODES, codebook_dim=codebook_dim,
                                   use_cosine_sim=True, rotation_trick=gradient == "rotation",
                                   commitment_weight=beta)
    reference.train()
    params = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), variables["params"])
    with torch.no_grad():
        reference.project_in.weight.copy_(params["project_in"]["kernel"].T)
        reference.project_in.bias.copy_(params["project_in"]["bias"])
        reference.project_out.weight.copy_(params["project_out"]["kernel"].T)
        reference.project_out.bias.copy_(params["project_out"]["bias"])
        # It keeps its codes normalised; ours normalises them where they are used.
        reference._codebook.embed.copy_(torch.nn.functional.normalize(params["codebook"], dim=-1)[None])
    x = torch.from_numpy(np.array(z)).requires_grad_()
    quantized, indices, loss = reference(x, freeze_codebook=True)
    ((torch.from_numpy(weights) * quantized).sum() + loss).backward()

    _assert_equals_reference(ours, grad, quantized, indices, loss, x)


# --- SimVQ ---------------------------------------------------------------------------------

def test_simvq_searches_the_codes_c_w_and_an_optimizer_step_moves_w_not_c():
    quantizer = _build("simvq")
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    transform = 0.5 * jax.random.normal(jax.random.key(5), (DIM, DIM))
    variables = {"params": {"transform": transform}, "state": variables["state"]}
    frozen = np.asarray(variables["state"].frozen_codebook)
    codes = frozen.astype(np.float64) @ np.asarray(transform, np.float64)
    out = quantizer(variables, z)
    np.testing.assert_array_equal(np.asarray(out.indices), _np_nearest(z, codes))
    np.testing.assert_allclose(out.quantized, codes[np.asarray(out.indices)], rtol=1e-5, atol=1e-6)

    weights = _z(3, z.shape)

    def objective(params):
        out = quantizer({"params": params, "state": variables["state"]}, z, train=True)
        return jnp.sum(weights * out.quantized) + quantizers.total_loss(out.losses)

    optimizer = optax.adam(1e-2)
    grads = jax.grad(objective)(variables["params"])
    updates, _ = optimizer.update(grads, optimizer.init(variables["params"]), variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    stepped, _ = quantizer.update({"params": params, "state": variables["state"]}, z, out, jnp.int32(1),
                                  jax.random.key(4))
    assert np.abs(np.asarray(stepped["params"]["transform"]) - np.asarray(transform)).max() > 1e-3  # W moved
    np.testing.assert_array_equal(stepped["state"].frozen_codebook, frozen)  # C did not


def test_simvq_restarts_a_dead_code_where_c_w_is_an_encoder_output():
    quantizer = _build("simvq", dead_code_threshold=0.9, usage_decay=0.0)
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    variables = {"params": {"transform": jnp.eye(DIM) + 0.3 * jax.random.normal(jax.random.key(5), (DIM, DIM))},
                 "state": variables["state"]}
    out = quantizer(variables, z)
    variables, metrics = quantizer.update(variables, z, out, jnp.int32(1), jax.random.key(4))
    assert float(metrics["codes_restarted"]) > 0
    codes = np.asarray(quantizer.lookup(variables, jnp.arange(NUM_CODES)))
    flat = np.asarray(z).reshape(-1, DIM)
    for code in np.setdiff1d(np.arange(NUM_CODES), np.asarray(out.indices)):
        assert np.min(np.abs(flat - codes[code]).max(-1)) < 1e-4, code


@pytest.mark.parametrize("gradient", ["straight_through", "rotation"])
def test_simvq_equals_vector_quantize_pytorch(gradient):
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    quantizer = _build("simvq", gradient=gradient, beta=0.25)  # its input-to-code weight is 0.25
    z = _z(shape=(2, 6, DIM))
    variables = quantizer.init(jax.random.key(1), z)
    transform = jnp.eye(DIM) + 0.3 * jax.random.normal(jax.random.key(5), (DIM, DIM))
    variables = {"params": {"transform": transform}, "state": variables["state"]}
    weights = np.array(_z(3, z.shape))

    def objective(params, z):
        out = quantizer({"params": params, "state": variables["state"]}, z, train=True)
        return jnp.sum(weights * out.quantized) + quantizers.total_loss(out.losses), out

    (_, ours), (grad_params, grad_z) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        variables["params"], z)

    reference = vqp.SimVQ(dim=DIM, codebook_size=NUM_CODES, rotation_trick=gradient == "rotation")
    with torch.no_grad():
        reference.frozen_codebook.copy_(torch.from_numpy(np.array(variables["state"].frozen_codebook)))
        reference.code_transform.weight.copy_(torch.from_numpy(np.array(transform)).T)
    x = torch.from_numpy(np.array(z)).requires_grad_()
    quantized, indices, loss = reference(x)
    ((torch.from_numpy(weights) * quantized).sum() + loss).backward()

    np.testing.assert_array_equal(np.asarray(ours.indices), indices.numpy())
    np.testing.assert_allclose(np.asarray(ours.quantized), quantized.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(quantizers.total_loss(ours.losses)), loss.item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_z), x.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_params["transform"]),
                               reference.code_transform.weight.grad.numpy().T, rtol=1e-4, atol=1e-5)


# --- residual VQ ---------------------------------------------------------------------------

def _np_residual_stages(z, codebooks):
    """SoundStream's algorithm 1 in numpy: (indices [..., N], quantized, residual inputs)."""
    residual, total, indices, inputs = np.asarray(z, np.float64), 0.0, [], []
    for codebook in codebooks:
        codebook = np.asarray(codebook, np.float64)
        index = _np_nearest(residual, codebook)
        inputs.append(residual)
        indices.append(index)
        total = total + codebook[index]
        residual = residual - codebook[index]
    return np.stack(indices, -1), total, inputs


def test_residual_stages_quantize_the_residuals_of_the_stages_before():
    quantizer = _build("residual", depth=3, beta=0.5)
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    codebooks = np.asarray(variables["params"]["codebook"])
    assert codebooks.shape == (3, NUM_CODES, DIM)
    indices, total, inputs = _np_residual_stages(z, codebooks)
    out = quantizer(variables, z)
    assert out.indices.shape == quantizer.index_shape(z.shape) == z.shape[:-1] + (3,)
    np.testing.assert_array_equal(np.asarray(out.indices), indices)
    np.testing.assert_allclose(out.quantized, total, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices), total, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices[..., :1]), codebooks[0][indices[..., 0]],
                               rtol=1e-6)
    # Every stage's commitment term pulls z towards the partial sum up to it (RQ-VAE, eq. 7).
    commitment = sum(((r - c[i]) ** 2).mean() for r, c, i in zip(inputs, codebooks, np.moveaxis(indices, -1, 0)))
    np.testing.assert_allclose(out.losses["commitment"], 0.5 * commitment, rtol=1e-5)
    np.testing.assert_allclose(out.losses["codebook"], commitment, rtol=1e-5)


def test_residual_of_one_stage_is_its_stage():
    residual = _build("residual", depth=1, stage="ema", gradient="rotation")
    single = _build("ema", gradient="rotation")
    z = _z()
    variables = residual.init(jax.random.key(1), z)
    unstacked = jax.tree.map(lambda leaf: leaf[0], variables)
    weights = _z(3, z.shape)
    ours, theirs = residual(variables, z), single(unstacked, z)
    np.testing.assert_array_equal(ours.indices[..., 0], theirs.indices)
    np.testing.assert_allclose(ours.quantized, theirs.quantized, rtol=1e-6)
    assert ours.losses.keys() == theirs.losses.keys()
    for name in ours.losses:
        np.testing.assert_allclose(ours.losses[name], theirs.losses[name], rtol=1e-6)
    np.testing.assert_allclose(_grad_z(residual, variables, z, weights), _grad_z(single, unstacked, z, weights),
                               rtol=1e-5, atol=1e-5)


def test_quantizer_dropout_keeps_the_first_one_to_depth_stages_in_training_only():
    depth = 3
    quantizer = _build("residual", depth=depth, quantizer_dropout=True)
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    codebooks = np.asarray(variables["params"]["codebook"])
    indices, _, inputs = _np_residual_stages(z, codebooks)
    run = jax.jit(lambda rng: quantizer(variables, z, train=True, rng=rng))
    kept_counts = set()
    for seed in range(12):
        out = run(jax.random.key(seed))
        kept = int(out.metrics["stages_kept"])
        kept_counts.add(kept)
        np.testing.assert_array_equal(np.asarray(out.indices), indices)  # every stage reports its code
        partial = sum(codebooks[k][indices[..., k]] for k in range(kept))
        np.testing.assert_allclose(out.quantized, partial, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(quantizer.lookup(variables, out.indices[..., :kept]), partial,
                                   rtol=1e-5, atol=1e-5)
        commitment = sum(((inputs[k] - codebooks[k][indices[..., k]]) ** 2).mean() for k in range(kept))
        np.testing.assert_allclose(out.losses["codebook"], commitment, rtol=1e-5)
    assert kept_counts == {1, 2, 3}
    full = quantizer(variables, z, train=False)
    np.testing.assert_allclose(full.quantized, quantizer.lookup(variables, full.indices), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="pass rng="):
        quantizer(variables, z, train=True)


def test_shared_codebook_serves_every_stage_and_is_updated_once_from_all_residuals():
    decay = 0.8
    quantizer = _build("residual", depth=3, stage="ema", shared_codebook=True, decay=decay)
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    codebook = np.asarray(variables["state"].embedding)
    assert codebook.shape == (NUM_CODES, DIM)
    indices, total, inputs = _np_residual_stages(z, [codebook] * 3)
    out = quantizer(variables, z)
    np.testing.assert_array_equal(np.asarray(out.indices), indices)
    np.testing.assert_allclose(out.quantized, total, rtol=1e-5, atol=1e-5)

    updated, _ = quantizer.update(variables, z, out, jnp.int32(1), jax.random.key(4))
    # One EMA step (van den Oord et al., appendix A.1) over the vectors of all stages; fresh
    # codes count as one vector equal to themselves.
    vectors = np.concatenate([r.reshape(-1, DIM) for r in inputs])
    assigned = np.moveaxis(indices, -1, 0).reshape(-1)
    one_hot = np.eye(NUM_CODES)[assigned]
    sizes = decay * 1.0 + (1 - decay) * one_hot.sum(0)
    sums = decay * codebook + (1 - decay) * one_hot.T @ vectors
    smoothed = (sizes + 1e-5) / (sizes.sum() + NUM_CODES * 1e-5) * sizes.sum()
    np.testing.assert_allclose(updated["state"].embedding, sums / smoothed[:, None], rtol=1e-5, atol=1e-6)


def test_update_moves_each_stage_by_the_residuals_it_quantized():
    decay = 0.8
    quantizer = _build("residual", depth=2, stage="ema", decay=decay)
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    codebooks = np.asarray(variables["state"].embedding)
    indices, _, inputs = _np_residual_stages(z, codebooks)
    out = quantizer(variables, z)
    updated, metrics = quantizer.update(variables, z, out, jnp.int32(1), jax.random.key(4))
    assert {"codes_used_recent", "codes_used_recent_stage0", "codes_used_recent_stage1"} <= metrics.keys()
    for k in range(2):
        one_hot = np.eye(NUM_CODES)[indices[..., k].reshape(-1)]
        sizes = decay + (1 - decay) * one_hot.sum(0)
        sums = decay * codebooks[k] + (1 - decay) * one_hot.T @ inputs[k].reshape(-1, DIM)
        smoothed = (sizes + 1e-5) / (sizes.sum() + NUM_CODES * 1e-5) * sizes.sum()
        np.testing.assert_allclose(updated["state"].embedding[k], sums / smoothed[:, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", ["vq", "cosine", "simvq"])
def test_every_nearest_code_kind_can_be_a_stage(stage):
    quantizer = _build("residual", depth=2, stage=stage, codebook_dim=3)
    z = _z()
    variables = quantizer.init(jax.random.key(1), z)
    out = quantizer(variables, z, train=True, rng=jax.random.key(2))
    np.testing.assert_allclose(quantizer.lookup(variables, out.indices), out.quantized, rtol=1e-5, atol=1e-5)
    single = quantizers.QUANTIZERS[stage]
    assert type(quantizer.stage_quantizer()) is single


def test_residual_refuses_depth_zero_and_stages_without_a_nearest_code():
    with pytest.raises(ValueError, match="config.quantizer.depth is 0"):
        _build("residual", depth=0)
    for stage in ("gumbel", "residual", "nope"):
        with pytest.raises(ValueError, match=f"config.quantizer.stage is '{stage}'"):
            _build("residual", stage=stage)


def test_residual_forwards_the_stage_fields_with_the_stages_own_defaults():
    import dataclasses

    residual_defaults = {f.name: f.default for f in dataclasses.fields(quantizers.ResidualQuantizer)}
    for stage in ("vq", "ema", "cosine", "simvq"):
        for field in dataclasses.fields(quantizers.QUANTIZERS[stage]):
            if field.default is not dataclasses.MISSING:
                assert residual_defaults[field.name] == field.default, (stage, field.name)


@pytest.mark.parametrize("gradient", ["straight_through", "rotation"])
def test_residual_equals_vector_quantize_pytorch(gradient):
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    depth, beta = 3, 0.4
    quantizer = _build("residual", depth=depth, stage="ema", beta=beta, gradient=gradient)
    z = _z(shape=(2, 6, DIM))
    variables = quantizer.init(jax.random.key(1), z)
    weights = np.array(_z(3, z.shape))
    ours = quantizer(variables, z, train=True)
    grad = _grad_z(quantizer, variables, z, weights)

    reference = vqp.ResidualVQ(dim=DIM, num_quantizers=depth, codebook_size=NUM_CODES, commitment_weight=beta,
                               rotation_trick=gradient == "rotation")
    reference.train()
    with torch.no_grad():
        for layer, codebook in zip(reference.layers, np.array(variables["state"].embedding)):
            layer._codebook.embed.copy_(torch.from_numpy(codebook)[None])
    x = torch.from_numpy(np.array(z)).requires_grad_()
    quantized, indices, losses = reference(x, freeze_codebook=True)
    ((torch.from_numpy(weights) * quantized).sum() + losses.sum()).backward()

    np.testing.assert_array_equal(np.asarray(ours.indices), indices.numpy())
    np.testing.assert_allclose(np.asarray(ours.quantized), quantized.detach().numpy(), rtol=1e-5, atol=1e-5)
    # Its per-stage losses are the stages' commitment terms; ours add them up.
    np.testing.assert_allclose(float(ours.losses["commitment"]), losses.sum().item(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), x.grad.numpy(), rtol=1e-4, atol=1e-5)


# --- every new kind ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "simvq", "residual"])
def test_bfloat16_inputs_are_quantized_in_float32(kind):
    quantizer = _build(kind)
    z = _z().astype(jnp.bfloat16)
    variables = quantizer.init(jax.random.key(1), z)
    low, full = quantizer(variables, z), quantizer(variables, z.astype(jnp.float32))
    np.testing.assert_array_equal(low.indices, full.indices)
    assert low.quantized.dtype == jnp.bfloat16
    for name in full.losses:
        assert low.losses[name].dtype == jnp.float32
        np.testing.assert_allclose(low.losses[name], full.losses[name], rtol=1e-6)
