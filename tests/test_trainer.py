"""The train step and the training loop: compile once, device-count independence, resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import REPO_ROOT, load_config, subprocess_env
from vqjax import families
from vqjax.core import checkpoints, parallel
from vqjax.data import images as data_lib
from vqjax.families import tokenizer as tokenizer_lib
from vqjax.families.vqvae import VQVAEFamily
from vqjax.train import experiment, loop as loop_lib


def _smoke(**quantizer):
    config = load_config("vqvae_quickstart", "smoke")
    config.quantizer.update(quantizer)
    return config


def _batches(config, n):
    it = data_lib.make_dataset(config.data, "train", train=True)
    return [next(it) for _ in range(n)]


def _run_steps(config, batches, devices, max_traces=None):
    mesh = parallel.make_mesh(devices)
    family = VQVAEFamily(config, mesh=mesh)
    step_fn = family.train_step
    if max_traces is not None:
        step_fn = chex.assert_max_traces(step_fn, n=max_traces)
    train_step = jax.jit(step_fn, donate_argnums=0, out_shardings=(parallel.replicated(mesh),) * 2)
    first = parallel.to_global(batches[0], mesh)
    state = jax.jit(lambda r, x: family.create(r, {"image": x}),
                    out_shardings=parallel.replicated(mesh))(jax.random.key(0), first["image"])
    history = []
    for batch in batches:
        state, metrics = train_step(state, parallel.to_global(batch, mesh))
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


def test_train_step_compiles_once_and_learns():
    config = _smoke()
    batches = _batches(config, 6)
    state, history = _run_steps(config, batches * 3, jax.devices(), max_traces=1)
    assert int(state.step) == 18
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(np.isfinite(h["loss"]) for h in history)


@pytest.mark.parametrize("kind", ["ema", "vq"])
def test_one_device_and_four_devices_give_the_same_state(kind):
    config = _smoke(kind=kind, dead_code_threshold=0.5)
    batches = _batches(config, 4)
    one, _ = _run_steps(config, batches, jax.devices()[:1])
    four, _ = _run_steps(config, batches, jax.devices())
    chex.assert_trees_all_close(one.extra, four.extra, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(one.params, four.params, rtol=1e-4, atol=1e-5)
    assert int(one.step) == 4 and int(np.max(one.extra["quantizer"].last_used)) == 4
    # EMA updates only: a learned codebook's state (usage only) has no EMA statistics.
    assert int(getattr(one.extra["quantizer"], "num_updates", 0)) == (4 if kind == "ema" else 0)


def test_learned_codebook_is_trained_by_its_loss():
    config = _smoke(kind="vq", dead_code_threshold=0.0)
    batches = _batches(config, 3)
    state, history = _run_steps(config, batches, jax.devices())
    config.train.num_steps = 1
    family = VQVAEFamily(config, mesh=parallel.make_mesh())
    initial = jax.jit(family.create)(jax.random.key(0), {"image": jnp.asarray(batches[0]["image"])})
    assert history[0]["codebook_loss"] > 0
    assert not np.allclose(state.params["quantizer"]["codebook"], initial.params["quantizer"]["codebook"])
    assert set(state.opt_state[0].mu) == {"net", "quantizer"}
    assert set(state.opt_state[0].mu["quantizer"]) == {"codebook"}


def _restore(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = manager.latest_step()
    return step, manager.restore(step)


def test_non_finite_loss_stops_without_saving_a_bad_checkpoint(tmp_path, monkeypatch):
    config = _smoke()
    real = data_lib.make_dataset

    def poisoned(cfg, split, *args, **kwargs):
        for batch in real(cfg, split, *args, **kwargs):
            if kwargs.get("train"):
                batch["image"] = batch["image"] * np.nan
            yield batch

    monkeypatch.setattr(data_lib, "make_dataset", poisoned)
    with pytest.raises(loop_lib.NonFiniteLossError, match="learning_rate"):
        experiment.train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(tmp_path / "checkpoints")


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A finished 2-step smoke run, shared: (config, workdir). A test that writes into it
    works on a copy."""
    config = _smoke()
    config.train.num_steps = 2
    workdir = str(tmp_path_factory.mktemp("two_step_run"))
    experiment.train_and_evaluate(config, workdir)
    return config, workdir


def test_checkpoint_that_does_not_match_the_config(two_step_run, tmp_path):
    """Even with --allow_config_change, a checkpoint of another shape is refused in a sentence,
    and the refused run leaves the workdir as it was (its config.json still the run's)."""
    workdir = tmp_path / "run"
    shutil.copytree(two_step_run[1], workdir)
    config = two_step_run[0].copy_and_resolve_references()
    saved_config = (workdir / "config.json").read_bytes()
    config.model.hidden_channels = 24
    config.train.num_steps = 4
    with pytest.raises(ValueError, match="does not match this config"):
        experiment.train_and_evaluate(config, str(workdir), allow_config_change=True)
    assert (workdir / "config.json").read_bytes() == saved_config
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "metrics.json", "reconstructions.png",
                                           "tensorboard"]


def test_init_from_another_run(two_step_run, tmp_path):
    config, source = two_step_run[0].copy_and_resolve_references(), two_step_run[1]
    _, saved = _restore(source)

    config.optim.name = "adamw"  # another optimizer: only params and codebook are taken
    config.init_from = source
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    family = families.build(config, mesh=mesh, workdir=str(tmp_path / "probe"))
    create = jax.jit(family.create, out_shardings=replicated)
    example = {"image": jnp.zeros((8, 32, 32, 3))}
    abstract = jax.eval_shape(create, jax.random.key(0), example)
    abstract = checkpoints.abstract_like(abstract, replicated)
    fresh = create(jax.random.key(0), example)
    loaded_state, loaded = experiment.load_init_from(config.init_from, family, abstract, fresh, 0.0, mesh)
    assert set(loaded) == {"params", "quantizer"}
    chex.assert_trees_all_equal(jax.device_get(loaded_state.params), saved["params"])
    np.testing.assert_array_equal(loaded_state.extra["quantizer"].embedding,
                                  saved["extra"]["quantizer"]["embedding"])
    assert experiment.train_and_evaluate(config, str(tmp_path / "target"))["step"] == 2

    config.model.embed_dim = 4
    with pytest.raises(ValueError, match="does not fit this config"):
        experiment.train_and_evaluate(config, str(tmp_path / "mismatch"))


def test_bad_config_values_are_sentences(tmp_path):
    config = _smoke(kind="fsq-typo")
    with pytest.raises(ValueError, match="config.quantizer.kind"):
        experiment.train_and_evaluate(config, str(tmp_path))
    config = _smoke()
    config.data.batch_size = 6
    with pytest.raises(ValueError, match="devices"):
        experiment.train_and_evaluate(config, str(tmp_path))


def _entry_point(workdir, *overrides, family="vqvae", **popen):
    cmd = [sys.executable, "-m", f"experiments.{family}",
           f"--config=experiments/configs/{family}_quickstart.py:smoke", f"--workdir={workdir}", *overrides]
    env = subprocess_env(PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.extended
def test_entry_point_sigterm_saves_and_resumes(tmp_path):
    workdir = tmp_path / "run"
    proc = _entry_point(workdir, "--config.train.num_steps=100000", "--config.train.ckpt_steps=100000",
                        "--config.train.log_steps=1000")
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "tensorboard").exists():
        time.sleep(0.5)
    time.sleep(3.0)  # some steps into training
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "SIGTERM: saved step" in output
    steps_saved = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
    assert len(steps_saved) == 1 and steps_saved[0] > 0
    assert not (workdir / "metrics.json").exists()

    resumed = _entry_point(workdir, f"--config.train.num_steps={steps_saved[0] + 2}")
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    assert f"starting at step {steps_saved[0]} of" in output
    # (Resumed runs equal uninterrupted ones: test_vqgan_resumed_run_matches_an_uninterrupted_one,
    # through the loop every family shares.)
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["step"] == steps_saved[0] + 2
    for key in ("recon_mse", "recon_psnr", "codebook_usage", "perplexity", "images_per_sec"):
        assert key in metrics
    assert 0 < metrics["codebook_usage"] <= 1
    assert (workdir / "reconstructions.png").exists()
    with open(workdir / "config.json") as f:
        assert json.load(f)["train"]["num_steps"] == steps_saved[0] + 2


def test_entry_point_rejects_a_misspelt_override(tmp_path):
    proc = _entry_point(tmp_path, "--config.train.num_stepz=3")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "num_stepz" in output


# A VQGAN run resumed mid-way equals an uninterrupted one: tests/test_experiment.py, for every
# family (the discriminator, its statistics, LeCam anchors and the weight average included).


def test_entry_point_refuses_a_config_of_the_other_family(tmp_path):
    cmd = [sys.executable, "-m", "experiments.vqgan",
           "--config=experiments/configs/vqvae_quickstart.py:smoke", f"--workdir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    assert proc.returncode != 0
    assert "python -m experiments.vqvae" in proc.stdout + proc.stderr


def test_weight_average_is_what_evaluation_uses():
    config = _smoke()
    config.optim.params_ema_decay = 0.5
    batches = _batches(config, 2)
    config.train.num_steps = 2
    family = VQVAEFamily(config, mesh=parallel.make_mesh())
    state = jax.jit(family.create)(jax.random.key(0), {"image": jnp.asarray(batches[0]["image"])})
    history = [state.params]
    step_fn = jax.jit(family.train_step)
    for batch in batches:
        state, _ = step_fn(state, jax.tree.map(jnp.asarray, batch))
        history.append(state.params)
    expected = jax.tree.map(lambda p0, p1, p2: 0.25 * p0 + 0.25 * p1 + 0.5 * p2, *history)
    chex.assert_trees_all_close(state.ema_params, expected, rtol=1e-5, atol=1e-7)
    assert state.eval_params is state.ema_params
    reconstruct = jax.jit(tokenizer_lib.make_reconstruct(family.model, family.quantizer))
    images = jnp.asarray(batches[0]["image"])
    averaged, _ = reconstruct(tokenizer_lib.eval_weights(state), images)
    current, _ = reconstruct(tokenizer_lib.eval_weights(state.replace(ema_params=None)), images)
    assert not np.allclose(averaged, current)
