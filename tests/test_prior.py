"""Priors over code maps (vqjax.families.prior, vqjax.eval.likelihood, vqjax.data.codes):
likelihoods against closed forms and enumeration, the training masks, the token cache and
batches, and the entry point end to end on the shared VQGAN smoke workdir."""

import contextlib
import importlib.util
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from tests.helpers import load_config, random_frozen_weights
from vqjax import pretrained, prior
from vqjax.core import images as images_lib, parallel
from vqjax.data import codes as tokens_lib
from vqjax.eval import likelihood, samples as samples_eval
from vqjax.families import prior as prior_family
from vqjax.sampling import prior as prior_sampling
from vqjax.train import experiment
from vqjax.convert import save_params
from vqjax.nets import inception
from vqjax.nets.transformer import Transformer


def tiny(causal: bool, vocab: int = 5, seq_len: int = 6, num_classes: int = 2) -> Transformer:
    return Transformer(vocab_size=vocab, seq_len=seq_len, causal=causal, num_classes=num_classes,
                       num_layers=1, num_heads=2, embed_dim=16, mlp_dim=32)


def init(model: Transformer, seed: int = 0):
    # Compiled as one program: an eager init compiles each of its operations (~3x slower).
    return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, model.seq_len), jnp.int32),
                               jnp.zeros((1,), jnp.int32))["params"]


def np_token_nll(logits, tokens) -> np.ndarray:
    """-log softmax(logits)[token] per position, in numpy float64 (not vqjax's token_nll)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, np.asarray(tokens)[..., None], -1)[..., 0]


def eval_nll(model, params, tokens, labels, seed=0):
    batch = {"tokens": jnp.asarray(tokens), "label": jnp.asarray(labels),
             "mask": jnp.ones((len(tokens),), jnp.float32)}
    return jax.jit(likelihood.make_eval_step(model))(params, batch, jax.random.key(seed))


@pytest.mark.parametrize("causal", [True, False])
def test_bits_per_dim_of_a_uniform_prior_is_log2_k_per_code_dimension(causal):
    model = tiny(causal, vocab=37, seq_len=16)
    params = init(model)
    params["head"] = jax.tree.map(jnp.zeros_like, params["head"])  # every logit 0: uniform
    tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 37)
    sums = eval_nll(model, params, tokens, np.array([0, 1, 2] * 2 + [0, 1]))
    image_shape = (16, 16, 3)  # 4x4 codes of an f4 tokenizer
    result = likelihood.likelihood_metrics(float(sums["nll_sum"]), float(sums["num_examples"]), 16, image_shape)
    assert result["bits_per_token"] == pytest.approx(math.log2(37), rel=1e-6)
    assert result["bits_per_dim"] == pytest.approx(16 * math.log2(37) / (16 * 16 * 3), rel=1e-6)


def test_gpt_likelihood_sums_to_one_over_all_sequences():
    """exp(-NLL) over every sequence of a 3-code, 4-token space sums to 1 for each class: the
    shift between inputs and targets and the causal mask make it a normalised distribution."""
    model = tiny(True, vocab=3, seq_len=4)
    params = init(model, seed=3)
    every = np.asarray(list(itertools.product(range(3), repeat=4)), np.int32)
    apply, eval_step = jax.jit(model.apply), jax.jit(likelihood.make_eval_step(model))
    for label in (0, 1, model.null_label):
        batch = {"tokens": jnp.asarray(every), "label": jnp.full((len(every),), label),
                 "mask": jnp.ones((len(every),))}
        logits = apply({"params": params}, batch["tokens"], batch["label"])
        nll = np_token_nll(logits, every).sum(-1)
        assert np.exp(-nll).sum() == pytest.approx(1.0, abs=1e-5)
        sums = eval_step(params, batch, jax.random.key(0))
        assert float(sums["nll_sum"]) == pytest.approx(nll.sum(), rel=1e-5)


def test_maskgit_bound_estimate_averages_to_the_enumerated_bound():
    """The one-draw estimate of the any-order bound, averaged over draws, equals the bound
    computed exactly by enumerating every (m, masked subset) of a 3-token sequence."""
    model = tiny(False, vocab=4, seq_len=3)
    params = init(model, seed=5)
    x = jnp.asarray([[1, 3, 0]])
    label = jnp.asarray([1])
    # Exact expectation: m ~ U{1..3}, then a uniform subset of size m.
    apply = jax.jit(model.apply)
    expected = 0.0
    for m in (1, 2, 3):
        subsets = list(itertools.combinations(range(3), m))
        for subset in subsets:
            masked = np.zeros((1, 3), bool)
            masked[0, list(subset)] = True
            logits = apply({"params": params}, jnp.where(masked, model.mask_token, x), label)
            nll = float(np.sum(np_token_nll(logits, x) * masked))
            expected += (1 / 3) * (1 / len(subsets)) * 3 / m * nll
    # Each row of a batch draws its own (m, subset): 2000 copies of x are 2000 draws.
    copies = 2000
    batch = {"tokens": jnp.tile(x, (copies, 1)), "label": jnp.tile(label, copies), "mask": jnp.ones((copies,))}
    sums = jax.jit(likelihood.make_eval_step(model))(params, batch, jax.random.key(0))
    assert float(sums["nll_sum"]) / copies == pytest.approx(expected, rel=0.03)


def test_maskgit_training_mask_counts_follow_the_schedule():
    rng = jax.random.key(7)
    masked = np.asarray(prior_family.maskgit_mask(rng, 512, 64, "cosine"))
    ratio_rng, _ = jax.random.split(rng)
    ratio = np.asarray(jax.random.uniform(ratio_rng, (512, 1)))[:, 0]
    expected = np.maximum(1, np.ceil(np.clip(np.cos(ratio * np.pi / 2), 1e-6, 1) * 64))
    np.testing.assert_array_equal(masked.sum(-1), expected)
    # Cosine schedule: E[gamma(r)] = 2 / pi of the tokens masked on average.
    assert masked.mean() == pytest.approx(2 / np.pi, abs=0.03)


def test_condition_dropout_rate():
    labels = jnp.zeros((20000,), jnp.int32)
    dropped = np.asarray(prior_family.drop_labels(jax.random.key(0), labels, 0.1, 7))
    assert set(np.unique(dropped)) == {0, 7}
    assert (dropped == 7).mean() == pytest.approx(0.1, abs=0.01)
    assert prior_family.drop_labels(jax.random.key(0), labels, 0.0, 7) is labels


def test_token_batches_are_epoch_permutations_and_resume_exactly():
    arrays = {"codes": np.arange(40 * 4).reshape(40, 2, 2).astype(np.uint16), "labels": np.arange(40, dtype=np.int32)}
    stream = tokens_lib.batches(arrays, 8, seed=3)
    first = [next(stream) for _ in range(10)]  # two epochs of 5 batches
    for epoch in range(2):
        labels = np.concatenate([b["label"] for b in first[5 * epoch : 5 * epoch + 5]])
        assert sorted(labels) == list(range(40))
    assert not np.array_equal(np.concatenate([b["label"] for b in first[:5]]),
                              np.concatenate([b["label"] for b in first[5:]]))
    for batch in first:  # tokens travel with their labels, flattened in raster order
        np.testing.assert_array_equal(batch["tokens"], arrays["codes"][batch["label"]].reshape(8, 4))
    resumed = tokens_lib.batches(arrays, 8, seed=3, start_step=7)
    for expected in first[7:]:
        np.testing.assert_array_equal(next(resumed)["label"], expected["label"])
    padded = list(tokens_lib.eval_batches(arrays, 16))
    assert [int(b["mask"].sum()) for b in padded] == [16, 16, 8]
    np.testing.assert_array_equal(padded[2]["label"][:8], np.arange(32, 40))


# ----------------------------------------------------------------------------------------
# With a trained tokenizer (tests/conftest.py's shared VQGAN smoke workdir).


def prior_config(kind, tokenizer_dir):
    config = load_config("prior_quickstart", f"{kind},smoke" if kind == "gpt" else "smoke")
    config.tokenizer_dir = tokenizer_dir
    return config


def test_token_cache_holds_the_tokenizers_codes_and_refuses_other_settings(trained_vqgan, tmp_path):
    config, tokenizer_dir, _ = trained_vqgan
    tokenizer = pretrained.load(tokenizer_dir)
    mesh = parallel.make_mesh()
    kwargs = dict(tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, data_cfg=config.data, batch_size=16,
                  mesh=mesh, limit=20)
    arrays = tokens_lib.cached_codes(str(tmp_path), split="test", flip=True, **kwargs)
    side = 32 // tokenizer.downsampling_factor
    assert arrays["codes"].shape == (40, side, side) and arrays["codes"].dtype == np.uint16

    from vqjax.data import images as data_lib

    batch = next(data_lib.make_dataset(config.data, "test", 20, train=False))
    _, direct = tokenizer.encode(batch["image"])
    _, mirrored = tokenizer.encode(batch["image"][:, :, ::-1])
    np.testing.assert_array_equal(arrays["codes"][:20], np.asarray(direct))
    np.testing.assert_array_equal(arrays["codes"][20:], np.asarray(mirrored))
    np.testing.assert_array_equal(arrays["labels"], np.concatenate([batch["label"]] * 2))

    path = tokens_lib.cache_path(str(tmp_path), "test", True)
    modified = os.path.getmtime(path)
    again = tokens_lib.cached_codes(str(tmp_path), split="test", flip=True, **kwargs)
    np.testing.assert_array_equal(again["codes"], arrays["codes"])
    assert os.path.getmtime(path) == modified  # read, not re-encoded
    other_data = config.data.copy_and_resolve_references()
    other_data.image_size = 16
    with pytest.raises(ValueError, match="made with other settings.*image_size"):
        tokens_lib.cached_codes(str(tmp_path), split="test", flip=True, **{**kwargs, "data_cfg": other_data})

    # A cache whose codes the tokenizer cannot have made, and a truncated one: sentences.
    with np.load(path) as saved:
        contents = {k: saved[k] for k in saved.files}
    contents["codes"] = contents["codes"].astype(np.int32)
    contents["codes"][3, 0, 0] = tokenizer.num_codes
    np.savez(path, **contents)
    with pytest.raises(ValueError, match=rf"hold codes outside 0..{tokenizer.num_codes - 1} .*delete it"):
        tokens_lib.cached_codes(str(tmp_path), split="test", flip=True, **kwargs)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=r"cannot be read \(BadZipFile.*truncated or not a vqjax cache"):
        tokens_lib.cached_codes(str(tmp_path), split="test", flip=True, **kwargs)


def _eval_images(config, tokenizer_config):
    """The first evals.num_fid_samples images of the eval split a prior's FID scores against: its
    data config says source='tokenizer', so the tokenizer run's data, read here from the data
    source with the prior's eval split and batch size."""
    from vqjax.data import images as data_lib

    data = tokenizer_config.data.copy_and_resolve_references()
    data.eval_split, data.eval_batch_size = config.data.eval_split, config.data.eval_batch_size
    batches = data_lib.make_dataset(data, data.eval_split, data.eval_batch_size, train=False)
    num_batches = -(-config.evals.num_fid_samples // data.eval_batch_size)
    return np.concatenate([b["image"][b["mask"] != 0] for _, b in zip(range(num_batches), batches)])


def _fid_reference_inception(real, tokenizer_dir, path):
    """pytorch-fid's InceptionV3 with random weights (tests/helpers.calibrated_fid_inception), its
    batch norms calibrated on 4 of `real` (the images the run will score against) and their
    reconstructions by the tokenizer (images like its decoded samples, whose features come out
    ~40x too large with a calibration on real images only), and the weights file the converter
    makes of it at `path`: (InceptionV3, Inception3)."""
    import torch

    from tests.helpers import calibrated_fid_inception
    from vqjax.convert.inception import inception_variables_from_torch

    images = np.concatenate([real[:4], np.asarray(pretrained.load(tokenizer_dir).reconstruct(real[:4]))])
    with _torch_threads(torch, 1):
        model, net = calibrated_fid_inception(2, _unit_nchw(torch, images))
    save_params(inception_variables_from_torch({k: v.numpy() for k, v in net.state_dict().items()}), path)
    return model, net


@contextlib.contextmanager
def _torch_threads(torch, count):
    """PyTorch on `count` threads for a while: on 2 busy cores, its 2 threads wait on each other
    (an Inception forward pass measured 2-4x slower than on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unit_nchw(torch, images):
    """vqjax images (NHWC in [-1, 1]) as pytorch-fid takes them (NCHW in [0, 1])."""
    return torch.from_numpy(np.ascontiguousarray((np.asarray(images, np.float32) + 1).transpose(0, 3, 1, 2) / 2))


@pytest.fixture(scope="module")
def maskgit_run(trained_vqgan, tmp_path_factory):
    """One MaskGIT smoke run on the shared tokenizer: (config, workdir, final metrics, scored).
    FID / IS / KID of its samples with Inception weights made here: pytorch-fid's network with
    calibrated random weights where torch and pytorch-fid are installed (`scored["inception"]`),
    else `random_frozen_weights`. `scored["fake"]` and `scored["real"]`: the sample batches and the
    real batches the run scored, recorded on their way into `samples.sample_quality`;
    `scored["expected_real"]`: the eval images read here from the data source."""
    tokenizer_config, tokenizer_dir, _ = trained_vqgan
    config = prior_config("maskgit", tokenizer_dir)
    workdir = tmp_path_factory.mktemp("maskgit_run")
    config.evals.inception_path = str(workdir / "inception.msgpack")
    scored = {"inception": None, "expected_real": _eval_images(config, tokenizer_config)}
    if all(importlib.util.find_spec(name) for name in ("torch", "torchvision", "pytorch_fid")):
        scored["inception"] = _fid_reference_inception(scored["expected_real"], tokenizer_dir,
                                                       config.evals.inception_path)
    else:
        save_params(random_frozen_weights(inception.abstract_variables()), config.evals.inception_path)
    original = samples_eval.sample_quality

    def recording(fake_batches, real_batches, *args, **kwargs):
        scored["fake"] = [np.asarray(images) for images in fake_batches]
        scored["real"] = [jax.tree.map(np.asarray, batch) for batch in real_batches]
        return original(scored["fake"], scored["real"], *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(samples_eval, "sample_quality", recording)
        result = experiment.train_and_evaluate(config, str(workdir))
    return config, workdir, result, scored


@pytest.mark.extended
def test_maskgit_prior_end_to_end(maskgit_run, trained_vqgan):
    config, workdir, result, _ = maskgit_run
    assert result["step"] == config.train.num_steps
    # evals.num_eval_batches (2) batches of 8 of the 32 cached eval code maps.
    assert result["num_eval_examples"] == config.evals.num_eval_batches * config.data.eval_batch_size == 16
    assert np.isfinite(result["bits_per_token"])
    codes_per_image = (32 // pretrained.load(trained_vqgan[1]).downsampling_factor) ** 2
    assert result["bits_per_dim"] == pytest.approx(result["bits_per_token"] * codes_per_image / (32 * 32 * 3))
    with open(workdir / "metrics.json") as f:
        assert json.load(f)["bits_per_token"] == result["bits_per_token"]
    assert result["num_fid_samples"] == result["num_fid_real"] == 16 and "skipped" not in result
    samples = np.asarray(Image.open(workdir / "samples.png"))
    inpainting = np.asarray(Image.open(workdir / "inpainting.png"))
    # 8 samples: one row of the 8 classes; 64-pixel tiles (32x32 upscaled) with 2-pixel gaps.
    assert samples.shape == (2 + 66, 2 + 8 * 66, 3)
    assert inpainting.shape == (2 + 5 * 66, 2 + 8 * 66, 3)  # originals, 2 x (masked, completed)


@pytest.mark.extended
def test_maskgit_run_sample_quality_equals_pytorch_fid_features_and_numpy_formulas(maskgit_run):
    """The FID, IS and KID the run reports, against pytorch-fid's InceptionV3 (the network its
    weights file was converted from) on the images it scored, with the formulas written out here
    in numpy float64: FID through scipy's sqrtm, IS over 10 consecutive splits of the samples'
    1008 logits, KID as the unbiased polynomial-kernel MMD^2 (subsets of all 16 rows: one value).
    The real images are the eval split's first two batches, read here from the data source."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_fid")
    _, _, result, scored = maskgit_run
    model, net = scored["inception"]
    real = scored["expected_real"]
    np.testing.assert_array_equal(np.concatenate([b["image"][b["mask"] != 0] for b in scored["real"]]), real)
    fake = np.clip(np.concatenate(scored["fake"]), -1, 1)  # vqjax scores samples clipped to [-1, 1]
    assert fake.shape == real.shape == (16, 32, 32, 3)

    def features(images):
        with torch.no_grad(), _torch_threads(torch, 1):
            pool = model(_unit_nchw(torch, images))[0].flatten(1)
            return pool.numpy().astype(np.float64), net.fc(pool).numpy().astype(np.float64)

    (fake_pool, logits), (real_pool, _) = features(fake), features(real)
    assert np.std(fake_pool, 0).mean() > 1e-2 * np.abs(fake_pool).mean()  # features that tell images apart

    # FID in an orthonormal basis of the span of the 32 centred rows (an exact rotation).
    both = np.concatenate([fake_pool, real_pool])
    basis = np.linalg.svd(both - both.mean(0), full_matrices=False)[2].T
    a, b = (fake_pool - both.mean(0)) @ basis, (real_pool - both.mean(0)) @ basis
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    fid = (np.sum(np.square(a.mean(0) - b.mean(0))) + np.trace(cov_a) + np.trace(cov_b)
           - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real)
    # IS: chunks [i N / 10, (i + 1) N / 10) of the 16 samples; exp of the mean KL(p(y|x) || p(y)).
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    scores = []
    for i in range(10):
        chunk = log_p[i * 16 // 10:(i + 1) * 16 // 10]
        log_marginal = np.log(np.exp(chunk).mean(0))
        scores.append(np.exp(np.mean([np.sum(np.exp(row) * (row - log_marginal)) for row in chunk])))
    # KID with k(u, v) = (u.v / 2048 + 1)^3.
    k_xx, k_yy, k_xy = ((u @ v.T / 2048 + 1) ** 3 for u, v in
                        ((fake_pool, fake_pool), (real_pool, real_pool), (fake_pool, real_pool)))
    off_diagonal = 1 - np.eye(16)
    kid = np.sum((k_xx + k_yy) * off_diagonal) / (16 * 15) - 2 * np.mean(k_xy)
    # float32 Inception features agree to ~1e-4 of their scale (tests/test_inception.py); the metrics
    # move by less (measured: 4e-6 of FID, 1e-5 of KID, 1e-6 of IS - 1 and of its std). Splits of 1 or
    # 2 samples of a 4-step prior that look alike give an IS of ~1.003, so IS - 1 is compared. A wrong
    # pool, resize, clip, split or set of images moves them by percents.
    np.testing.assert_allclose(result["fid"], fid, rtol=1e-3)
    np.testing.assert_allclose([result["inception_score"] - 1, result["inception_score_std"]],
                               [np.mean(scores) - 1, np.std(scores)], rtol=1e-3)
    np.testing.assert_allclose([result["kid"], result["kid_std"]], [kid, 0.0], rtol=1e-3, atol=1e-6 * abs(kid))


def test_gpt_prior_resumes_and_reuses_its_token_cache(trained_vqgan, tmp_path):
    _, tokenizer_dir, _ = trained_vqgan
    config = prior_config("gpt", tokenizer_dir)
    config.train.num_steps = 2
    experiment.train_and_evaluate(config, str(tmp_path))
    cache = tokens_lib.cache_path(str(tmp_path), "train", True)
    modified = os.path.getmtime(cache)
    config.train.num_steps = 4
    result = experiment.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 4 and os.path.getmtime(cache) == modified
    assert not (tmp_path / "inpainting.png").exists() and (tmp_path / "samples.png").exists()
    assert result["likelihood"] == "exact"
    assert "fid" not in result and "python -m vqjax.convert inception" in result["skipped"]["fid"]


def test_prior_errors_are_sentences(trained_vqgan, tmp_path):
    _, tokenizer_dir, _ = trained_vqgan
    config = prior_config("gpt", "")
    with pytest.raises(ValueError, match="config.tokenizer_dir is empty"):
        experiment.train_and_evaluate(config, str(tmp_path / "a"))
    config = prior_config("gpt", tokenizer_dir)
    config.model.num_classes = 3  # the embedded photographs have 8 labels
    with pytest.raises(ValueError, match="num_classes is 3; set it to at least"):
        experiment.train_and_evaluate(config, str(tmp_path / "b"))
    config = prior_config("gpt", tokenizer_dir)
    config.model.name = "pixelcnn"
    with pytest.raises(ValueError, match="a prior is one of"):
        experiment.train_and_evaluate(config, str(tmp_path / "c"))
    config = prior_config("gpt", tokenizer_dir)
    config.evals.inception_path = str(tmp_path / "inception.msgpack")  # no such file
    with pytest.raises(ValueError, match="FID InceptionV3 weights path .* is not a file"):
        experiment.train_and_evaluate(config, str(tmp_path / "d"))
    assert os.listdir(tmp_path / "d") == []  # found before step 1: no token cache, no config.json


@pytest.mark.extended
def test_loaded_prior_samples_what_the_run_sampled(maskgit_run, trained_vqgan):
    config, workdir, _, _ = maskgit_run
    loaded = prior.load(str(workdir))
    rng = jax.random.key(int(config.sampling.seed))
    labels = prior_sampling.sample_labels(loaded.model, config.sampling.num_samples)
    codes = loaded.sample_codes(rng, labels)
    side = 32 // loaded.tokenizer.downsampling_factor
    assert codes.shape == (8, side, side)
    # samples.png is those codes decoded: same rng, same labels, same settings.
    images = np.asarray(loaded.sample(rng, labels))
    np.testing.assert_array_equal(np.asarray(Image.open(workdir / "samples.png")), images_lib.image_grid([images]))
    with pytest.raises(ValueError, match="Labels must be"):
        loaded.sample_codes(rng, [0, 99])
    with pytest.raises(ValueError, match="holds a tokenizer, not a prior"):
        prior.load(trained_vqgan[1])


@pytest.mark.extended
def test_evaluate_entry_point_on_a_prior_gives_the_runs_likelihood(maskgit_run, tmp_path):
    from vqjax.eval import evaluate_model as evaluation

    config, workdir, trained, _ = maskgit_run
    eval_config = load_config("evaluate", "smoke")  # eval batches of 8, two of them: as the run
    eval_config.model_dir, eval_config.out = str(workdir), str(tmp_path)
    result = evaluation.evaluate_model(eval_config)
    for key in ("bits_per_token", "bits_per_dim"):
        assert result[key] == pytest.approx(trained[key], rel=1e-6)
    assert result["num_eval_examples"] == trained["num_eval_examples"]
    assert result["likelihood"] == trained["likelihood"]
    assert "python -m vqjax.convert inception" in result["skipped"]["fid"]
    with open(tmp_path / "eval.json") as f:
        assert json.load(f)["bits_per_token"] == result["bits_per_token"]
