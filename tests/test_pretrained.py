"""`vqjax.pretrained.load` on a vqjax training workdir: the same reconstructions and PSNR as the
trainer's own evaluation; clear errors for what it cannot read."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from vqjax import pretrained
from vqjax.core import checkpoints, images as images_lib
from vqjax.data import images as data_lib


@pytest.fixture(scope="module")
def trained(trained_vqgan):
    config, workdir, _ = trained_vqgan  # tests/conftest.py: a 4-step VQGAN run, weight average on
    return config, workdir


def test_workdir_reconstructs_what_the_trainer_evaluated(trained):
    config, workdir = trained
    tokenizer = pretrained.load(workdir)
    with open(f"{workdir}/metrics.json") as f:
        evaluated = json.load(f)

    # PSNR over the eval batches the trainer used, from the loaded model.
    batches = data_lib.make_dataset(config.data, config.data.eval_split, config.data.eval_batch_size, train=False)
    psnr_sum, count, first = 0.0, 0, None
    for _, batch in zip(range(config.evals.num_eval_batches), batches):
        first = batch if first is None else first
        # PSNR written out (images in [-1, 1]: a data range of 2), not vqjax's metrics.psnr.
        error = np.asarray(tokenizer.reconstruct(batch["image"]), np.float64) - batch["image"]
        psnr = 10 * np.log10(4.0 / np.mean(np.square(error), axis=(1, 2, 3)))
        psnr_sum += float(np.sum(psnr * batch["mask"]))
        count += int(batch["mask"].sum())
    assert count == evaluated["num_eval_examples"]
    np.testing.assert_allclose(psnr_sum / count, evaluated["recon_psnr"], rtol=1e-5)

    # The reconstructions.png grid, rebuilt from the loaded model, pixel for pixel.
    n = config.evals.num_recon_images
    grid = images_lib.image_grid([first["image"][:n], np.asarray(tokenizer.reconstruct(first["image"]))[:n]])
    saved = np.asarray(Image.open(f"{workdir}/reconstructions.png"))
    assert grid.shape == saved.shape
    assert np.mean(grid == saved) > 0.999 and np.abs(grid.astype(int) - saved).max() <= 1  # rounding ties


def test_the_weight_average_is_what_is_loaded(trained):
    _, workdir = trained
    tokenizer = pretrained.load(workdir)
    _, saved = checkpoints.read_latest(workdir, "test")
    leaves = jax.tree.leaves(jax.tree.map(np.array_equal, saved["ema_params"], jax.device_get(tokenizer.params)))
    assert all(leaves)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, saved["params"], saved["ema_params"])))


def test_decode_indices_and_shapes(trained):
    _, workdir = trained
    tokenizer = pretrained.load(workdir)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)
    z_q, indices = tokenizer.encode(images)
    factor = tokenizer.downsampling_factor
    assert indices.shape == (2, 16 // factor, 24 // factor) and indices.dtype == np.int32
    np.testing.assert_array_equal(z_q, np.asarray(tokenizer.codebook)[np.asarray(indices)])
    np.testing.assert_allclose(tokenizer.decode_indices(indices), tokenizer.decode(z_q), rtol=1e-6, atol=1e-6)
    assert tokenizer.reconstruct(images).shape == images.shape


def test_bad_inputs_are_sentences(trained, tmp_path):
    _, workdir = trained
    tokenizer = pretrained.load(workdir)
    with pytest.raises(ValueError, match="multiples of 2"):
        tokenizer.encode(np.zeros((1, 15, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
        tokenizer.encode(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="x / 127.5 - 1"):
        tokenizer.encode(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=f"codebook has {tokenizer.num_codes} codes"):
        tokenizer.decode_indices(np.full((1, 4, 4), tokenizer.num_codes, np.int32))
    with pytest.raises(ValueError, match="no config.json"):
        pretrained.load(str(tmp_path))
    (tmp_path / "config.json").write_text(open(f"{workdir}/config.json").read())
    with pytest.raises(ValueError, match="holds no checkpoint"):
        pretrained.load(str(tmp_path))
