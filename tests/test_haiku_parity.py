"""Our EMA codebook against DeepMind's reference, haiku's VectorQuantizerEMA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import quantizers as q

hk = pytest.importorskip("haiku")

NUM_CODES, DIM, DECAY, BETA, EPSILON = 16, 4, 0.9, 0.25, 1e-5


def _haiku_vq():
    def forward(z, is_training):
        vq = hk.nets.VectorQuantizerEMA(
            embedding_dim=DIM, num_embeddings=NUM_CODES, commitment_cost=BETA, decay=DECAY,
            epsilon=EPSILON, name="vq")
        return vq(z, is_training=is_training)

    return hk.without_apply_rng(hk.transform_with_state(forward))


def test_ema_update_reproduces_haiku_over_several_steps():
    vq = _haiku_vq()
    rng = np.random.default_rng(0)
    # Clustered inputs so that several codes are used and several are not.
    inputs = [jnp.asarray(rng.normal(size=(8, 5, 5, DIM)) * 0.5 + rng.normal(size=(DIM,)), jnp.float32)
              for _ in range(6)]
    params, hk_state = vq.init(jax.random.key(0), inputs[0], is_training=True)
    ours = q.CodebookState.from_embedding(hk_state["vq"]["embeddings"].T, initial_count=0.0)

    for step, z in enumerate(inputs, start=1):
        out, hk_state = vq.apply(params, hk_state, z, is_training=True)
        quantized = q.quantize(z, ours.embedding)
        np.testing.assert_array_equal(quantized.indices, out["encoding_indices"])
        np.testing.assert_allclose(quantized.quantized, out["quantize"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(BETA * jnp.mean(quantized.commitment_loss), out["loss"], rtol=1e-5)
        counts = q.code_counts(quantized.indices, NUM_CODES)
        np.testing.assert_allclose(q.perplexity(counts), out["perplexity"], rtol=1e-5)

        ours = q.ema_update(ours, z, quantized.indices, decay=DECAY, epsilon=EPSILON, debias=True)
        np.testing.assert_allclose(ours.embedding, hk_state["vq"]["embeddings"].T, rtol=1e-5, atol=1e-6)
        cluster = {k: v for k, v in hk_state.items() if k.endswith("ema_cluster_size")}
        dw = {k: v for k, v in hk_state.items() if k.endswith("ema_dw")}
        np.testing.assert_allclose(ours.cluster_size, next(iter(cluster.values()))["hidden"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ours.embed_sum, next(iter(dw.values()))["hidden"].T, rtol=1e-5, atol=1e-7)
        assert int(ours.num_updates) == int(next(iter(cluster.values()))["counter"]) == step

    # The comparison is only meaningful if some codes went unused (haiku zeroes them).
    assert np.sum(np.all(np.asarray(ours.embedding) == 0.0, axis=-1)) > 0
