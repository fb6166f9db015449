"""`python -m experiments.evaluate` and `vqjax.eval`: the trainer's evaluation and the
entry point are the same functions, and metrics without weights are skipped with a reason."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, load_config, random_frozen_weights, subprocess_env
from vqjax.core import parallel
from vqjax.eval import evaluate_model as evaluate_model_lib, reconstruction as evaluation
from vqjax.convert import save_params
from vqjax.nets import inception, lpips


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


def test_entry_point_with_lpips_and_inception_weights(trained_vqgan, tmp_path):
    """Through the command line, with weights files (random, made here): LPIPS and rFID appear.
    The process has 2 devices and the workdir was written by 4: checkpoints read across topologies."""
    _, workdir, _ = trained_vqgan
    images = jnp.zeros((1, 16, 16, 3))
    lpips_shapes = jax.eval_shape(lpips.LPIPS().init, jax.random.key(0), images, images)["params"]
    save_params(random_frozen_weights(lpips_shapes), str(tmp_path / "lpips.msgpack"))
    save_params(random_frozen_weights(inception.abstract_variables()), str(tmp_path / "inception.msgpack"))
    cmd = [sys.executable, "-m", "experiments.evaluate", "--config=experiments/configs/evaluate.py:smoke",
           f"--config.model_dir={workdir}", f"--config.out={tmp_path / 'eval'}",
           f"--config.evals.lpips_path={tmp_path / 'lpips.msgpack'}",
           f"--config.evals.inception_path={tmp_path / 'inception.msgpack'}", "--config.evals.num_eval_batches=1"]
    env = subprocess_env(num_devices=2)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "eval" / "eval.json") as f:
        result = json.load(f)
    assert "skipped" not in result
    assert result["lpips"] > 0 and np.isfinite(result["rfid"]) and result["rfid"] >= 0
    assert "rfid" in proc.stdout and "recon_ssim" in proc.stdout  # the printed table


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
