"""Directories written by vqjax 0.1 (before `config.family`, the generic train state and the
Quantizer interface) still load, and a resume in one stops with a sentence.

The old layout is written here by hand, as vqjax 0.1 wrote it: the checkpoint held the
network under `params`, the EMA codebook's fields under `codebook` and the discriminator
under `disc_params`; config.json had no `family` and kept `legacy_beta` under `loss`.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from vqjax import pretrained
from vqjax.core import checkpoints
from vqjax.train import experiment


@pytest.fixture(scope="module")
def old_workdir(trained_vqgan, tmp_path_factory):
    _, workdir, _ = trained_vqgan
    step, saved = checkpoints.read_latest(workdir, "test")
    old = {"step": saved["step"], "seed": saved["seed"], "params": saved["params"]["net"],
           "codebook": saved["extra"]["quantizer"], "disc_params": saved["extra"]["disc_params"],
           "disc_batch_stats": saved["extra"]["disc_batch_stats"],
           "ema_params": saved["ema_params"]["net"]}
    directory = str(tmp_path_factory.mktemp("old_workdir"))
    checkpoints.save_tree(directory, step, jax.tree.map(np.asarray, old))
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    del config["family"]
    config["loss"]["legacy_beta"] = config["quantizer"].pop("legacy_beta")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return workdir, directory


def test_an_old_tokenizer_loads_and_reconstructs_as_the_new_one(old_workdir):
    new_dir, old_dir = old_workdir
    new, old = pretrained.load(new_dir), pretrained.load(old_dir)
    assert old.config.family == "vqgan" and "legacy_beta" not in old.config.loss
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(old.encode(images)[1], new.encode(images)[1])
    np.testing.assert_array_equal(old.reconstruct(images), new.reconstruct(images))
    np.testing.assert_array_equal(old.codebook, new.codebook)


@pytest.mark.extended
def test_an_old_workdir_is_not_resumed_but_initialises_a_new_run(old_workdir, trained_vqgan, tmp_path):
    _, old_dir = old_workdir
    # The shared run's config (tests/conftest.py), so that the programs its run compiled (all but
    # the train step at learning rate 0) come from the compilation cache.
    config = trained_vqgan[0].copy_and_resolve_references()
    resumed = str(tmp_path / "resumed")
    shutil.copytree(old_dir, resumed)
    with pytest.raises(ValueError, match="written by vqjax 0.1.*--config.init_from="):
        experiment.train_and_evaluate(config, resumed)

    # A step at learning rate 0 leaves what init_from loaded in place.
    config.init_from = old_dir
    config.train.num_steps = 1
    config.optim.learning_rate = config.optim_d.learning_rate = 0.0
    fine_tuned = str(tmp_path / "fine_tuned")
    experiment.train_and_evaluate(config, fine_tuned)
    _, old = checkpoints.read_latest(old_dir, "test")
    _, new = checkpoints.read_latest(fine_tuned, "test")
    jax.tree.map(np.testing.assert_array_equal, new["params"]["net"], old["params"])
    jax.tree.map(np.testing.assert_array_equal, new["extra"]["disc_params"], old["disc_params"])
