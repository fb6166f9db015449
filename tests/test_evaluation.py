"""`python -m experiments.evaluate` and `vqjax.eval`: the trainer's evaluation and the
entry point are the same functions, and metrics without weights are skipped with a reason."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from tests.helpers import REPO_ROOT, calibrated_fid_inception, load_config, subprocess_env
from vqjax import convert, pretrained
from vqjax.core import parallel
from vqjax.data import images as data_lib
from vqjax.eval import evaluate_model as evaluate_model_lib, reconstruction as evaluation, samples
from vqjax.nets import inception as inception_lib


def _evaluate_config(model_dir, out):
    config = load_config("evaluate", "smoke")
    config.model_dir, config.out = model_dir, out
    return config


def test_entry_point_computes_what_the_trainer_evaluated(trained_vqgan, tmp_path):
    _, workdir, trained = trained_vqgan  # same eval split, batch size and batch count (smoke)
    result = evaluate_model_lib.evaluate_model(_evaluate_config(workdir, str(tmp_path)))
    for key in ("recon_mse", "recon_psnr", "recon_ssim", "codebook_usage", "perplexity",
                "num_eval_examples", "bits_per_pixel"):
        np.testing.assert_allclose(result[key], trained[key], rtol=1e-6, err_msg=key)
    # Smoke model: one code of 32 (5 bits) per 2x2 pixels.
    assert result["bits_per_pixel"] == pytest.approx(5 / 4)
    assert set(result["skipped"]) == {"lpips", "rfid"}
    assert "lpips" not in result and "rfid" not in result  # skipped, never reported as 0
    with open(tmp_path / "eval.json") as f:
        assert json.load(f)["recon_psnr"] == result["recon_psnr"]


def _reference_lpips(torch, directory):
    """The `lpips` package's LPIPS (a random VGG16 trunk, as no download is possible, and the v0.1
    heads the package ships) and the weights file `python -m vqjax.convert lpips` makes of it."""
    lpips_torch = pytest.importorskip("lpips")
    torch.manual_seed(0)
    net = lpips_torch.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = net.state_dict()
    # net.slice{s}.{i}.weight -> torchvision's features.{i}.weight (vgg16-397923af.pth's layout).
    vgg = {"features." + k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.")}
    torch.save(vgg, directory / "vgg16.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, directory / "lin.pth")
    convert.main(["lpips", "--vgg", str(directory / "vgg16.pth"), "--lin", str(directory / "lin.pth"),
                  "--out", str(directory / "lpips.msgpack")])
    return net


def _reference_inception(torch, directory, calibration):
    """pytorch-fid's InceptionV3 (pool features, its own resize and [0, 1] -> [-1, 1] input
    normalisation) with random weights, and the file `python -m vqjax.convert inception` makes
    of them. Random batch-norm affine terms and running statistics of `calibration` (NCHW in
    [0, 1]) keep every layer near unit scale, as in tests/test_inception.py."""
    pytest.importorskip("pytorch_fid")
    model, net = calibrated_fid_inception(1, calibration, resize_input=True, normalize_input=True)
    torch.save(net.state_dict(), directory / "pt_inception.pth")
    convert.main(["inception", "--pth", str(directory / "pt_inception.pth"), "--out",
                  str(directory / "inception.msgpack")])
    return model.eval()


@pytest.mark.extended
def test_entry_point_lpips_and_rfid_equal_the_reference_packages(trained_vqgan, tmp_path):
    """Through the command line, with weight files converted from random PyTorch networks: the
    LPIPS and rFID it reports equal the `lpips` package's mean distance and pytorch-fid's
    `calculate_frechet_distance` of pytorch-fid's InceptionV3 features, computed here on the same
    originals and reconstructions. The process has 2 devices and the workdir was written by 4:
    checkpoints read across topologies."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("lpips")
    pytest.importorskip("pytorch_fid")
    from pytorch_fid import fid_score

    _, workdir, _ = trained_vqgan
    num_batches = 1
    # The images the evaluator scores: the first eval batch (evaluate.py smoke: 8 images) of the
    # model's data config, reconstructed with the weights it evaluates (the weight average,
    # which pretrained.load reads) and clipped to [-1, 1].
    tokenizer = pretrained.load(workdir)
    data_cfg = evaluate_model_lib.resolve_data(_evaluate_config(workdir, "").data, tokenizer.config.data)
    batches = data_lib.make_dataset(data_cfg, data_cfg.eval_split, data_cfg.eval_batch_size, train=False)
    originals = np.concatenate([b["image"][b["mask"] != 0] for b, _ in zip(batches, range(num_batches))])
    reconstructions = np.asarray(tokenizer.reconstruct(originals))

    def nchw(images):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def unit(images):  # pytorch-fid's input range; its normalize_input maps [0, 1] back to [-1, 1]
        return nchw((images + 1) / 2)

    lpips_net = _reference_lpips(torch, tmp_path)
    inception_net = _reference_inception(torch, tmp_path, unit(np.concatenate([originals, reconstructions])))

    cmd = [sys.executable, "-m", "experiments.evaluate", "--config=experiments/configs/evaluate.py:smoke",
           f"--config.model_dir={workdir}", f"--config.out={tmp_path / 'eval'}",
           f"--config.evals.lpips_path={tmp_path / 'lpips.msgpack'}",
           f"--config.evals.inception_path={tmp_path / 'inception.msgpack'}",
           f"--config.evals.num_eval_batches={num_batches}"]
    # One BLAS thread: on two busy cores, OpenBLAS's two threads make the 2048 x 2048 eigh of
    # the Frechet distance ~10x slower (measured 22 s against 1.7 s).
    env = subprocess_env(num_devices=2, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rfid" in proc.stdout and "recon_ssim" in proc.stdout  # the printed table
    with open(tmp_path / "eval" / "eval.json") as f:
        result = json.load(f)
    assert "skipped" not in result

    # The same images: the PSNR of these reconstructions (numpy) is the one the evaluator reported.
    mse = np.mean(np.square(reconstructions.astype(np.float64) - originals), axis=(1, 2, 3))
    assert result["num_eval_examples"] == len(originals) == 8
    np.testing.assert_allclose(result["recon_psnr"], np.mean(10 * np.log10(4.0 / mse)), rtol=1e-5)

    with torch.no_grad():
        # LPIPS as vqjax reports it: one distance per image (the package's spatial averages,
        # summed over the five layers), then the mean over images.
        lpips_reference = float(lpips_net(nchw(reconstructions), nchw(originals)).mean())
        real, fake = (inception_net(unit(x))[0].flatten(1).numpy().astype(np.float64)
                      for x in (originals, reconstructions))
    # pytorch-fid's statistics (np.mean, np.cov) and its Frechet distance (scipy's sqrtm). Its
    # 2048 x 2048 complex Schur decomposition takes minutes on two cores, so the features are
    # first written in an orthonormal basis of the span of all 16 centred rows (an exact
    # rotation: the distance is invariant under it, as the means' difference and both
    # covariances live in that span); with 8 images a set, both covariances stay singular
    # (rank 7) there, which pytorch-fid's sqrtm handles (a near-zero imaginary part is dropped).
    centre = np.concatenate([real, fake]).mean(0)
    basis = np.linalg.svd(np.concatenate([real, fake]) - centre, full_matrices=False)[2].T  # [2048, 16]
    real, fake = (real - centre) @ basis, (fake - centre) @ basis
    rfid_reference = float(fid_score.calculate_frechet_distance(
        real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)))
    # LPIPS: float32 VGG in XLA vs PyTorch, in other summation orders, on reconstructions made by a
    # 2-device and a 1-device program; tests/test_lpips.py bounds a distance's error by 1e-4
    # (measured: ~2e-7 per distance).
    np.testing.assert_allclose(result["lpips"], lpips_reference, rtol=1e-4)
    # rFID: float32 Inception features agree to ~1e-4 of their scale (tests/test_inception.py);
    # the distance, a difference of traces, moves by about that fraction, and the float64 linear
    # algebra (vqjax's eigh vs scipy's sqrtm of a singular product) adds ~1e-6. 1e-3 leaves a
    # 10x margin; a wrong pool, resize or normalisation moves it by percents.
    np.testing.assert_allclose(result["rfid"], rfid_reference, rtol=1e-3)


class _LinearFeatures:
    """A stand-in for the FID InceptionV3 (which tests/test_inception.py pins to pytorch-fid's):
    2048 pool features and 1008 logits, each a fixed linear map of the pixels."""

    def apply(self, variables, images):
        flat = images.reshape(images.shape[0], -1)
        return inception_lib.InceptionOutput(pool=jnp.dot(flat, variables["pool"], precision="highest"),
                                             logits=jnp.dot(flat, variables["logits"], precision="highest"))


def test_sample_quality_equals_numpy_formulas(monkeypatch):
    """A prior's FID / IS / KID (`samples.sample_quality`) from the features of its samples and of
    masked real batches, against the formulas written out here in numpy float64: FID through
    scipy's sqrtm, IS over the samples' logits in 10 consecutive splits, KID as the unbiased
    polynomial-kernel MMD^2 of the first `kid_subset_size` rows of each set."""
    monkeypatch.setattr(inception_lib, "InceptionV3", _LinearFeatures)
    rng = np.random.default_rng(0)
    # Pool features of unit scale in a 4-dimensional subspace (the covariances share it, so the
    # cross term of FID matters, and are singular in 2048 dimensions); logits of std ~3 (peaked,
    # image-dependent classes).
    pixels = 8 * 8 * 3
    variables = {"pool": rng.normal(0, 1 / 8, (pixels, 4)) @ rng.normal(0, 0.5, (4, 2048)),
                 "logits": rng.normal(0, 0.375, (pixels, 1008))}
    fake_batches = [rng.uniform(-1.3, 1.3, (8, 8, 8, 3)).astype(np.float32) for _ in range(3)]  # clipped
    real_batches = [rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32) for _ in range(2)]
    real_batches[1][4:] = 50.0  # padding rows (mask 0) must count for nothing
    masks = [np.ones(8, np.float32), np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)]
    result = samples.sample_quality(
        fake_batches, [{"image": x, "mask": m} for x, m in zip(real_batches, masks)],
        jax.tree.map(lambda w: jnp.asarray(w, jnp.float32), variables), parallel.make_mesh(), kid_subset_size=12)

    def features(images, name):
        return images.reshape(len(images), -1).astype(np.float64) @ variables[name].astype(np.float32)

    fake = np.clip(np.concatenate(fake_batches), -1, 1)
    real = np.concatenate([real_batches[0], real_batches[1][:4]])
    fake_pool, real_pool, logits = features(fake, "pool"), features(real, "pool"), features(fake, "logits")
    assert (result["num_fid_samples"], result["num_fid_real"]) == (24, 12)

    # FID in an orthonormal basis of the span of the centred rows (an exact rotation, and
    # 27 dimensions instead of 2048 for scipy's sqrtm).
    both = np.concatenate([fake_pool, real_pool])
    basis = np.linalg.svd(both - both.mean(0), full_matrices=False)[2].T
    a, b = (fake_pool - both.mean(0)) @ basis, (real_pool - both.mean(0)) @ basis
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    fid = (np.sum(np.square(a.mean(0) - b.mean(0))) + np.trace(cov_a) + np.trace(cov_b)
           - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real)

    # IS: chunks [i N / 10, (i + 1) N / 10) of the 24 samples; exp of the mean KL(p(y|x) || p(y)).
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    scores = []
    for i in range(10):
        chunk = log_p[i * 24 // 10:(i + 1) * 24 // 10]
        log_marginal = np.log(np.exp(chunk).mean(0))
        scores.append(np.exp(np.mean([np.sum(np.exp(row) * (row - log_marginal)) for row in chunk])))

    # KID: subsets of 12 rows out of 12 are permutations, so every subset gives the same MMD^2
    # (std 0) of the first 12 samples and the 12 real rows; k(u, v) = (u.v / 2048 + 1)^3.
    k_xx, k_yy, k_xy = ((u @ v.T / 2048 + 1) ** 3 for u, v in
                        ((fake_pool[:12], fake_pool[:12]), (real_pool, real_pool), (fake_pool[:12], real_pool)))
    off_diagonal = 1 - np.eye(12)
    kid = np.sum((k_xx + k_yy) * off_diagonal) / (12 * 11) - 2 * np.mean(k_xy)
    # float32 features (XLA's matmul over 192 pixels) against float64 ones: ~1e-8 relative for
    # IS and KID. FID: vqjax takes the trace of sqrtm from the 2048 eigenvalues of a rank-4
    # product, ~1000 of which are positive rounding noise (~1e-16 of the largest) whose square
    # roots add up to ~1e-5 of the distance (measured 1.1e-5, also with float64 features).
    np.testing.assert_allclose(result["fid"], fid, rtol=1e-4)
    np.testing.assert_allclose([result["inception_score"], result["inception_score_std"]],
                               [np.mean(scores), np.std(scores)], rtol=1e-5)
    np.testing.assert_allclose([result["kid"], result["kid_std"]], [kid, 0.0], rtol=1e-5, atol=1e-6 * abs(kid))


def test_missing_model_and_weights_are_sentences(tmp_path):
    with pytest.raises(ValueError, match="config.model_dir is empty"):
        evaluate_model_lib.evaluate_model(_evaluate_config("", str(tmp_path)))
    with pytest.raises(ValueError, match="no config.json"):
        evaluate_model_lib.evaluate_model(_evaluate_config(str(tmp_path), str(tmp_path)))
    with pytest.raises(ValueError, match="python -m vqjax.convert inception"):
        evaluation.load_evaluators("", str(tmp_path / "absent.msgpack"))


def test_usage_over_a_split_counts_only_real_images():
    """Constructed codes through the eval loop: padded rows (mask 0) count for nothing."""
    num_codes = 8

    def reconstruct(weights, images):  # perfect reconstruction; each image's code is 8 x its value
        codes = jnp.round(images[:, :1, :1, 0] * 8).astype(jnp.int32)
        return images, jnp.broadcast_to(codes, (images.shape[0], 2, 2))

    def batch(codes, mask):
        images = np.broadcast_to(np.asarray(codes, np.float32)[:, None, None, None] / 8, (4, 16, 16, 3))
        return {"image": np.array(images), "mask": np.asarray(mask, np.float32)}

    batches = [batch([0, 0, 1, 2], [1, 1, 1, 1]), batch([3, 3, 7, 7], [1, 1, 0, 0])]
    mesh = parallel.make_mesh()
    eval_step = jax.jit(evaluation.make_eval_step(reconstruct, num_codes), out_shardings=parallel.replicated(mesh))
    result = evaluation.evaluate(eval_step, None, batches, mesh, num_codes=num_codes, code_bits=0.0,
                                 evaluators=evaluation.Evaluators())
    counts = np.array([8, 4, 4, 8], np.float64)  # codes 0..3, four positions per image; 7 is padding
    probs = counts / counts.sum()
    assert result["num_eval_examples"] == 6
    assert result["codebook_usage"] == pytest.approx(4 / num_codes)
    assert result["perplexity"] == pytest.approx(np.exp(-np.sum(probs * np.log(probs))), rel=1e-6)
    assert result["recon_mse"] == 0.0 and result["recon_ssim"] == pytest.approx(1.0, abs=1e-6)
