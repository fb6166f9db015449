"""Quantizer maths against numpy references and closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizers as q


def _np_nearest(z, codebook):
    z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    codebook = np.asarray(codebook, np.float64)
    d = (z**2).sum(1)[:, None] - 2 * z @ codebook.T + (codebook**2).sum(1)[None, :]
    return d.argmin(1), d


def _np_ema(cluster_size, embed_sum, z, idx, decay, eps, step, debias):
    """Reference EMA update written with one-hot matrices, float64."""
    num_codes = cluster_size.shape[0]
    onehot = np.eye(num_codes)[idx]
    cluster_size = decay * cluster_size + (1 - decay) * onehot.sum(0)
    embed_sum = decay * embed_sum + (1 - decay) * onehot.T @ z
    size, sums = cluster_size, embed_sum
    if debias:
        size, sums = size / (1 - decay**step), sums / (1 - decay**step)
    n = size.sum()
    smoothed = (size + eps) / (n + num_codes * eps) * n
    return cluster_size, embed_sum, sums / smoothed[:, None]


class TestNearestCode:
    def test_squared_distances_match_numpy(self):
        rng = np.random.default_rng(0)
        z, codebook = rng.normal(size=(5, 7, 3)), rng.normal(size=(11, 3))
        _, expected = _np_nearest(z, codebook)
        np.testing.assert_allclose(q.squared_distances(jnp.asarray(z), jnp.asarray(codebook)),
                                   expected, rtol=1e-5, atol=1e-5)

    # 37 codes and 64 vectors: blocks of 7 codes and chunks of 5 or 10 vectors do not divide them.
    @pytest.mark.parametrize("codes_per_block,vectors_per_chunk",
                             [(q.CODES_PER_BLOCK, q.VECTORS_PER_CHUNK), (7, 64), (7, 5), (37, 10), (1, 1)])
    def test_matches_brute_force(self, codes_per_block, vectors_per_chunk):
        rng = np.random.default_rng(1)
        z = rng.normal(size=(4, 16, 8)).astype(np.float32)
        codebook = rng.normal(size=(37, 8)).astype(np.float32)
        expected, _ = _np_nearest(z, codebook)
        got = q.nearest_code(jnp.asarray(z), jnp.asarray(codebook), codes_per_block=codes_per_block,
                             vectors_per_chunk=vectors_per_chunk)
        chex.assert_shape(got, (4, 16))
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(got).ravel(), expected)

    def test_ties_pick_the_first_code_in_every_block_layout(self):
        codebook = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        z = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
        for block, chunk in ((q.CODES_PER_BLOCK, q.VECTORS_PER_CHUNK), (2, 1), (1, 2), (3, 1)):
            np.testing.assert_array_equal(
                q.nearest_code(z, codebook, codes_per_block=block, vectors_per_chunk=chunk), [0, 1])

    def test_large_codebook_never_materialises_all_distances(self):
        num_vectors, num_codes, dim = 2048, 65536, 8
        z = jax.ShapeDtypeStruct((num_vectors, dim), jnp.float32)
        codebook = jax.ShapeDtypeStruct((num_codes, dim), jnp.float32)
        compiled = jax.jit(q.nearest_code).lower(z, codebook).compile()
        full_matrix_bytes = num_vectors * num_codes * 4
        assert compiled.memory_analysis().temp_size_in_bytes < full_matrix_bytes / 8

    def test_large_codebook_is_exact(self):
        rng = np.random.default_rng(2)
        z = rng.normal(size=(256, 8)).astype(np.float32)
        codebook = rng.normal(size=(65536, 8)).astype(np.float32)
        expected, _ = _np_nearest(z, codebook)
        got = q.nearest_code(jnp.asarray(z), jnp.asarray(codebook))
        np.testing.assert_array_equal(np.asarray(got), expected)

    def test_large_norm_vectors_are_exact_where_bfloat16_fails(self):
        # Vectors far from the origin, codes spaced closely around them: the regime where
        # low-precision distances pick the wrong code.
        rng = np.random.default_rng(3)
        center = rng.normal(size=(32,)) * 30.0
        codebook = (center + rng.normal(size=(256, 32)) * 0.5).astype(np.float32)
        z = (center + rng.normal(size=(1024, 32)) * 0.5).astype(np.float32)
        expected, _ = _np_nearest(z, codebook)
        got = q.nearest_code(jnp.asarray(z, jnp.bfloat16).astype(jnp.float32), jnp.asarray(codebook))
        expected_bf16_input, _ = _np_nearest(np.asarray(jnp.asarray(z, jnp.bfloat16).astype(jnp.float32)), codebook)
        np.testing.assert_array_equal(np.asarray(got), expected_bf16_input)
        np.testing.assert_array_equal(np.asarray(q.nearest_code(jnp.asarray(z), jnp.asarray(codebook))), expected)
        zb, cb = jnp.asarray(z, jnp.bfloat16), jnp.asarray(codebook, jnp.bfloat16)
        naive = jnp.argmin(jnp.sum(cb * cb, -1)[None] - 2 * zb @ cb.T, -1)
        assert np.mean(np.asarray(naive) != expected) > 0.2  # the trap is real

    def test_dimension_mismatch_is_a_sentence(self):
        with pytest.raises(ValueError, match="embed_dim"):
            q.nearest_code(jnp.zeros((2, 3)), jnp.zeros((4, 5)))


class TestLearnedCodebook:
    def test_straight_through_value_and_gradient(self):
        z = jnp.asarray([[0.3, -1.0], [2.0, 0.5]])
        z_q = jnp.asarray([[0.0, -1.0], [2.5, 0.0]])
        weights = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
        np.testing.assert_allclose(q.straight_through(z, z_q), z_q)
        grad = jax.grad(lambda z: jnp.sum(weights * q.straight_through(z, z_q)))(z)
        np.testing.assert_allclose(grad, weights)  # identity Jacobian

    def test_losses_and_where_their_gradients_go(self):
        rng = np.random.default_rng(5)
        z, e = jnp.asarray(rng.normal(size=(3, 4))), jnp.asarray(rng.normal(size=(3, 4)))
        codebook_loss, commitment_loss = q.codebook_and_commitment_losses(z, e)
        expected = np.mean((np.asarray(z) - np.asarray(e)) ** 2, axis=-1)
        np.testing.assert_allclose(codebook_loss, expected, rtol=1e-6)
        np.testing.assert_allclose(commitment_loss, expected, rtol=1e-6)
        dz_cb, de_cb = jax.grad(lambda z, e: jnp.sum(q.codebook_and_commitment_losses(z, e)[0]), (0, 1))(z, e)
        dz_cm, de_cm = jax.grad(lambda z, e: jnp.sum(q.codebook_and_commitment_losses(z, e)[1]), (0, 1))(z, e)
        np.testing.assert_allclose(dz_cb, 0.0)
        np.testing.assert_allclose(de_cm, 0.0)
        np.testing.assert_allclose(de_cb, 2 * (np.asarray(e) - np.asarray(z)) / 4, rtol=1e-6)
        np.testing.assert_allclose(dz_cm, 2 * (np.asarray(z) - np.asarray(e)) / 4, rtol=1e-6)

    def test_linen_wrapper(self):
        module = q.VectorQuantizer(num_codes=16, dim=4)
        z = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
        variables = module.init(jax.random.key(1), z)
        chex.assert_shape(variables["params"]["codebook"], (16, 4))
        out = module.apply(variables, z)
        chex.assert_shape(out.quantized, z.shape)
        chex.assert_shape(out.indices, (2, 3, 3))
        expected, _ = _np_nearest(z, variables["params"]["codebook"])
        np.testing.assert_array_equal(np.asarray(out.indices).ravel(), expected)
        np.testing.assert_allclose(out.quantized, variables["params"]["codebook"][out.indices], rtol=1e-6)


class TestStatistics:
    def test_counts_perplexity_usage(self):
        indices = jnp.asarray([[0, 1, 1], [3, 3, 3]])
        counts = q.code_counts(indices, 5)
        np.testing.assert_array_equal(counts, np.bincount(np.asarray(indices).ravel(), minlength=5))
        p = np.asarray(counts) / 6.0
        p = p[p > 0]
        np.testing.assert_allclose(q.perplexity(counts), np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
        np.testing.assert_allclose(q.perplexity(jnp.ones(8)), 8.0, rtol=1e-6)
        np.testing.assert_allclose(q.usage_fraction(counts), 3 / 5)

    def test_weighted_counts(self):
        counts = q.code_counts(jnp.asarray([0, 1, 1, 2]), 3, jnp.asarray([1.0, 0.0, 1.0, 0.0]))
        np.testing.assert_array_equal(counts, [1.0, 1.0, 0.0])


class TestEMA:
    @pytest.mark.parametrize("debias", [False, True])
    def test_matches_numpy_over_several_steps(self, debias):
        rng = np.random.default_rng(6)
        num_codes, dim, decay, eps = 12, 3, 0.9, 1e-3
        embedding = rng.normal(size=(num_codes, dim))
        initial_count = 0.0 if debias else 1.0
        state = q.CodebookState.from_embedding(jnp.asarray(embedding, jnp.float32), initial_count)
        cluster_size = np.full(num_codes, initial_count)
        embed_sum = embedding * initial_count
        for step in range(1, 6):
            z = rng.normal(size=(40, dim))
            idx, _ = _np_nearest(z, np.asarray(state.embedding))
            state = q.ema_update(state, jnp.asarray(z, jnp.float32), jnp.asarray(idx), decay=decay,
                                 epsilon=eps, debias=debias)
            cluster_size, embed_sum, expected = _np_ema(cluster_size, embed_sum, z, idx, decay, eps, step, debias)
            np.testing.assert_allclose(state.cluster_size, cluster_size, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state.embed_sum, embed_sum, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state.embedding, expected, rtol=1e-4, atol=1e-5)
            assert int(state.num_updates) == step

    def test_laplace_smoothing_closed_form(self):
        sizes = jnp.asarray([0.0, 1.0, 5.0, 10.0])
        smoothed = q.laplace_smoothing(sizes, 0.5)
        n = 16.0
        np.testing.assert_allclose(smoothed, (np.asarray(sizes) + 0.5) / (n + 4 * 0.5) * n, rtol=1e-6)
        np.testing.assert_allclose(jnp.sum(smoothed), n, rtol=1e-6)
        assert np.all(np.asarray(smoothed) > 0)

    def _one_step_with_unused_code(self, **kwargs):
        embedding = jnp.asarray([[1.0, 1.0], [-1.0, -1.0], [5.0, 5.0]])
        initial_count = kwargs.pop("initial_count")
        state = q.CodebookState.from_embedding(embedding, initial_count)
        z = jnp.asarray([[0.9, 1.1], [-1.2, -0.8], [1.0, 0.8]])
        idx = q.nearest_code(z, embedding)
        assert 2 not in np.asarray(idx)
        return q.ema_update(state, z, idx, decay=0.99, epsilon=1e-5, **kwargs).embedding[2]

    def test_default_mode_keeps_unused_codes_alive(self):
        code = self._one_step_with_unused_code(initial_count=1.0)
        np.testing.assert_allclose(code, [5.0, 5.0], rtol=1e-3)

    def test_the_traps_the_default_avoids(self):
        # Zero counts with sums initialised to the embedding (taming's EMA quantizer): blown up.
        blown_up = self._one_step_with_unused_code(initial_count=0.0)
        state = q.CodebookState.from_embedding(jnp.asarray([[1.0, 1.0], [-1.0, -1.0], [5.0, 5.0]]), 0.0)
        state = state.replace(embed_sum=state.embedding)
        z = jnp.asarray([[0.9, 1.1], [-1.2, -0.8], [1.0, 0.8]])
        taming = q.ema_update(state, z, q.nearest_code(z, state.embedding), decay=0.99, epsilon=1e-5)
        assert np.linalg.norm(taming.embedding[2]) > 1e3
        # Zero counts and sums with debiasing (haiku): the unused code collapses to zero.
        zeroed = self._one_step_with_unused_code(initial_count=0.0, debias=True)
        np.testing.assert_allclose(zeroed, 0.0, atol=1e-6)
        np.testing.assert_allclose(blown_up, 0.0, atol=1e-6)

    def test_unused_code_stays_put_over_many_steps(self):
        embedding = jnp.asarray([[1.0, 1.0], [-1.0, -1.0], [5.0, 5.0]])
        state = q.CodebookState.from_embedding(embedding)
        z = jnp.asarray([[0.9, 1.1], [-1.2, -0.8]])
        update = jax.jit(lambda s: q.ema_update(s, z, q.nearest_code(z, s.embedding), decay=0.99, epsilon=1e-5))
        for _ in range(200):
            state = update(state)
        np.testing.assert_allclose(state.embedding[2], [5.0, 5.0], rtol=1e-3)

    def test_no_one_hot_matrix(self):
        num_vectors, num_codes, dim = 4096, 65536, 8
        state = jax.eval_shape(lambda: q.CodebookState.from_embedding(jnp.zeros((num_codes, dim))))
        z = jax.ShapeDtypeStruct((num_vectors, dim), jnp.float32)
        idx = jax.ShapeDtypeStruct((num_vectors,), jnp.int32)
        compiled = jax.jit(lambda s, z, i: q.ema_update(s, z, i, decay=0.99)).lower(state, z, idx).compile()
        assert compiled.memory_analysis().temp_size_in_bytes < num_vectors * num_codes * 4 / 8


class TestCodebookHealth:
    def test_dead_code_restart(self):
        rng = np.random.default_rng(8)
        embedding = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
        state = q.CodebookState.from_embedding(embedding, 1.0)
        state = state.replace(usage=jnp.asarray([2.0, 0.01, 0.5, 0.001, 3.0, 0.2]),
                              cluster_size=jnp.asarray([9.0, 0.2, 3.0, 0.1, 8.0, 1.0]))
        z = jnp.asarray(rng.normal(size=(20, 2)) + 10.0, jnp.float32)
        new, count = q.restart_dead_codes(state, z, jax.random.key(0), threshold=0.1, reset_count=1.5)
        dead = np.array([False, True, False, True, False, False])
        assert int(count) == 2
        np.testing.assert_array_equal(new.embedding[~dead], embedding[~dead])
        z_rows = {tuple(r) for r in np.asarray(z)}
        for row in np.asarray(new.embedding)[dead]:
            assert tuple(row) in z_rows
        np.testing.assert_allclose(new.cluster_size[dead], 1.5)
        np.testing.assert_allclose(new.embed_sum[dead], 1.5 * new.embedding[dead])
        np.testing.assert_allclose(new.usage[dead], 1.0)
        np.testing.assert_array_equal(new.cluster_size[~dead], state.cluster_size[~dead])
        np.testing.assert_array_equal(new.usage[~dead], state.usage[~dead])
        again, _ = q.restart_dead_codes(state, z, jax.random.key(0), threshold=0.1, reset_count=1.5)
        chex.assert_trees_all_equal(again, new)  # a function of the rng only

    def test_restart_threshold_must_be_a_fraction(self):
        state = q.CodebookState.from_embedding(jnp.zeros((3, 2)))
        with pytest.raises(ValueError, match="between 0 and 1"):
            q.restart_dead_codes(state, jnp.zeros((4, 2)), jax.random.key(0), threshold=2.0)

    def test_usage_is_a_share_relative_to_uniform(self):
        state = q.CodebookState.from_embedding(jnp.ones((4, 2)))
        new = q.update_usage(state, jnp.asarray([0, 0, 0, 2]), jnp.asarray(5), decay=0.5)
        # shares relative to uniform: counts * K / N = [3, 0, 1, 0]
        np.testing.assert_allclose(new.usage, 0.5 * 1.0 + 0.5 * np.array([3.0, 0.0, 1.0, 0.0]))
        np.testing.assert_array_equal(new.last_used, [5, 0, 5, 0])
        np.testing.assert_array_equal(new.embedding, state.embedding)
        np.testing.assert_array_equal(new.cluster_size, state.cluster_size)

    def test_recent_usage(self):
        state = q.CodebookState.from_embedding(jnp.zeros((4, 2)))
        state = state.replace(last_used=jnp.asarray([10, 3, 9, 0]))
        np.testing.assert_allclose(q.recent_usage(state, jnp.asarray(10), 2), 0.5)
        np.testing.assert_allclose(q.recent_usage(state, jnp.asarray(10), 8), 0.75)

    def test_a_code_that_stops_being_used_is_restarted_within_a_few_dozen_steps(self):
        rng = np.random.default_rng(11)
        far_code = 3
        embedding = rng.normal(size=(8, 2)).astype(np.float32)
        embedding[far_code] = 100.0
        state = q.CodebookState.from_embedding(jnp.asarray(embedding))
        z = jnp.asarray(rng.normal(size=(64, 2)) * 0.1, jnp.float32)

        @jax.jit
        def step(state, i):
            idx = q.nearest_code(z, state.embedding)
            state = q.ema_update(state, z, idx, decay=0.99)
            state = q.update_usage(state, idx, i, decay=0.9)
            return q.restart_dead_codes(state, z, jax.random.key(i), threshold=0.03)

        restarted_at = None
        for i in range(1, 60):
            state, count = step(state, i)
            if np.abs(np.asarray(state.embedding[far_code])).max() < 10:
                restarted_at = i
                break
        # usage decays from 1 by 0.9 per step: below 0.03 after ceil(log(0.03)/log(0.9)) = 34 steps
        assert restarted_at == 34

    def test_kmeans_step_matches_numpy_lloyd(self):
        rng = np.random.default_rng(9)
        z = rng.normal(size=(200, 3)).astype(np.float32)
        centers = z[:5].copy()
        idx, _ = _np_nearest(z, centers)
        expected = np.stack([z[idx == k].mean(0) for k in range(5)])
        np.testing.assert_allclose(q.kmeans(jnp.asarray(z), jnp.asarray(centers), 1), expected, rtol=1e-5)

    def test_kmeans_plus_plus_finds_separated_clusters(self):
        rng = np.random.default_rng(10)
        true_centers = np.array([[0, 0], [0, 20], [20, 0], [20, 20]], np.float32)
        z = np.concatenate([c + rng.normal(size=(50, 2)) * 0.1 for c in true_centers]).astype(np.float32)
        centers = q.init_codebook_from_data(jnp.asarray(z), 4, jax.random.key(0), kmeans_iters=5)
        found = sorted(map(tuple, np.asarray(centers)), key=lambda c: (round(c[0]), round(c[1])))
        np.testing.assert_allclose(np.array(found), true_centers, atol=0.1)

    def test_kmeans_needs_enough_vectors(self):
        with pytest.raises(ValueError, match="num_codes"):
            q.init_codebook_from_data(jnp.zeros((3, 2)), 8, jax.random.key(0))


class JitAgreementTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_nearest_code(self):
        rng = np.random.default_rng(4)
        z, codebook = jnp.asarray(rng.normal(size=(64, 4))), jnp.asarray(rng.normal(size=(50, 4)))
        expected, _ = _np_nearest(z, codebook)
        got = self.variant(lambda a, b: q.nearest_code(a, b, codes_per_block=16, vectors_per_chunk=10))(z, codebook)
        np.testing.assert_array_equal(got, expected)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ema_update_and_restart(self):
        rng = np.random.default_rng(7)
        state = q.CodebookState.from_embedding(jnp.asarray(rng.normal(size=(10, 3)), jnp.float32))
        z = jnp.asarray(rng.normal(size=(30, 3)), jnp.float32)
        idx = q.nearest_code(z, state.embedding)

        def update(s, z, i):
            s = q.ema_update(s, z, i, decay=0.95, epsilon=1e-4)
            s = s.replace(usage=s.cluster_size)  # make restarts follow the EMA counts here
            return q.restart_dead_codes(s, z, jax.random.key(3), threshold=0.96)

        got = self.variant(update)(state, z, idx)
        cluster_size, embed_sum, embedding = _np_ema(
            np.ones(10), np.asarray(state.embedding, np.float64), np.asarray(z, np.float64),
            np.asarray(idx), 0.95, 1e-4, 1, False)
        alive = cluster_size >= 0.96
        assert 0 < int(got[1]) == int((~alive).sum())
        np.testing.assert_allclose(np.asarray(got[0].embedding)[alive], embedding[alive], rtol=1e-5)
