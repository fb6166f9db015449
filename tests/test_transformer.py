"""Tests for vqjax.nets.transformer: the causal mask and label conditioning of the GPT prior,
the full attention of the MaskGIT prior, and the key/value-cache decoding against the full
forward pass (teacher forcing)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_transformer_params
from vqjax.nets.transformer import Transformer

VOCAB, SEQ_LEN, NUM_CLASSES, BATCH = 16, 12, 3, 4
SIZES = dict(num_classes=NUM_CLASSES, num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64)


def _build(causal: bool, seed: int):
    model = Transformer(vocab_size=VOCAB, seq_len=SEQ_LEN, causal=causal, **SIZES)
    params = random_transformer_params(model, seed)
    forward = jax.jit(lambda tokens, labels: model.apply({"params": params}, tokens, labels))
    return model, params, forward


@pytest.fixture(scope="module")
def gpt():
    return _build(causal=True, seed=0)


@pytest.fixture(scope="module")
def maskgit():
    return _build(causal=False, seed=1)


def _random_tokens(seed: int, high: int = VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (BATCH, SEQ_LEN)).astype(np.int32)


def _labels(seed: int) -> np.ndarray:
    # Labels 0..num_classes, the null label num_classes included.
    return np.random.default_rng(seed).integers(0, NUM_CLASSES + 1, (BATCH,)).astype(np.int32)


def _changed_at(tokens: np.ndarray, j: int, high: int = VOCAB) -> np.ndarray:
    """The tokens with position j replaced by a different code in every row."""
    other = tokens.copy()
    other[:, j] = (tokens[:, j] + 1 + np.arange(BATCH) % (high - 1)) % high
    assert np.all(other[:, j] != tokens[:, j])
    return other


# ----------------------------------------------------------------------------------------
# Basics: properties, parameter shapes, logits shape and dtype.


def test_properties_and_parameter_shapes(gpt, maskgit):
    for model, params, causal in [(gpt[0], gpt[1], True), (maskgit[0], maskgit[1], False)]:
        assert model.mask_token == VOCAB
        assert model.null_label == NUM_CLASSES
        # GPT: [condition, t_0 .. t_{L-2}]; MaskGIT: [condition, t_0 .. t_{L-1}].
        assert model.max_len == (SEQ_LEN if causal else SEQ_LEN + 1)
        chex.assert_shape(params["position_embed"], (model.max_len, 32))
        # MaskGIT embeds the mask token too; the head predicts codes only.
        chex.assert_shape(params["token_embed"]["embedding"], (VOCAB + (0 if causal else 1), 32))
        chex.assert_shape(params["class_embed"]["embedding"], (NUM_CLASSES + 1, 32))
        chex.assert_shape(params["head"]["kernel"], (32, VOCAB))


@pytest.mark.parametrize("which", ["gpt", "maskgit"])
def test_logits_shape_dtype_and_finite(which, gpt, maskgit):
    model, _, forward = gpt if which == "gpt" else maskgit
    tokens = _random_tokens(3)
    if which == "maskgit":
        tokens[:, ::3] = model.mask_token  # the mask token is a valid MaskGIT input
    logits = forward(jnp.asarray(tokens), jnp.asarray(_labels(4)))
    chex.assert_shape(logits, (BATCH, SEQ_LEN, VOCAB))
    assert logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    # Not a constant: the logits vary over the vocabulary.
    assert np.all(np.asarray(logits).std(axis=-1) > 0.1)


# ----------------------------------------------------------------------------------------
# The causal mask and the alignment of GPT's logits.


@pytest.mark.parametrize("j", [0, 1, 5, SEQ_LEN - 2])
def test_gpt_logits_do_not_depend_on_current_or_later_tokens(j, gpt):
    """logits[:, i] is the distribution of tokens[:, i]: it reads t_<i only, so changing t_j
    leaves logits[:, :j+1] bit-identical and changes every later position."""
    _, _, forward = gpt
    tokens, labels = _random_tokens(10 + j), jnp.asarray(_labels(5))
    base = np.asarray(forward(jnp.asarray(tokens), labels))
    other = np.asarray(forward(jnp.asarray(_changed_at(tokens, j)), labels))
    np.testing.assert_array_equal(other[:, :j + 1], base[:, :j + 1])
    difference = np.abs(other[:, j + 1:] - base[:, j + 1:]).max(axis=-1)  # [B, L-j-1]
    assert np.all(difference > 1e-4), difference


def test_gpt_last_token_is_never_read(gpt):
    _, _, forward = gpt
    tokens, labels = _random_tokens(20), jnp.asarray(_labels(6))
    base = np.asarray(forward(jnp.asarray(tokens), labels))
    other = np.asarray(forward(jnp.asarray(_changed_at(tokens, SEQ_LEN - 1)), labels))
    np.testing.assert_array_equal(other, base)


def test_gpt_first_position_reads_only_the_label(gpt):
    _, _, forward = gpt
    labels = jnp.asarray(_labels(7))
    first = np.asarray(forward(jnp.asarray(_random_tokens(21)), labels))[:, 0]
    second = np.asarray(forward(jnp.asarray(_random_tokens(22)), labels))[:, 0]
    np.testing.assert_array_equal(first, second)


def test_maskgit_attention_is_bidirectional(maskgit):
    """Every position reads every token: changing the last token changes position 0."""
    model, _, forward = maskgit
    tokens, labels = _random_tokens(30, VOCAB + 1), jnp.asarray(_labels(8))
    base = np.asarray(forward(jnp.asarray(tokens), labels))
    for j in [SEQ_LEN - 1, 0]:
        other = np.asarray(forward(jnp.asarray(_changed_at(tokens, j, VOCAB + 1)), labels))
        difference = np.abs(other - base).max(axis=-1)  # [B, L]
        assert np.all(difference > 1e-4), (j, difference)


@pytest.mark.parametrize("which", ["gpt", "maskgit"])
def test_label_changes_logits_at_every_position(which, gpt, maskgit):
    _, _, forward = gpt if which == "gpt" else maskgit
    tokens = jnp.asarray(_random_tokens(40))
    labels = _labels(9)
    base = np.asarray(forward(tokens, jnp.asarray(labels)))
    other = np.asarray(forward(tokens, jnp.asarray((labels + 1) % (NUM_CLASSES + 1))))
    difference = np.abs(other - base).max(axis=-1)  # [B, L]
    assert np.all(difference > 1e-4), difference
    # Rows are independent: one row's label does not move another row's logits.
    mixed = labels.copy()
    mixed[0] = (labels[0] + 1) % (NUM_CLASSES + 1)
    partial = np.asarray(forward(tokens, jnp.asarray(mixed)))
    np.testing.assert_allclose(partial[1:], base[1:], atol=1e-5)
    assert np.abs(partial[0] - base[0]).max() > 1e-4


# ----------------------------------------------------------------------------------------
# Input checks.


@pytest.mark.parametrize("tokens_shape, labels_shape", [
    ((SEQ_LEN,), (1,)),                # no batch axis
    ((BATCH, SEQ_LEN - 1), (BATCH,)),  # wrong length
    ((BATCH, SEQ_LEN + 1), (BATCH,)),
    ((BATCH, 3, 4), (BATCH,)),         # a code map, not flattened
    ((BATCH, SEQ_LEN), (BATCH + 1,)),  # one label too many
    ((BATCH, SEQ_LEN), (BATCH, 1)),    # labels with an extra axis
    ((BATCH, SEQ_LEN), ()),            # a scalar label
])
@pytest.mark.parametrize("which", ["gpt", "maskgit"])
def test_bad_shapes_raise(which, tokens_shape, labels_shape, gpt, maskgit):
    model, params, _ = gpt if which == "gpt" else maskgit
    with pytest.raises(ValueError):
        model.apply({"params": params}, jnp.zeros(tokens_shape, jnp.int32),
                    jnp.zeros(labels_shape, jnp.int32))


def test_decode_step_is_for_the_causal_model_only(maskgit):
    model, params, _ = maskgit
    with pytest.raises(ValueError):
        model.apply({"params": params}, jnp.zeros((BATCH,), jnp.int32), jnp.zeros((BATCH,), jnp.int32),
                    0, method=Transformer.decode_step, mutable=["cache"])


# ----------------------------------------------------------------------------------------
# Key/value cache.


def test_decode_step_matches_full_forward_teacher_forcing(gpt):
    """decode_step at positions 0..L-1, fed the true previous tokens, gives the logits of the
    full forward pass at every position."""
    model, params, forward = gpt
    tokens, labels = jnp.asarray(_random_tokens(50)), jnp.asarray(_labels(10))
    expected = np.asarray(forward(tokens, labels))

    # A zero cache of the shapes position 0 creates; then one compiled step for all positions.
    cache = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:, 0], labels, 0,
                                              method=Transformer.decode_step))["cache"]
    cache = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), cache)

    @jax.jit
    def step(cache, previous, position):
        logits, updated = model.apply({"params": params, "cache": cache}, previous, labels, position,
                                      method=Transformer.decode_step, mutable=["cache"])
        return logits, updated["cache"]

    got = []
    for position in range(SEQ_LEN):
        previous = tokens[:, max(position - 1, 0)]
        logits, cache = step(cache, previous, jnp.int32(position))
        chex.assert_shape(logits, (BATCH, VOCAB))
        assert logits.dtype == jnp.float32
        got.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(got, axis=1), expected, atol=1e-5, rtol=1e-5)
    # The cache holds one key per position and head: [B, L, H, Dh].
    chex.assert_shape(cache["block_0"]["attn"]["key"], (BATCH, SEQ_LEN, 4, 8))


# ----------------------------------------------------------------------------------------
# Dropout.


def test_dropout_only_in_training(gpt):
    model, params, forward = gpt
    noisy = model.clone(dropout=0.5, attn_dropout=0.5)
    tokens, labels = jnp.asarray(_random_tokens(60)), jnp.asarray(_labels(11))

    @jax.jit
    def run(rng):
        evaluation = noisy.apply({"params": params}, tokens, labels)
        training = noisy.apply({"params": params}, tokens, labels, train=True, rngs={"dropout": rng})
        return evaluation, training

    evaluation, training = run(jax.random.key(0))
    _, training_again = run(jax.random.key(1))
    # Evaluation is the dropout-free model; training draws masks from the rng.
    np.testing.assert_allclose(evaluation, forward(tokens, labels), atol=1e-5)
    assert np.abs(np.asarray(training) - np.asarray(evaluation)).max() > 1e-2
    assert np.abs(np.asarray(training) - np.asarray(training_again)).max() > 1e-2
