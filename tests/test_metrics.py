"""Tests for vqjax.eval.metrics: every metric against scikit-image, scipy, pytorch-fid or a
hand computation."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy import ndimage
from skimage import data as skdata
from skimage import metrics as skmetrics

from vqjax.eval import metrics


def _to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float64 [-1, 1], the vqjax convention."""
    return image.astype(np.float64) / 127.5 - 1.0


def _photo_pairs(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of real photographs and degraded copies (noise, blur, both), [4, H, W, 3]."""
    rng = np.random.default_rng(0)
    originals, degraded = [], []
    for i, photo in enumerate([skdata.astronaut(), skdata.chelsea(), skdata.coffee(),
                               skdata.rocket()]):
        crop = _to_unit_range(photo[40:40 + height, 60:60 + width])
        if i % 2 == 0:
            other = crop + rng.normal(0.0, 0.05 * (i + 1), crop.shape)
        else:
            other = ndimage.gaussian_filter(crop, sigma=(1.0 + i / 2, 1.0, 0.0))
        originals.append(crop)
        degraded.append(np.clip(other, -1.0, 1.0))
    return np.stack(originals), np.stack(degraded)


def _sk_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> np.ndarray:
    return np.array([
        skmetrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=data_range,
                                        channel_axis=-1)
        for x, y in zip(a, b)])


# ----------------------------------------------------------------------------------------
# PSNR


def test_psnr_matches_skimage_on_random_images():
    rng = np.random.default_rng(1)
    a = rng.uniform(-1.0, 1.0, (5, 16, 24, 3))
    b = np.clip(a + rng.normal(0.0, rng.uniform(0.01, 0.5, (5, 1, 1, 1)), a.shape), -1.0, 1.0)
    got = metrics.psnr(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    chex.assert_shape(got, (5,))
    assert got.dtype == jnp.float32
    expected = [skmetrics.peak_signal_noise_ratio(x, y, data_range=2.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_psnr_matches_skimage_on_photographs_and_uint8_range():
    a, b = _photo_pairs(64, 96)
    got = jax.jit(metrics.psnr)(jnp.asarray(a), jnp.asarray(b))
    expected = [skmetrics.peak_signal_noise_ratio(x, y, data_range=2.0) for x, y in zip(a, b)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The same images on [0, 255] with data_range 255 give the same dB.
    got_255 = metrics.psnr(jnp.asarray((a + 1) * 127.5), jnp.asarray((b + 1) * 127.5), 255.0)
    np.testing.assert_allclose(got_255, expected, rtol=1e-5)


def test_psnr_identical_images_is_large_and_finite():
    a = jnp.zeros((2, 8, 8, 3))
    got = metrics.psnr(a, a)
    assert np.all(np.isfinite(got)) and np.all(got >= 199.0)


def test_psnr_does_not_clip():
    a = jnp.full((1, 4, 4, 1), 3.0)
    b = jnp.full((1, 4, 4, 1), 1.0)
    np.testing.assert_allclose(metrics.psnr(a, b), 10 * np.log10(4.0 / 4.0), atol=1e-6)


# ----------------------------------------------------------------------------------------
# SSIM


def test_ssim_matches_skimage_on_random_images():
    rng = np.random.default_rng(2)
    a = rng.uniform(-1.0, 1.0, (3, 23, 31, 3))
    # Correlated pairs so SSIM spans a useful range rather than sitting near 0.
    b = np.clip(a + rng.normal(0.0, 0.3, a.shape), -1.0, 1.0)
    b[0] = rng.uniform(-1.0, 1.0, a.shape[1:])
    got = jax.jit(metrics.ssim)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    chex.assert_shape(got, (3,))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, _sk_ssim(a, b), atol=1e-5)


@pytest.mark.parametrize("height,width", [(64, 96), (45, 37)])
def test_ssim_matches_skimage_on_photographs(height, width):
    a, b = _photo_pairs(height, width)
    got = metrics.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    expected = _sk_ssim(a, b)
    assert expected.min() < 0.9  # the degradations are visible, not a trivial comparison
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_ssim_grayscale_and_data_range():
    a, b = _photo_pairs(48, 40)
    gray_a, gray_b = a[..., :1], b[..., 1:2] * 0.5 + a[..., :1] * 0.5
    got = metrics.ssim(jnp.asarray(gray_a), jnp.asarray(gray_b))
    np.testing.assert_allclose(got, _sk_ssim(gray_a, gray_b), atol=1e-5)
    # [0, 255] images with data_range 255 (float32 sums of larger squares, still exact enough).
    gray_a, gray_b = (gray_a + 1) * 127.5, (gray_b + 1) * 127.5
    got_255 = metrics.ssim(jnp.asarray(gray_a, jnp.float32), jnp.asarray(gray_b, jnp.float32), 255.0)
    np.testing.assert_allclose(got_255, _sk_ssim(gray_a, gray_b, 255.0), atol=1e-5)


def test_ssim_identical_images_is_one():
    a, _ = _photo_pairs(32, 32)
    np.testing.assert_allclose(metrics.ssim(jnp.asarray(a), jnp.asarray(a)), 1.0, atol=1e-6)


def test_image_metrics_jit_agrees_with_eager():
    a, b = _photo_pairs(24, 20)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    for metric in (metrics.psnr, metrics.ssim):
        np.testing.assert_allclose(jax.jit(metric)(a, b), metric(a, b), rtol=1e-6)


def test_ssim_small_images_error():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(jnp.zeros((1, 10, 32, 3)), jnp.zeros((1, 10, 32, 3)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16, 16, 1)))


# ----------------------------------------------------------------------------------------
# Frechet distance


def _scipy_frechet(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's formula: scipy.linalg.sqrtm of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def _gaussian_stats(rng, num, dim, offset=0.0):
    x = rng.normal(size=(num, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim) + offset
    return x.mean(axis=0), np.cov(x, rowvar=False)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(3)
    mu1, sigma1 = _gaussian_stats(rng, 500, 64)
    mu2, sigma2 = _gaussian_stats(rng, 400, 64, offset=0.3)
    got = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, _scipy_frechet(mu1, sigma1, mu2, sigma2), rtol=1e-9)
    # Symmetric in its two Gaussians, and 0 against itself.
    np.testing.assert_allclose(metrics.frechet_distance(mu2, sigma2, mu1, sigma1), got, rtol=1e-9)
    assert abs(metrics.frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-9


def test_frechet_distance_near_singular_covariances():
    # Fewer samples than dimensions: rank-deficient covariances, where sqrtm struggles.
    rng = np.random.default_rng(4)
    mu1, sigma1 = _gaussian_stats(rng, 40, 64)
    mu2, sigma2 = _gaussian_stats(rng, 30, 64, offset=0.1)
    got = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
    np.testing.assert_allclose(got, _scipy_frechet(mu1, sigma1, mu2, sigma2), rtol=1e-6)


def test_frechet_distance_matches_pytorch_fid():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(5)
    mu1, sigma1 = _gaussian_stats(rng, 300, 64)
    mu2, sigma2 = _gaussian_stats(rng, 300, 64, offset=-0.2)
    expected = fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    np.testing.assert_allclose(metrics.frechet_distance(mu1, sigma1, mu2, sigma2), expected,
                               rtol=1e-8)


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(6)
    var1, var2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.0, 3.0, 16)
    var2[:3] = 0.0  # singular
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2) + np.sum((mu1 - mu2) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_frechet_distance_shape_mismatch():
    with pytest.raises(ValueError, match="same layer"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------------------
# Streaming statistics


def _batches(rng, sizes, dim, offset=0.0):
    return [rng.normal(size=(n, dim)) * rng.uniform(0.5, 2.0, dim) + offset for n in sizes]


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_feature_stats_uneven_masked_batches(offset):
    rng = np.random.default_rng(7)
    sizes, dim = [7, 1, 30, 13], 5
    batches = _batches(rng, sizes, dim, offset)
    masks = [np.ones(n) for n in sizes]
    masks[0][[1, 4]] = 0
    masks[3][-5:] = 0  # a padded last batch
    stats = metrics.FeatureStats(dim)
    for batch, mask in zip(batches, masks):
        stats.add(batch.astype(np.float32) if offset == 0 else batch, mask=mask.astype(bool))
    rows = np.concatenate([b[m != 0] for b, m in zip(batches, masks)])
    if offset == 0:
        rows = rows.astype(np.float32).astype(np.float64)
    assert stats.count == rows.shape[0] == sum(sizes) - 7
    np.testing.assert_allclose(stats.mean(), rows.mean(axis=0), rtol=1e-12)
    # Reference covariance from centred rows, the well-conditioned float64 computation.
    np.testing.assert_allclose(stats.covariance(), np.cov(rows - rows.mean(axis=0), rowvar=False),
                               rtol=1e-10, atol=1e-12)


def test_feature_stats_merge_keep_and_fid():
    rng = np.random.default_rng(8)
    dim = 4
    a_batches, b_batches = _batches(rng, [5, 9], dim, 3.0), _batches(rng, [12, 2], dim, -1.0)
    a, b, both = metrics.FeatureStats(dim, keep=8), metrics.FeatureStats(dim), metrics.FeatureStats(dim)
    for batch in a_batches:
        a.add(batch)
        both.add(batch)
    for batch in b_batches:
        b.add(batch)
        both.add(batch)
    rows_a, rows_b = np.concatenate(a_batches), np.concatenate(b_batches)
    assert a.features().shape == (8, dim) and a.features().dtype == np.float32
    np.testing.assert_allclose(a.features(), rows_a[:8], rtol=1e-6)
    assert b.features().shape == (0, dim)
    expected_fid = _scipy_frechet(rows_a.mean(0), np.cov(rows_a, rowvar=False),
                                  rows_b.mean(0), np.cov(rows_b, rowvar=False))
    np.testing.assert_allclose(a.fid_against(b), expected_fid, rtol=1e-9)
    a.merge(b)
    assert a.count == both.count == 28
    np.testing.assert_allclose(a.mean(), both.mean(), rtol=1e-12)
    np.testing.assert_allclose(a.covariance(), both.covariance(), rtol=1e-10)
    assert a.features().shape == (8, dim)
    empty = metrics.FeatureStats(dim)
    empty.merge(both)
    np.testing.assert_allclose(empty.covariance(), both.covariance(), rtol=1e-12)


def test_feature_stats_errors():
    stats = metrics.FeatureStats(3)
    with pytest.raises(ValueError, match="at least 1"):
        stats.mean()
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        stats.add(np.zeros((2, 4)))
    stats.add(np.zeros((2, 3)), mask=np.zeros(2))
    assert stats.count == 0


# ----------------------------------------------------------------------------------------
# Inception score


def test_inception_score_matches_loop():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(23, 6)) * 3.0
    num_splits = 4
    scores = []
    for i in range(num_splits):
        rows = logits[i * 23 // num_splits:(i + 1) * 23 // num_splits]
        probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in rows]
        marginal = [sum(p[c] for p in probs) / len(probs) for c in range(6)]
        kls = [sum(p[c] * math.log(p[c] / marginal[c]) for c in range(6)) for p in probs]
        scores.append(math.exp(sum(kls) / len(kls)))
    mean, std = metrics.inception_score(logits, num_splits)
    np.testing.assert_allclose(mean, np.mean(scores), rtol=1e-12)
    np.testing.assert_allclose(std, np.std(scores), rtol=1e-9)


def test_inception_score_limits():
    mean, std = metrics.inception_score(np.zeros((50, 10)), num_splits=5)
    np.testing.assert_allclose([mean, std], [1.0, 0.0], atol=1e-12)
    # Confident predictions spread evenly over C classes: the maximum, C.
    num_classes = 8
    logits = np.full((80, num_classes), -1000.0)
    logits[np.arange(80), np.arange(80) % num_classes] = 0.0
    mean, std = metrics.inception_score(logits, num_splits=10)
    np.testing.assert_allclose([mean, std], [num_classes, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="split"):
        metrics.inception_score(np.zeros((3, 4)), num_splits=10)


# ----------------------------------------------------------------------------------------
# Kernel Inception distance


def test_kid_matches_double_loop():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    m, d = 6, 3

    def k(u, v):
        return (sum(u[i] * v[i] for i in range(d)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=m)
    np.testing.assert_allclose(mean, xx + yy - 2 * xy, rtol=1e-12)
    assert std == 0.0


def test_kid_same_distribution_near_zero():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    shifted = rng.normal(size=(300, 16)) + 0.5
    same, same_std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=100)
    different, _ = metrics.kernel_inception_distance(a, shifted, num_subsets=20, subset_size=100)
    assert abs(same) < 0.05 * different
    assert same_std > 0
    # Deterministic given the seed.
    assert metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=100) == (same, same_std)


# ----------------------------------------------------------------------------------------
# Bits per pixel and codebook usage


def test_bits_per_pixel():
    assert metrics.bits_per_pixel((16, 16), (256, 256, 3), num_codes=1024) == 10 * 256 / 65536
    assert metrics.bits_per_pixel((16, 16), (256, 256), num_codes=1024) == 0.0390625
    uniform = np.full((16, 16), -10.0)
    assert metrics.bits_per_pixel((16, 16), (256, 256), code_log2_probs=uniform) == 0.0390625
    assert metrics.bits_per_pixel((16, 16), (256, 256), code_log2_probs=uniform.ravel()) == 0.0390625
    rng = np.random.default_rng(12)
    probs = rng.uniform(0.01, 1.0, (3, 4, 4))  # a batch of 3 code maps of 4x4
    expected = -sum(math.log2(p) for p in probs.ravel()) / (3 * 32 * 32)
    got = metrics.bits_per_pixel((4, 4), (32, 32, 3), code_log2_probs=np.log2(probs))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="exactly one"):
        metrics.bits_per_pixel((4, 4), (32, 32))
    with pytest.raises(ValueError, match="exactly one"):
        metrics.bits_per_pixel((4, 4), (32, 32), num_codes=8, code_log2_probs=np.zeros((4, 4)))


def test_codebook_usage_closed_forms():
    counts = jnp.array([4.0, 0.0, 4.0, 0.0])
    usage = metrics.codebook_usage(counts)
    np.testing.assert_allclose(usage["usage"], 0.5)  # 2 of 4 codes used
    np.testing.assert_allclose(usage["perplexity"], 2.0, rtol=1e-6)  # exp(entropy of [1/2, 1/2])
    usage = metrics.codebook_usage(jnp.array([1.0, 2.0, 0.0, 1.0, 0.0]))
    np.testing.assert_allclose(usage["usage"], 3 / 5)
    np.testing.assert_allclose(usage["perplexity"], np.exp(1.5 * np.log(2)), rtol=1e-6)  # [1/4, 1/2, 1/4]
