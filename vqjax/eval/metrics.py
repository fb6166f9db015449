"""Evaluation metrics: pure functions for images, feature statistics and code maps.

Images (jit-able JAX, NHWC batches, per-image results `[B]`, computed in float32):
  `psnr`          peak signal-to-noise ratio in dB; no clipping (callers clip).
  `ssim`          mean structural similarity of Wang et al. (2004), equal to scikit-image's
                  `structural_similarity(..., gaussian_weights=True, sigma=1.5,
                  use_sample_covariance=False, channel_axis=-1)` per image.

Feature statistics (numpy float64 on the host, outside jit; the features come from a network
such as `vqjax.nets.inception`):
  `FeatureStats`                streaming mean / covariance over batches (with a padding mask),
                                optionally keeping the first rows for KID.
  `frechet_distance`            the Frechet distance of two Gaussians (FID, rFID).
  `inception_score`             IS from classifier logits (Salimans et al. 2016).
  `kernel_inception_distance`   KID, unbiased polynomial-kernel MMD^2 (Binkowski et al. 2018).

Code maps:
  `bits_per_pixel`  bits per image pixel of a code map, from log2(K) or a prior's log2 p.
  `codebook_usage`  usage fraction and perplexity of code counts (`vqjax.quantizers`' formulas).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from vqjax import quantizers

_HIGHEST = jax.lax.Precision.HIGHEST

# SSIM constants of Wang et al. (2004), as scikit-image uses them for gaussian_weights=True.
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5
_SSIM_RADIUS = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)  # scipy.ndimage's radius: 5
SSIM_WINDOW = 2 * _SSIM_RADIUS + 1  # 11 taps


# ----------------------------------------------------------------------------------------
# Image metrics (JAX).


def _check_image_pair(a: jax.Array, b: jax.Array, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name} needs two batches of the same shape, got {a.shape} and {b.shape}.")
    if a.ndim != 4:
        raise ValueError(f"{name} expects NHWC image batches [B, H, W, C], got shape {a.shape}; "
                         "add the missing batch or channel axis.")


def psnr(a: jax.Array, b: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Per-image peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE).

    Args:
      a: images `[B, H, W, C]`.
      b: images of the same shape.
      data_range: max - min of the value range; 2.0 for vqjax images in [-1, 1] (255.0 for
        [0, 255] images). Values are not clipped: clip reconstructions before calling.

    Returns:
      `[B]` float32 PSNR, the MSE taken over H, W and C of each image. The MSE is floored at
      1e-20 * data_range^2, so identical images give 200 dB rather than infinity.
    """
    _check_image_pair(a, b, "psnr")
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    mse = jnp.mean(jnp.square(diff), axis=(1, 2, 3))
    peak = jnp.float32(data_range) ** 2
    return 10.0 * jnp.log10(peak / jnp.maximum(mse, 1e-20 * peak))


def _gaussian_window() -> np.ndarray:
    # scipy.ndimage.gaussian_filter's kernel (what scikit-image filters with), normalised.
    x = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    window = np.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return window / window.sum()


def _filter_valid(maps: jax.Array) -> jax.Array:
    """Separable Gaussian filter of every channel of `maps` [N, H, W, C], VALID borders."""
    channels = maps.shape[-1]
    window = jnp.asarray(_gaussian_window(), jnp.float32)
    dimension_numbers = ("NHWC", "HWIO", "NHWC")
    for kernel_shape in ((SSIM_WINDOW, 1, 1, 1), (1, SSIM_WINDOW, 1, 1)):
        kernel = jnp.tile(jnp.reshape(window, kernel_shape), (1, 1, 1, channels))
        maps = jax.lax.conv_general_dilated(
            maps, kernel, window_strides=(1, 1), padding="VALID",
            dimension_numbers=dimension_numbers, feature_group_count=channels,
            precision=_HIGHEST)
    return maps


def ssim(a: jax.Array, b: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Per-image mean SSIM (Wang et al. 2004), averaged over pixels and then channels.

    Gaussian window of sigma 1.5 truncated to 11 taps, K1 = 0.01, K2 = 0.03, population
    (co)variances. scikit-image averages the SSIM map only after cropping 5 pixels at each
    border, the pixels whose window leaves the image, so a VALID convolution reproduces it
    exactly whatever the border mode: the result equals `skimage.metrics.structural_similarity(
    x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=data_range, channel_axis=-1)` per image, up to float32 rounding.

    Args:
      a: images `[B, H, W, C]`, H and W at least 11.
      b: images of the same shape.
      data_range: max - min of the value range; 2.0 for vqjax images in [-1, 1].

    Returns:
      `[B]` float32 mean SSIM, 1 for identical images.
    """
    _check_image_pair(a, b, "ssim")
    height, width = a.shape[1:3]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (the Gaussian "
            f"window), got {height}x{width}; compare larger images or leave SSIM out.")
    x, y = a.astype(jnp.float32), b.astype(jnp.float32)
    # The five moment maps of every channel go through one grouped separable filter.
    moments = _filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1))
    mu_x, mu_y, xx, yy, xy = jnp.split(moments, 5, axis=-1)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov_xy = xy - mu_x * mu_y
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    # Mean over pixels per channel then over channels equals the plain mean: equal counts.
    return jnp.mean(ssim_map, axis=(1, 2, 3))


# ----------------------------------------------------------------------------------------
# Feature statistics (numpy, host).


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2), in float64 (FID on features).

    d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2)). S1 S2 is not symmetric, and
    `scipy.linalg.sqrtm` of it can return complex values or fail on near-singular
    covariances; its eigenvalues are those of the symmetric PSD matrix
    sqrt(S1) S2 sqrt(S1), so the trace is the sum of their square roots, from `eigh` alone.

    Args:
      mu1: mean `[D]`.
      sigma1: covariance `[D, D]`.
      mu2: mean `[D]`.
      sigma2: covariance `[D, D]`.

    Returns:
      The squared Frechet distance (what "FID" reports), a Python float.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if (mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim)
            or sigma2.shape != (dim, dim)):
        raise ValueError(
            f"frechet_distance needs two means [D] and two covariances [D, D] of one size D, got "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}; were both feature sets "
            "taken from the same layer?")
    eigenvalues, eigenvectors = np.linalg.eigh((sigma1 + sigma1.T) / 2.0)
    sqrt_sigma1 = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    product_eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt_product = np.sum(np.sqrt(np.clip(product_eigenvalues, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product)


class FeatureStats:
    """Streaming mean and covariance of feature vectors, in float64, batch by batch.

    Sums are taken around a shift (the first batch's mean): the covariance then comes from
    small centred sums instead of E[x x^T] - mu mu^T, which cancels catastrophically when the
    features share a large offset. `covariance()` is unbiased (n - 1), like pytorch-fid's
    `np.cov(rowvar=False)`. With `keep=N` the first N rows are also retained (float32), for
    metrics that need the features themselves (KID).

    Example:
      stats = FeatureStats(2048)
      for batch in batches:
          stats.add(features(batch), mask=batch["mask"])
      fid = stats.fid_against(reference_stats)
    """

    def __init__(self, dim: int, keep: int = 0):
        self.dim = int(dim)
        self.keep = int(keep)
        self.count = 0
        self._shift: Optional[np.ndarray] = None
        self._sum = np.zeros((self.dim,), np.float64)
        self._outer_sum = np.zeros((self.dim, self.dim), np.float64)
        self._kept: list[np.ndarray] = []
        self._num_kept = 0

    def add(self, features: np.ndarray, mask: Optional[np.ndarray] = None) -> None:
        """Adds the rows of `features` [n, D]; rows whose `mask` [n] is 0 are ignored."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"FeatureStats({self.dim}) takes features [n, {self.dim}], got shape "
                             f"{features.shape}; flatten pooled features to one vector per image.")
        if mask is not None:
            mask = np.asarray(mask).reshape(-1)
            if mask.shape[0] != features.shape[0]:
                raise ValueError(f"The mask has {mask.shape[0]} entries for {features.shape[0]} "
                                 "feature rows; pass one mask value per row.")
            features = features[mask != 0]
        if features.shape[0] == 0:
            return
        self._keep_rows(features)
        features = features.astype(np.float64)
        if self._shift is None:
            self._shift = features.mean(axis=0)
        centred = features - self._shift
        self.count += features.shape[0]
        self._sum += centred.sum(axis=0)
        self._outer_sum += centred.T @ centred

    def _keep_rows(self, features: np.ndarray) -> None:
        room = self.keep - self._num_kept
        if room > 0:
            rows = np.array(features[:room], dtype=np.float32)
            self._kept.append(rows)
            self._num_kept += rows.shape[0]

    def merge(self, other: "FeatureStats") -> None:
        """Adds `other`'s rows (statistics and kept features) to these, e.g. across hosts."""
        if other.dim != self.dim:
            raise ValueError(f"Cannot merge FeatureStats of dimension {other.dim} into {self.dim}.")
        if other.count == 0:
            return
        for rows in other._kept:
            self._keep_rows(rows)
        if self._shift is None:
            self._shift = other._shift.copy()
        # Re-express other's sums around this shift: x - s = (x - s_o) + (s_o - s).
        delta = other._shift - self._shift
        self._sum += other._sum + other.count * delta
        cross = np.outer(other._sum, delta)
        self._outer_sum += other._outer_sum + cross + cross.T + other.count * np.outer(delta, delta)
        self.count += other.count

    def _require(self, minimum: int, what: str) -> None:
        if self.count < minimum:
            raise ValueError(f"The {what} needs at least {minimum} feature rows, got {self.count}; "
                             "evaluate on more images.")

    def mean(self) -> np.ndarray:
        """Mean feature vector `[D]`, float64."""
        self._require(1, "mean")
        return self._shift + self._sum / self.count

    def covariance(self) -> np.ndarray:
        """Unbiased covariance `[D, D]` (divides by n - 1, like `np.cov`), float64."""
        self._require(2, "covariance")
        centred_mean = self._sum / self.count
        return (self._outer_sum - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)

    def features(self) -> np.ndarray:
        """The first `keep` rows added (fewer if fewer were added), `[n, D]` float32."""
        if not self._kept:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(self._kept, axis=0)

    def fid_against(self, other: "FeatureStats") -> float:
        """Frechet distance between the Gaussians fitted to these features and `other`'s."""
        return frechet_distance(self.mean(), self.covariance(), other.mean(), other.covariance())


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """Inception score (Salimans et al. 2016) from classifier logits, in float64.

    As in the OpenAI code: the rows are split into `num_splits` consecutive chunks (no
    shuffling), each scores exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's marginal,
    and the result is the mean and the population standard deviation (ddof 0) over chunks.
    (torch-fidelity shuffles the rows first and reports the n - 1 standard deviation.)

    Args:
      logits: `[N, C]` logits (pre-softmax) of a classifier, e.g. Inception's 1008 classes.
      num_splits: number of chunks; N must be at least this.

    Returns:
      (mean, std) of the per-chunk scores; 1 is the minimum, C the maximum.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"inception_score takes logits [N, C], got shape {logits.shape}.")
    if not 1 <= num_splits <= logits.shape[0]:
        raise ValueError(f"inception_score cannot split {logits.shape[0]} rows into {num_splits} "
                         "chunks; use fewer splits or more samples.")
    probs = special.softmax(logits, axis=1)
    num = logits.shape[0]
    scores = []
    for i in range(num_splits):
        chunk = probs[i * num // num_splits:(i + 1) * num // num_splits]
        # mean_x KL(p(y|x) || p(y)) = H(p(y)) - mean_x H(p(y|x)); entr keeps 0 log 0 = 0.
        marginal_entropy = np.sum(special.entr(chunk.mean(axis=0)))
        conditional_entropy = np.mean(np.sum(special.entr(chunk), axis=1))
        scores.append(np.exp(marginal_entropy - conditional_entropy))
    return float(np.mean(scores)), float(np.std(scores))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    # Unbiased within-set terms leave out the diagonal (a point compared with itself).
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray,
                              num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Kernel Inception distance (Binkowski et al. 2018), as torch-fidelity computes it.

    Unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over
    `num_subsets` random subsets of each set, drawn without replacement from
    `np.random.default_rng(seed)`. Float64.

    Args:
      features_a: `[N_a, D]` features (e.g. Inception pool features of real images).
      features_b: `[N_b, D]` features of the other set.
      num_subsets: number of subset pairs.
      subset_size: rows per subset, reduced to min(subset_size, N_a, N_b).
      seed: seed of the subset draws.

    Returns:
      (mean, std) of MMD^2 over subsets (std with ddof 0). Can be slightly negative.
    """
    features_a = np.asarray(features_a, np.float64)
    features_b = np.asarray(features_b, np.float64)
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"kernel_inception_distance needs two feature sets [N, D] of one D, got "
                         f"{features_a.shape} and {features_b.shape}.")
    size = min(subset_size, features_a.shape[0], features_b.shape[0])
    if size < 2:
        raise ValueError(f"kernel_inception_distance needs subsets of at least 2 rows, got {size}; "
                         "use more samples.")
    rng = np.random.default_rng(seed)
    mmds = np.array([
        _unbiased_mmd2(features_a[rng.choice(features_a.shape[0], size, replace=False)],
                       features_b[rng.choice(features_b.shape[0], size, replace=False)])
        for _ in range(num_subsets)])
    return float(np.mean(mmds)), float(np.std(mmds))


# ----------------------------------------------------------------------------------------
# Code maps.


def bits_per_pixel(code_shape: Sequence[int], image_shape: Sequence[int],
                   num_codes: Optional[int] = None,
                   code_log2_probs: Optional[np.ndarray] = None) -> float:
    """Bits per image pixel needed to store a code map: per pixel, not per sub-pixel.

    A pixel is one (row, column) position of the image whatever its number of channels, so a
    256x256 RGB image has 65536 pixels (divide by 3 for bits per sub-pixel / dimension).
    Give exactly one of:
      `num_codes`: each code costs log2(K) bits (a uniform prior):
        prod(code_shape) * log2(K) / (H * W).
      `code_log2_probs`: log2 p(code) of each code under a prior (e.g. a transformer's
        likelihood), shaped like one code map or `[B, *code_shape]`:
        -sum(log2 p) / (B * H * W).

    Args:
      code_shape: shape of one image's code map, e.g. `(h, w)` or `(h, w, depth)`.
      image_shape: `(H, W)` or `(H, W, C)` of one image.
      num_codes: codebook size K.
      code_log2_probs: base-2 log-probabilities of the codes.

    Returns:
      Bits per pixel, a Python float.
    """
    if (num_codes is None) == (code_log2_probs is None):
        raise ValueError("bits_per_pixel needs exactly one of num_codes (a uniform cost of "
                         "log2 K per code) and code_log2_probs (a prior's log2 p per code).")
    if len(image_shape) not in (2, 3):
        raise ValueError(f"image_shape is one image's (H, W) or (H, W, C), got {tuple(image_shape)}.")
    code_shape = tuple(int(s) for s in code_shape)
    codes_per_image = math.prod(code_shape)
    pixels = int(image_shape[0]) * int(image_shape[1])
    if num_codes is not None:
        if num_codes < 1:
            raise ValueError(f"num_codes must be positive, got {num_codes}.")
        return codes_per_image * math.log2(num_codes) / pixels
    log2_probs = np.asarray(code_log2_probs, np.float64)
    if log2_probs.size == codes_per_image:
        num_images = 1
    elif log2_probs.ndim == len(code_shape) + 1 and log2_probs.shape[1:] == code_shape:
        num_images = log2_probs.shape[0]
    else:
        raise ValueError(f"code_log2_probs of shape {log2_probs.shape} is neither one code map "
                         f"{code_shape} nor a batch [B, *{code_shape}].")
    return float(-np.sum(log2_probs) / (num_images * pixels))


def codebook_usage(counts: jax.Array) -> dict[str, jax.Array]:
    """`usage` (fraction of codes used) and `perplexity` of per-code counts `[K]`.

    A convenience over `quantizers.usage_fraction` and `quantizers.perplexity`, which own the
    formulas.
    """
    return {"usage": quantizers.usage_fraction(counts), "perplexity": quantizers.perplexity(counts)}
