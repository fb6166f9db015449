"""`python -m experiments.evaluate` and `vqjax.eval`: the trainer's evaluation and the
entry point are the same functions, and metrics without weights are skipped with a reason."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, load_config, subprocess_env
from vqjax import convert, pretrained
from vqjax.core import parallel
from vqjax.data import images as data_lib
from vqjax.eval import evaluate_model as evaluate_model_lib, reconstruction as evaluation


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
    from pytorch_fid import inception as fid

    from tests.test_inception import _random_fid_network

    torch.manual_seed(1)
    net = _random_fid_network()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fid, "fid_inception_v3", lambda: net)
        model = fid.InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: after one batch, that batch's statistics
        model.train()(calibration)
    torch.save(net.state_dict(), directory / "pt_inception.pth")
    convert.main(["inception", "--pth", str(directory / "pt_inception.pth"), "--out",
                  str(directory / "inception.msgpack")])
    return model.eval()


def test_entry_point_lpips_and_rfid_equal_the_reference_packages(trained_vqgan, tmp_path):
    """Through the command line, with weight files converted from random PyTorch networks: the
    LPIPS and rFID it reports equal the `lpips` package's mean distance and pytorch-fid's
    `calculate_frechet_distance` of pytorch-fid's InceptionV3 features, computed here on the same
    originals and reconstructions. The process has 2 devices and the workdir was written by 4:
    checkpoints read across topologies."""
    torch = pytest.importorskip("torch")
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

    lpips_net = _reference_lpips(torch, tmp_path)
    inception_net = _reference_inception(torch, tmp_path, nchw((np.concatenate([originals, reconstructions]) + 1) / 2))

    cmd = [sys.executable, "-m", "experiments.evaluate", "--config=experiments/configs/evaluate.py:smoke",
           f"--config.model_dir={workdir}", f"--config.out={tmp_path / 'eval'}",
           f"--config.evals.lpips_path={tmp_path / 'lpips.msgpack'}",
           f"--config.evals.inception_path={tmp_path / 'inception.msgpack'}",
           f"--config.evals.num_eval_batches={num_batches}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(num_devices=2), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rfid" in proc.stdout and "recon_ssim" in proc.stdout  # the printed table
    with open(tmp_path / "eval" / "eval.json") as f:
        result = json.load(f)
    assert "skipped" not in result

    # The same images: PSNR of the clipped reconstructions (numpy) is what the evaluator reported.
    mse = np.mean(np.square(reconstructions.astype(np.float64) - originals), axis=(1, 2, 3))
    assert result["num_eval_examples"] == len(originals) == 8
    np.testing.assert_allclose(result["recon_psnr"], np.mean(10 * np.log10(4.0 / mse)), rtol=1e-5)

    with torch.no_grad():  # pytorch-fid's input convention: NCHW in [0, 1]
        lpips_reference = float(lpips_net(nchw(reconstructions), nchw(originals)).mean())
        real, fake = (inception_net(nchw((x + 1) / 2))[0].flatten(1).numpy().astype(np.float64)
                      for x in (originals, reconstructions))
    rfid_reference = float(fid_score.calculate_frechet_distance(
        real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False)))
    print(f"lpips {result['lpips']!r} vs {lpips_reference!r}; rfid {result['rfid']!r} vs {rfid_reference!r}")
    # LPIPS: float32 VGG in XLA vs PyTorch (another summation order; tests/test_lpips.py pins the
    # network to 1e-4 per distance) on reconstructions from a 2-device vs a 1-device program.
    np.testing.assert_allclose(result["lpips"], lpips_reference, rtol=1e-3)
    # rFID: ...
    np.testing.assert_allclose(result["rfid"], rfid_reference, rtol=1e-2)


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
