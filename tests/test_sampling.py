"""Tests for vqjax.sampling: logit filtering against numpy references, GPT sampling with the
key/value cache against full recomputation and greedy decoding, MaskGIT's schedule, reveal
counts and inpainting, classifier-free guidance, and pixel-to-token masks."""

import math
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqjax import sampling
from vqjax.sampling.decode import NEG_INF
from tests.helpers import random_transformer_params
from vqjax.nets.transformer import Transformer

VOCAB, NUM_CLASSES, BATCH = 16, 3, 4
GPT_LEN = 12          # GPT code maps: 12 tokens
MAP_SIDE = 4          # MaskGIT code maps: 4 x 4 = 16 tokens
MASKGIT_LEN = MAP_SIDE * MAP_SIDE
STEPS = 5             # MaskGIT decoding steps (cosine schedule) in every test but one
SIZES = dict(vocab_size=VOCAB, num_classes=NUM_CLASSES, num_layers=2, num_heads=4, embed_dim=32,
             mlp_dim=64)


class Prior:
    """A model, its parameters and its jit-compiled forward pass."""

    def __init__(self, causal: bool, seq_len: int, seed: int):
        self.model = Transformer(seq_len=seq_len, causal=causal, **SIZES)
        self.params = random_transformer_params(self.model, seed)
        model, params = self.model, self.params
        self.forward = jax.jit(lambda tokens, labels: model.apply({"params": params}, tokens, labels))

    # Every keyword is passed, defaults included: jax.jit compiles once per set of keywords
    # given, and the compilations are the cost of these tests.
    def gpt(self, rng, labels, *, temperature=1.0, top_k=0, top_p=1.0, guidance=False,
            guidance_scale=1.0, known_tokens=None, known_mask=None, use_cache=True):
        return sampling.sample_gpt(self.model, self.params, rng, jnp.asarray(labels), temperature=temperature,
                                   top_k=top_k, top_p=top_p, guidance=guidance, guidance_scale=guidance_scale,
                                   known_tokens=known_tokens, known_mask=known_mask, use_cache=use_cache)

    def maskgit(self, rng, labels, *, tokens=None, token_mask=None, num_steps=STEPS, schedule="cosine",
                temperature=1.0, choice_temperature=4.5, guidance=False, guidance_scale=1.0,
                return_history=True):
        """By default every position starts masked, given as tokens with an all-True mask (one
        compiled form for generation and inpainting; test_maskgit_default_start covers
        tokens=None)."""
        if tokens is None:
            tokens = jnp.zeros((BATCH, self.model.seq_len), jnp.int32)
            token_mask = jnp.ones((BATCH, self.model.seq_len), bool)
        return sampling.sample_maskgit(self.model, self.params, rng, jnp.asarray(labels), tokens=tokens,
                                       token_mask=token_mask, num_steps=num_steps, schedule=schedule,
                                       temperature=temperature, choice_temperature=choice_temperature,
                                       guidance=guidance, guidance_scale=guidance_scale,
                                       return_history=return_history)


@pytest.fixture(scope="module")
def gpt():
    return Prior(causal=True, seq_len=GPT_LEN, seed=0)


@pytest.fixture(scope="module")
def maskgit():
    return Prior(causal=False, seq_len=MASKGIT_LEN, seed=1)


LABELS = np.array([0, 1, 2, NUM_CLASSES], np.int32)  # the null label included
NULL_LABELS = np.full((BATCH,), NUM_CLASSES, np.int32)


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed)


# ----------------------------------------------------------------------------------------
# numpy references for the logit filters.


def _np_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _np_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    keep = np.zeros(logits.shape, bool)
    for row, values in enumerate(logits):
        if k <= 0:
            keep[row] = True
            continue
        # Descending, ties by lower index: sort by (-value, index).
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        keep[row, order[:k]] = True
    return keep


def _np_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """The smallest prefix of the descending order whose probability sum reaches p."""
    probs = _np_softmax(logits.astype(np.float64))
    keep = np.zeros(logits.shape, bool)
    for row, values in enumerate(logits):
        total = 0.0
        for i in sorted(range(len(values)), key=lambda i: (-values[i], i)):
            keep[row, i] = True
            total += probs[row, i]
            if total >= p:
                break
    return keep


def _np_filter(logits: np.ndarray, temperature: float, k: int, p: float) -> np.ndarray:
    """Kept entries of filter_logits: top-k, then top-p of the renormalised remainder."""
    scaled = logits.astype(np.float64) / temperature
    keep_k = _np_top_k(scaled, k)
    keep_p = _np_top_p(np.where(keep_k, scaled, -np.inf), p)
    return keep_k & keep_p


def _prefix_sums_far_from(logits: np.ndarray, p: float, margin: float = 1e-4) -> bool:
    """True when no cumulative sorted probability lies within `margin` of p (no float ties at
    the nucleus boundary)."""
    probs = -np.sort(-_np_softmax(logits.astype(np.float64)), axis=-1)
    return bool(np.all(np.abs(np.cumsum(probs, axis=-1) - p) > margin))


# ----------------------------------------------------------------------------------------
# top-k


@pytest.mark.parametrize("k", [1, 2, 5, 15, 16, 40])
def test_top_k_mask_matches_numpy(k):
    logits = np.random.default_rng(k).normal(size=(8, VOCAB)).astype(np.float32)
    got = np.asarray(sampling.top_k_mask(jnp.asarray(logits), k))
    np.testing.assert_array_equal(got, _np_top_k(logits, k))
    np.testing.assert_array_equal(got.sum(axis=-1), min(k, VOCAB))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_top_k_mask_with_ties_keeps_exactly_k_lowest_indices_first(k):
    # Values from {0, 1, 2}: many ties at every rank.
    logits = np.random.default_rng(10 + k).integers(0, 3, (8, VOCAB)).astype(np.float32)
    got = np.asarray(sampling.top_k_mask(jnp.asarray(logits), k))
    np.testing.assert_array_equal(got.sum(axis=-1), k)
    np.testing.assert_array_equal(got, _np_top_k(logits, k))
    # Hand case: four equal maxima, k = 2 keeps the first two.
    row = jnp.array([[1.0, 3.0, 3.0, 0.0, 3.0, 3.0]])
    np.testing.assert_array_equal(sampling.top_k_mask(row, 2), [[False, True, True, False, False, False]])


@pytest.mark.parametrize("k", [0, -1])
def test_top_k_mask_non_positive_k_keeps_all(k):
    logits = np.random.default_rng(3).normal(size=(8, VOCAB)).astype(np.float32)
    assert np.all(np.asarray(sampling.top_k_mask(jnp.asarray(logits), k)))


def test_top_k_mask_under_jit_with_traced_k():
    logits = np.random.default_rng(4).normal(size=(8, VOCAB)).astype(np.float32)
    masked = jax.jit(sampling.top_k_mask)
    for k in [0, 3, 9]:
        np.testing.assert_array_equal(masked(jnp.asarray(logits), k), _np_top_k(logits, k))


# ----------------------------------------------------------------------------------------
# top-p


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.75, 0.9, 0.99])
def test_top_p_mask_matches_numpy(p):
    rng = np.random.default_rng(int(p * 100))
    logits = (2.0 * rng.normal(size=(8, VOCAB))).astype(np.float32)
    assert _prefix_sums_far_from(logits, p)
    got = np.asarray(sampling.top_p_mask(jnp.asarray(logits), p))
    expected = _np_top_p(logits, p)
    np.testing.assert_array_equal(got, expected)
    # The nucleus reaches p, and without its least probable member it would not.
    probs = _np_softmax(logits.astype(np.float64))
    kept_mass = np.where(got, probs, 0).sum(axis=-1)
    smallest_kept = np.where(got, probs, np.inf).min(axis=-1)
    assert np.all(kept_mass >= p)
    assert np.all(kept_mass - smallest_kept < p)


def test_top_p_mask_hand_case_and_ties():
    # probs [0.1, 0.4, 0.2, 0.3]: sorted 0.4, 0.3, 0.2, 0.1.
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
    np.testing.assert_array_equal(sampling.top_p_mask(logits, 0.35), [[False, True, False, False]])
    np.testing.assert_array_equal(sampling.top_p_mask(logits, 0.6), [[False, True, False, True]])
    np.testing.assert_array_equal(sampling.top_p_mask(logits, 0.8), [[False, True, True, True]])
    # Four equal entries of 0.25: p = 0.6 needs three of them, the lowest indices.
    np.testing.assert_array_equal(sampling.top_p_mask(jnp.zeros((1, 4)), 0.6), [[True, True, True, False]])


def test_top_p_one_keeps_all_and_tiny_p_keeps_the_top():
    logits = (2.0 * np.random.default_rng(5).normal(size=(8, VOCAB))).astype(np.float32)
    assert np.all(np.asarray(sampling.top_p_mask(jnp.asarray(logits), 1.0)))
    for p in [1e-6, 0.0]:
        got = np.asarray(sampling.top_p_mask(jnp.asarray(logits), p))
        np.testing.assert_array_equal(got.sum(axis=-1), 1)
        np.testing.assert_array_equal(got.argmax(axis=-1), logits.argmax(axis=-1))
    # A dominant entry: any p below its probability keeps it alone.
    np.testing.assert_array_equal(sampling.top_p_mask(jnp.array([[0.0, 9.0, 1.0]]), 0.99),
                                  [[False, True, False]])


def test_top_p_one_keeps_all_even_very_improbable_entries():
    logits = jnp.array([[5.0, 0.0, -20.0]])  # probs ~ [0.993, 0.0067, 2e-11]
    assert np.all(np.asarray(sampling.top_p_mask(logits, 1.0)))
    kept = np.asarray(sampling.filter_logits(logits)) > NEG_INF / 2
    assert np.all(kept)


# ----------------------------------------------------------------------------------------
# filter_logits


@pytest.mark.parametrize("temperature, k, p", [
    (1.0, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.7), (0.5, 6, 0.8), (2.0, 10, 0.6), (0.7, 3, 0.95),
    (1.3, 1, 0.5),
])
def test_filter_logits_matches_numpy(temperature, k, p):
    rng = np.random.default_rng(int(100 * temperature) + k)
    logits = (2.0 * rng.normal(size=(8, VOCAB))).astype(np.float32)
    scaled = logits.astype(np.float64) / temperature
    if p < 1.0:
        for row_keep, row in zip(_np_top_k(scaled, k), scaled):
            assert _prefix_sums_far_from(np.where(row_keep, row, -np.inf)[None], p)
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits), temperature, k, p))
    assert got.dtype == np.float32
    expected_keep = _np_filter(logits, temperature, k, p)
    np.testing.assert_array_equal(got > NEG_INF / 2, expected_keep)
    np.testing.assert_allclose(got[expected_keep], scaled[expected_keep], rtol=1e-6)
    np.testing.assert_array_equal(got[~expected_keep], np.float32(NEG_INF))


def test_filter_logits_applies_top_k_before_top_p():
    """probs [0.4, 0.3, 0.2, 0.1]: top-p 0.5 alone keeps two; after top-k 2 the remainder is
    [4/7, 3/7] and top-p 0.5 keeps one."""
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
    kept = lambda filtered: np.asarray(filtered) > NEG_INF / 2
    np.testing.assert_array_equal(kept(sampling.filter_logits(logits, top_p=0.5)), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(kept(sampling.filter_logits(logits, top_k=2, top_p=0.5)), [[1, 0, 0, 0]])
    np.testing.assert_array_equal(kept(sampling.filter_logits(logits, top_k=3, top_p=0.6)), [[1, 1, 0, 0]])


def test_filter_logits_temperature_changes_the_nucleus():
    # probs [0.5, 0.3, 0.2]; at temperature 0.5 they become [25, 9, 4] / 38.
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
    kept = lambda t: np.asarray(sampling.filter_logits(logits, t, 0, 0.6)) > NEG_INF / 2
    np.testing.assert_array_equal(kept(1.0), [[True, True, False]])   # 0.5 < 0.6 <= 0.8
    np.testing.assert_array_equal(kept(0.5), [[True, False, False]])  # 25/38 >= 0.6
    np.testing.assert_allclose(sampling.filter_logits(logits, 0.25), np.log([[0.5, 0.3, 0.2]]) * 4, rtol=1e-6)


def test_sampling_filtered_logits_never_returns_a_filtered_token():
    rng = np.random.default_rng(7)
    logits = (1.5 * rng.normal(size=(3, VOCAB))).astype(np.float32)
    temperature, k, p = 0.8, 6, 0.8
    filtered = sampling.filter_logits(jnp.asarray(logits), temperature, k, p)
    keep = _np_filter(logits, temperature, k, p)
    assert np.all(keep.sum(axis=-1) >= 2)  # a real choice in every row
    draws = np.asarray(jax.random.categorical(_key(0), filtered, shape=(20000, 3)))
    for row in range(3):
        counts = np.bincount(draws[:, row], minlength=VOCAB)
        assert np.all(counts[~keep[row]] == 0)
        # The kept tokens at their renormalised probabilities.
        probs = np.where(keep[row], _np_softmax(logits[row] / temperature), 0.0)
        np.testing.assert_allclose(counts / 20000, probs / probs.sum(), atol=0.015)


# ----------------------------------------------------------------------------------------
# Guidance


def test_guide_closed_form():
    rng = np.random.default_rng(8)
    cond, uncond = (jnp.asarray(rng.normal(size=(3, VOCAB)), jnp.float32) for _ in range(2))
    np.testing.assert_array_equal(sampling.guide(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(sampling.guide(cond, uncond, 1.0), cond, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sampling.guide(cond, uncond, 3.0), 3 * np.asarray(cond) - 2 * np.asarray(uncond),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------
# GPT sampling. Two compiled forms per use_cache: plain sampling without known tokens, and
# guided sampling with known tokens (a known_mask of all False where none are wanted).


def _known(seed: int):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (BATCH, GPT_LEN)).astype(np.int32)
    mask = rng.random((BATCH, GPT_LEN)) < 0.5
    mask[0] = False            # a row sampled freely
    mask[1, :4] = True         # a row whose first tokens are given (a completion)
    mask[1, 4:] = False
    return jnp.asarray(tokens), jnp.asarray(mask)


NOTHING_KNOWN = dict(known_tokens=jnp.zeros((BATCH, GPT_LEN), jnp.int32),
                     known_mask=jnp.zeros((BATCH, GPT_LEN), bool))

GPT_SETTINGS = {
    "plain": dict(),
    "filtered": dict(temperature=0.7, top_k=5, top_p=0.8),
    "guided": dict(guidance=True, guidance_scale=3.0, **NOTHING_KNOWN),
    "guided_known": dict(guidance=True, guidance_scale=2.0, top_k=6, known=1),
    "guided_known_filtered": dict(guidance=True, guidance_scale=2.0, top_k=4, top_p=0.9, temperature=1.2,
                                  known=2),
}


@pytest.mark.parametrize("setting", list(GPT_SETTINGS))
def test_gpt_cache_matches_full_recompute(setting, gpt):
    kwargs = dict(GPT_SETTINGS[setting])
    if "known" in kwargs:
        kwargs["known_tokens"], kwargs["known_mask"] = _known(kwargs.pop("known"))
    for seed in [0, 1]:
        cached = gpt.gpt(_key(seed), LABELS, use_cache=True, **kwargs)
        full = gpt.gpt(_key(seed), LABELS, use_cache=False, **kwargs)
        chex.assert_shape(cached, (BATCH, GPT_LEN))
        assert cached.dtype == jnp.int32
        np.testing.assert_array_equal(cached, full)
        assert np.all((np.asarray(cached) >= 0) & (np.asarray(cached) < VOCAB))
        if "known_mask" in kwargs:
            mask = np.asarray(kwargs["known_mask"])
            np.testing.assert_array_equal(np.asarray(cached)[mask], np.asarray(kwargs["known_tokens"])[mask])
            assert np.any(mask) == setting.startswith("guided_known")


def test_gpt_all_known_returns_the_known_tokens(gpt):
    known_tokens, _ = _known(3)
    for use_cache in [True, False]:
        got = gpt.gpt(_key(3), LABELS, guidance=True, guidance_scale=2.0, known_tokens=known_tokens,
                      known_mask=jnp.ones((BATCH, GPT_LEN), bool), use_cache=use_cache)
        np.testing.assert_array_equal(got, known_tokens)


def _greedy_reference(prior: Prior, labels, guidance_scale=None, known_tokens=None, known_mask=None):
    """Greedy decoding with the full forward pass, one position at a time, in numpy; with a
    guidance scale, the argmax of uncond + scale * (cond - uncond)."""
    tokens = np.zeros((BATCH, GPT_LEN), np.int32)
    for i in range(GPT_LEN):
        logits = np.asarray(prior.forward(jnp.asarray(tokens), jnp.asarray(labels)))[:, i]
        if guidance_scale is not None:
            uncond = np.asarray(prior.forward(jnp.asarray(tokens), jnp.asarray(NULL_LABELS)))[:, i]
            logits = uncond + guidance_scale * (logits - uncond)
        tokens[:, i] = logits.argmax(axis=-1)
        if known_mask is not None:
            tokens[:, i] = np.where(known_mask[:, i], known_tokens[:, i], tokens[:, i])
    return tokens


def test_gpt_top_k_one_and_tiny_top_p_are_greedy(gpt):
    expected = _greedy_reference(gpt, LABELS)
    for seed in [0, 1]:
        np.testing.assert_array_equal(gpt.gpt(_key(seed), LABELS, top_k=1), expected)
        np.testing.assert_array_equal(gpt.gpt(_key(seed), LABELS, top_p=1e-6), expected)


def test_gpt_greedy_guided_completion_reads_the_known_tokens(gpt):
    """Guided greedy completions equal a numpy loop over the full forward pass with the
    guidance formula and the forced tokens."""
    known_tokens, known_mask = _known(4)
    expected = _greedy_reference(gpt, LABELS, 2.5, np.asarray(known_tokens), np.asarray(known_mask))
    for use_cache in [True, False]:
        got = gpt.gpt(_key(0), LABELS, guidance=True, guidance_scale=2.5, known_tokens=known_tokens,
                      known_mask=known_mask, top_k=1, use_cache=use_cache)
        np.testing.assert_array_equal(got, expected)
    # Other forced tokens change the completions at some free position.
    other = gpt.gpt(_key(0), LABELS, guidance=True, guidance_scale=2.5, known_tokens=(known_tokens + 1) % VOCAB,
                    known_mask=known_mask, top_k=1)
    free = ~np.asarray(known_mask)
    assert np.any(np.asarray(got)[free] != np.asarray(other)[free])


def test_gpt_first_token_distribution(gpt):
    """Position 0 reads only the label: its samples follow softmax(logits[:, 0] / T), top-k
    filtered."""
    labels = np.full((BATCH,), 1, np.int32)
    logits = np.asarray(gpt.forward(jnp.zeros((BATCH, GPT_LEN), jnp.int32), jnp.asarray(labels)))[0, 0]
    probs = _np_softmax(logits.astype(np.float64) / 0.8)
    keep = _np_top_k(logits[None], 6)[0]
    draws = np.concatenate([np.asarray(gpt.gpt(_key(seed), labels, temperature=0.8, top_k=6))[:, 0]
                            for seed in range(300)])
    counts = np.bincount(draws, minlength=VOCAB)
    assert np.all(counts[~keep] == 0)
    expected = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
    np.testing.assert_allclose(counts / len(draws), expected, atol=0.04)


def test_gpt_guidance_scale_one_is_conditional_and_zero_is_unconditional(gpt):
    guided = lambda seed, labels, scale: gpt.gpt(_key(seed), labels, guidance=True, guidance_scale=scale,
                                                 **NOTHING_KNOWN)
    for seed in [0, 1]:
        plain = gpt.gpt(_key(seed), LABELS)
        np.testing.assert_array_equal(guided(seed, LABELS, 1.0), plain)
        unconditional = gpt.gpt(_key(seed), NULL_LABELS)
        np.testing.assert_array_equal(guided(seed, LABELS, 0.0), unconditional)
        # Guidance that matters: a large scale changes the samples.
        assert np.any(np.asarray(guided(seed, LABELS, 4.0))[:3] != np.asarray(plain)[:3])
        # The null label guided towards itself is unconditional sampling at any scale.
        np.testing.assert_array_equal(guided(seed, NULL_LABELS, 4.0), unconditional)


def test_gpt_determinism(gpt):
    first = np.asarray(gpt.gpt(_key(5), LABELS, top_k=8))
    np.testing.assert_array_equal(gpt.gpt(_key(5), LABELS, top_k=8), first)
    assert np.any(np.asarray(gpt.gpt(_key(6), LABELS, top_k=8)) != first)
    # The label conditions the samples.
    assert np.any(np.asarray(gpt.gpt(_key(5), (LABELS + 1) % (NUM_CLASSES + 1), top_k=8)) != first)


def test_gpt_bad_labels_raise(gpt):
    with pytest.raises(ValueError):
        gpt.gpt(_key(0), np.zeros((BATCH, 1), np.int32))


# ----------------------------------------------------------------------------------------
# MaskGIT schedule


SCHEDULE_FORMULAS = {
    "cosine": lambda r: np.cos(np.pi / 2 * r),
    "linear": lambda r: 1 - r,
    "square": lambda r: 1 - r ** 2,
    "cubic": lambda r: 1 - r ** 3,
    "sqrt": lambda r: 1 - np.sqrt(r),
}


@pytest.mark.parametrize("schedule", list(SCHEDULE_FORMULAS))
def test_mask_ratio_formulas(schedule):
    r = np.linspace(0.0, 1.0, 21)
    got = np.asarray(sampling.mask_ratio(jnp.asarray(r), schedule))
    chex.assert_shape(got, r.shape)
    np.testing.assert_allclose(got, np.clip(SCHEDULE_FORMULAS[schedule](r), 1e-6, 1.0), atol=1e-6)
    assert float(sampling.mask_ratio(0.0, schedule)) == 1.0
    np.testing.assert_allclose(float(sampling.mask_ratio(1.0, schedule)), 1e-6, rtol=1e-3)  # clipped
    assert np.all(np.diff(got) < 0)  # strictly decreasing, from 1 at r = 0 to the clip at r = 1
    # Clipped outside [0, 1] too.
    assert float(sampling.mask_ratio(-0.5, "linear")) == 1.0
    np.testing.assert_allclose(float(sampling.mask_ratio(1.5, "linear")), 1e-6, rtol=1e-3)


def test_unknown_schedule_raises(maskgit):
    with pytest.raises(ValueError):
        sampling.mask_ratio(0.5, "exponential")
    with pytest.raises(ValueError):
        sampling.masked_counts(10, 4, "exponential")
    with pytest.raises(ValueError):
        maskgit.maskgit(_key(0), LABELS, schedule="exponential")


def test_masked_counts_hand_case():
    # n = 12, T = 5, cosine: floor(12 cos(pi/2 r)) at r = 0.2, 0.4, 0.6, 0.8, then 0.
    expected = [math.floor(12 * math.cos(math.pi / 2 * (t + 1) / 5)) for t in range(4)] + [0]
    assert expected == [11, 9, 7, 3, 0]
    np.testing.assert_array_equal(sampling.masked_counts(12, 5), expected)
    np.testing.assert_array_equal(sampling.masked_counts(MASKGIT_LEN, STEPS), [15, 12, 9, 4, 0])
    # Few tokens, many steps: at least one revealed per step while >1 left, one kept until the end.
    np.testing.assert_array_equal(sampling.masked_counts(3, 6), [2, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(sampling.masked_counts(0, 3), [0, 0, 0])
    np.testing.assert_array_equal(sampling.masked_counts(7, 1), [0])


_EXACT = {"linear": lambda r: 1 - r, "square": lambda r: 1 - r ** 2, "cubic": lambda r: 1 - r ** 3}


def _reference_counts(n: int, steps: int, schedule: str):
    """masked_counts in exact arithmetic (fractions; float64 for cos and sqrt); also whether
    some n * gamma is an exact integer (where float32 rounding decides the floor)."""
    counts, unknown, integer = [], n, False
    for t in range(steps):
        r = Fraction(t + 1, steps)
        if schedule in _EXACT:
            value = n * _EXACT[schedule](r)
            integer |= value.denominator == 1 and t < steps - 1
        else:
            value = n * float(SCHEDULE_FORMULAS[schedule](float(r)))
            integer |= abs(value - round(value)) < 1e-6 and t < steps - 1
        target = max(math.floor(value), 0)
        unknown = 0 if t == steps - 1 or unknown == 0 else max(1, min(unknown - 1, target))
        counts.append(unknown)
    return counts, integer


@pytest.mark.parametrize("schedule", list(SCHEDULE_FORMULAS))
def test_masked_counts_match_exact_arithmetic(schedule):
    checked = 0
    for steps in range(1, 11):
        for n in range(0, 41):
            expected, integer = _reference_counts(n, steps, schedule)
            if integer:
                continue  # see test_masked_counts_at_exact_integer_products
            got = sampling.masked_counts(n, steps, schedule)
            assert got.shape == (steps,)
            np.testing.assert_array_equal(got, expected, err_msg=f"n={n} T={steps}")
            checked += 1
    assert checked > 200


@pytest.mark.parametrize("n, steps, schedule, expected", [
    (4, 3, "cosine", [3, 2, 0]),
    (12, 6, "linear", [10, 8, 6, 4, 2, 0]),
])
def test_masked_counts_at_exact_integer_products(n, steps, schedule, expected):
    assert _reference_counts(n, steps, schedule) == (expected, True)
    np.testing.assert_array_equal(sampling.masked_counts(n, steps, schedule), expected)


# ----------------------------------------------------------------------------------------
# MaskGIT decoding


def _mask_counts(history) -> np.ndarray:
    return (np.asarray(history) == VOCAB).sum(axis=-1)  # [T, B]


def _check_revealed_tokens_stay(history, final):
    history = np.asarray(history)
    for t in range(1, len(history)):
        revealed = history[t - 1] != VOCAB
        np.testing.assert_array_equal(history[t][revealed], history[t - 1][revealed])
    np.testing.assert_array_equal(history[-1], final)


def test_maskgit_generation_reveal_counts(maskgit):
    for seed in [0, 1]:
        final, history = maskgit.maskgit(_key(seed), LABELS)
        chex.assert_shape(final, (BATCH, MASKGIT_LEN))
        chex.assert_shape(history, (STEPS, BATCH, MASKGIT_LEN))
        assert final.dtype == jnp.int32
        expected = np.asarray(_reference_counts(MASKGIT_LEN, STEPS, "cosine")[0])
        np.testing.assert_array_equal(_mask_counts(history), np.repeat(expected[:, None], BATCH, axis=1))
        assert np.all((np.asarray(final) >= 0) & (np.asarray(final) < VOCAB))
        _check_revealed_tokens_stay(history, final)


def test_maskgit_default_start(maskgit):
    """tokens=None (and no history, the defaults) is generation from an all-masked map."""
    final, _ = maskgit.maskgit(_key(2), LABELS)
    default = sampling.sample_maskgit(maskgit.model, maskgit.params, _key(2), jnp.asarray(LABELS),
                                      num_steps=STEPS)
    chex.assert_shape(default, (BATCH, MASKGIT_LEN))
    np.testing.assert_array_equal(default, final)


@pytest.mark.parametrize("inpaint", [False, True])
def test_maskgit_cold_revealed_tokens_are_the_argmax(inpaint, maskgit):
    """At a tiny temperature every revealed token is the argmax of the model's logits for the
    map before that step (computed here by the full forward pass)."""
    labels = jnp.asarray(LABELS)
    previous = np.full((BATCH, MASKGIT_LEN), VOCAB, np.int32)
    kwargs = {}
    if inpaint:
        token_mask = _inpainting_masks()
        known = np.random.default_rng(11).integers(0, VOCAB, (BATCH, MASKGIT_LEN)).astype(np.int32)
        kwargs = dict(tokens=jnp.asarray(known), token_mask=jnp.asarray(token_mask))
        previous = np.where(token_mask, VOCAB, known).astype(np.int32)
    final, history = maskgit.maskgit(_key(3), LABELS, temperature=1e-4, **kwargs)
    for t in range(STEPS):
        argmax = np.asarray(maskgit.forward(jnp.asarray(previous), labels)).argmax(axis=-1)
        current = np.asarray(history[t])
        new = (previous == VOCAB) & (current != VOCAB)
        assert new.sum() > 0
        np.testing.assert_array_equal(current[new], argmax[new])
        previous = current


def _inpainting_masks():
    """Token masks from pixel masks (16 x 16 pixels, factor 4): rows with 0, 1, 6 and 16 of the
    16 tokens to regenerate."""
    pixels = np.zeros((BATCH, 16, 16), bool)
    pixels[1, 5, 14] = True          # one pixel -> token (1, 3)
    pixels[2, 3:10, 0:6] = True      # token rows 0..2, columns 0..1
    pixels[3] = True
    token_mask = np.asarray(sampling.token_mask_from_pixels(pixels, 4)).reshape(BATCH, MASKGIT_LEN)
    np.testing.assert_array_equal(token_mask.sum(axis=-1), [0, 1, 6, 16])
    return token_mask


@pytest.mark.parametrize("guided", [False, True])
def test_maskgit_inpainting_keeps_known_tokens(guided, maskgit):
    token_mask = _inpainting_masks()
    known = np.random.default_rng(9).integers(0, VOCAB, (BATCH, MASKGIT_LEN)).astype(np.int32)
    kwargs = dict(guidance=True, guidance_scale=2.5) if guided else {}
    for seed in [0, 1]:
        final, history = maskgit.maskgit(_key(seed), LABELS, tokens=jnp.asarray(known),
                                         token_mask=jnp.asarray(token_mask), **kwargs)
        final, history = np.asarray(final), np.asarray(history)
        np.testing.assert_array_equal(final[~token_mask], known[~token_mask])
        for step in history:
            np.testing.assert_array_equal(step[~token_mask], known[~token_mask])
        assert np.all((final >= 0) & (final < VOCAB))
        _check_revealed_tokens_stay(history, final)
        # Each row reveals its n masked tokens as the schedule says (the exact-arithmetic counts).
        expected = np.stack([_reference_counts(int(n), STEPS, "cosine")[0] for n in token_mask.sum(axis=-1)], axis=1)
        np.testing.assert_array_equal(_mask_counts(history), expected)
        # The tokens under the mask are not read: other values there give the same result.
        scrambled = np.where(token_mask, (known + 5) % VOCAB, known)
        again, _ = maskgit.maskgit(_key(seed), LABELS, tokens=jnp.asarray(scrambled),
                                   token_mask=jnp.asarray(token_mask), **kwargs)
        np.testing.assert_array_equal(again, final)
    # Something was generated: the fully masked row differs from the known tokens.
    assert np.any(final[3] != known[3])


def test_maskgit_reveal_counts_follow_masked_counts_linear(maskgit):
    token_mask = np.zeros((BATCH, MASKGIT_LEN), bool)
    token_mask[:, :12] = True
    tokens = jnp.zeros((BATCH, MASKGIT_LEN), jnp.int32)
    _, history = maskgit.maskgit(_key(0), LABELS, tokens=tokens, token_mask=jnp.asarray(token_mask),
                                 num_steps=6, schedule="linear")
    expected = np.asarray(_reference_counts(12, 6, "linear")[0])
    np.testing.assert_array_equal(_mask_counts(history), np.repeat(expected[:, None], BATCH, axis=1))


@pytest.mark.parametrize("inpaint", [False, True])
def test_maskgit_guidance_scale_one_is_conditional_and_zero_is_unconditional(inpaint, maskgit):
    kwargs = {}
    if inpaint:
        token_mask = _inpainting_masks()
        known = np.random.default_rng(10).integers(0, VOCAB, (BATCH, MASKGIT_LEN)).astype(np.int32)
        kwargs = dict(tokens=jnp.asarray(known), token_mask=jnp.asarray(token_mask))
    for seed in [0, 1]:
        plain = maskgit.maskgit(_key(seed), LABELS, **kwargs)[0]
        scale_one = maskgit.maskgit(_key(seed), LABELS, guidance=True, guidance_scale=1.0, **kwargs)[0]
        np.testing.assert_array_equal(scale_one, plain)
        unconditional = maskgit.maskgit(_key(seed), NULL_LABELS, **kwargs)[0]
        scale_zero = maskgit.maskgit(_key(seed), LABELS, guidance=True, guidance_scale=0.0, **kwargs)[0]
        np.testing.assert_array_equal(scale_zero, unconditional)
        guided = maskgit.maskgit(_key(seed), LABELS, guidance=True, guidance_scale=4.0, **kwargs)[0]
        assert np.any(np.asarray(guided)[:3] != np.asarray(plain)[:3])


def test_maskgit_determinism(maskgit):
    first = np.asarray(maskgit.maskgit(_key(4), LABELS)[0])
    np.testing.assert_array_equal(maskgit.maskgit(_key(4), LABELS)[0], first)
    assert np.any(np.asarray(maskgit.maskgit(_key(5), LABELS)[0]) != first)
    assert np.any(np.asarray(maskgit.maskgit(_key(4), (LABELS + 1) % (NUM_CLASSES + 1))[0]) != first)


def test_maskgit_bad_labels_raise(maskgit):
    with pytest.raises(ValueError):
        maskgit.maskgit(_key(0), np.zeros((BATCH, 1), np.int32))


# ----------------------------------------------------------------------------------------
# Pixel masks to token masks


def _np_token_mask(pixels: np.ndarray, factor: int, dilation: int) -> np.ndarray:
    batch, height, width = pixels.shape
    rows, cols = height // factor, width // factor
    tokens = np.zeros((batch, rows, cols), bool)
    for b in range(batch):
        for i in range(rows):
            for j in range(cols):
                tokens[b, i, j] = pixels[b, i * factor:(i + 1) * factor, j * factor:(j + 1) * factor].any()
    dilated = np.zeros_like(tokens)
    for b in range(batch):
        for i in range(rows):
            for j in range(cols):
                window = tokens[b, max(0, i - dilation):i + dilation + 1, max(0, j - dilation):j + dilation + 1]
                dilated[b, i, j] = window.any()
    return dilated


@pytest.mark.parametrize("factor, dilation", [(1, 0), (2, 0), (4, 0), (2, 1), (4, 1), (2, 2), (4, 3)])
def test_token_mask_from_pixels_matches_numpy(factor, dilation):
    rng = np.random.default_rng(factor * 10 + dilation)
    pixels = rng.random((3, 24, 32)) < 0.01  # sparse: dilation matters
    pixels[0, 0, 0] = pixels[0, -1, -1] = True  # corners: dilation clipped at the borders
    pixels[1] = False                            # an empty mask stays empty
    got = sampling.token_mask_from_pixels(pixels, factor, dilation)
    chex.assert_shape(got, (3, 24 // factor, 32 // factor))
    assert got.dtype == jnp.bool_
    expected = _np_token_mask(pixels, factor, dilation)
    np.testing.assert_array_equal(got, expected)
    assert not expected[1].any() and expected[0].any()


def test_token_mask_from_pixels_hand_case():
    pixels = np.zeros((1, 8, 8), bool)
    pixels[0, 3, 4] = True  # token (1, 2) at factor 2
    expected = np.zeros((1, 4, 4), bool)
    expected[0, 1, 2] = True
    np.testing.assert_array_equal(sampling.token_mask_from_pixels(pixels, 2), expected)
    expected[0, 0:3, 1:4] = True  # dilation 1: the 3 x 3 block around it
    np.testing.assert_array_equal(sampling.token_mask_from_pixels(pixels, 2, 1), expected)


@pytest.mark.parametrize("shape, factor", [((8, 8), 2), ((1, 8, 8, 1), 2), ((1, 10, 8), 4), ((1, 8, 6), 4)])
def test_token_mask_from_pixels_bad_shapes_raise(shape, factor):
    with pytest.raises(ValueError):
        sampling.token_mask_from_pixels(np.zeros(shape, bool), factor)


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_known_tokens_outside_the_vocabulary_are_refused(bad, gpt, maskgit):
    """Out-of-range codes would be looked up in silence (NaNs for K, the last code for -1); the
    positions to regenerate may hold anything."""
    tokens = np.zeros((BATCH, MASKGIT_LEN), np.int32)
    tokens[1, 5] = bad
    regenerate = np.zeros((BATCH, MASKGIT_LEN), bool)
    with pytest.raises(ValueError, match=rf"tokens hold codes outside 0..{VOCAB - 1} .*\[{bad}\] at flat "
                                         rf"positions \[{MASKGIT_LEN + 5}\]"):
        maskgit.maskgit(_key(0), LABELS, tokens=tokens, token_mask=regenerate)
    regenerate[1, 5] = True
    maskgit.maskgit(_key(0), LABELS, tokens=tokens, token_mask=regenerate)  # masked: fine
    known = np.zeros((BATCH, GPT_LEN), np.int32)
    known[2, 0] = bad
    with pytest.raises(ValueError, match="known_tokens hold codes outside"):
        gpt.gpt(_key(0), LABELS, known_tokens=known, known_mask=np.ones((BATCH, GPT_LEN), bool))
