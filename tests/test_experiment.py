"""The one training loop, run by every family: a few steps, a checkpoint, SIGTERM, resume.

A run preempted by SIGTERM at step 2 and resumed to step 4 ends with the train state and the
metrics of an uninterrupted 4-step run, to the last bit, for every registered family.
"""

import json
import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import load_config
from vqjax import families
from vqjax.core import checkpoints
from vqjax.train import experiment, loop
from vqjax.train.state import TrainState

TIMINGS = ("images_per_sec", "code_maps_per_sec")


def _config(family, tokenizer_dir):
    if family == "prior":
        config = load_config("prior_quickstart", "smoke")
        config.tokenizer_dir = tokenizer_dir
        return config
    return load_config(f"{family}_quickstart", "smoke")


def _sigterm_after(monkeypatch, family_cls, num_batches):
    """The family's training stream sends this process SIGTERM once `num_batches` batches
    have been taken (the loop then saves at that step and returns)."""
    original = family_cls.train_batches

    def train_batches(self, start_step):
        for i, batch in enumerate(original(self, start_step)):
            if i == num_batches and start_step == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(family_cls, "train_batches", train_batches)


def _latest(workdir):
    return checkpoints.read_latest(workdir, "test")


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return {k: v for k, v in json.load(f).items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory):
    """An uninterrupted VQ-VAE smoke run, shared: its workdir."""
    workdir = str(tmp_path_factory.mktemp("vqvae_run"))
    experiment.train_and_evaluate(_config("vqvae", ""), workdir)
    return workdir


def test_every_family_is_registered_with_an_entry_point():
    assert set(families.FAMILIES) == set(families.ENTRY_POINTS) == {"vqvae", "vqgan", "prior", "diffusion"}


# The default suite resumes one family (the loop is the same for all); CI's extended tier resumes
# every family.
RESUMED_BY_DEFAULT = ("vqvae",)


@pytest.mark.parametrize("family", [f if f in RESUMED_BY_DEFAULT else pytest.param(f, marks=pytest.mark.extended)
                                    for f in sorted(families.FAMILIES)])
def test_preempted_and_resumed_run_equals_an_uninterrupted_one(family, trained_vqgan, tmp_path, monkeypatch,
                                                                 request):
    _, tokenizer_dir, tokenizer_metrics = trained_vqgan
    config = _config(family, tokenizer_dir)
    assert config.family == family and config.train.num_steps == 4 and config.train.ckpt_steps == 2
    if family == "vqgan":
        config.optim.params_ema_decay = 0.5  # as the shared uninterrupted run (tests/conftest.py)
        straight_dir = tokenizer_dir
        for key in ("recon_mse", "recon_psnr", "codebook_usage", "perplexity", "images_per_sec", "g_loss",
                    "d_loss"):
            assert key in tokenizer_metrics, key
        assert tokenizer_metrics["d_loss"] > 0  # the discriminator (disc_start=1 in smoke) trained
    elif family == "prior":
        straight_dir = request.getfixturevalue("trained_prior")[1]  # the shared run (tests/conftest.py)
    elif family == "diffusion":
        straight_dir = request.getfixturevalue("trained_diffusion")[1]
    elif family == "vqvae":
        straight_dir = request.getfixturevalue("vqvae_run")
    else:
        straight_dir = str(tmp_path / "straight")
        experiment.train_and_evaluate(config, straight_dir)

    resumed_dir = str(tmp_path / "resumed")
    with monkeypatch.context() as patch:
        # SIGTERM while step 2's batch is taken: step 2 runs, is saved, and the run returns.
        _sigterm_after(patch, families.FAMILIES[family], 1)
        preempted = experiment.train_and_evaluate(config, resumed_dir)
    assert preempted == {"step": 2, "preempted": True}
    assert not os.path.exists(os.path.join(resumed_dir, "metrics.json"))
    assert _latest(resumed_dir)[0] == 2
    resumed = experiment.train_and_evaluate(config, resumed_dir)
    assert resumed["step"] == 4

    (step_a, a), (step_b, b) = _latest(straight_dir), _latest(resumed_dir)
    assert step_a == step_b == 4
    if family == "vqgan":
        assert set(a["extra"]) >= {"quantizer", "disc_params", "disc_opt_state", "disc_batch_stats", "lecam_ema"}
        assert a["ema_params"] is not None
    chex.assert_trees_all_equal(a, b)
    assert _metrics(straight_dir) == _metrics(resumed_dir)
    rate = "code_maps_per_sec" if family == "prior" else "images_per_sec"
    assert rate in (tokenizer_metrics if family == "vqgan" else resumed)
    with open(os.path.join(resumed_dir, "config.json")) as f:
        resumed_config = json.load(f)
    assert resumed_config["family"] == family
    with open(os.path.join(straight_dir, "config.json")) as f:
        assert json.load(f) == resumed_config  # the shared runs too were trained with this config
    expected_files = {"vqvae": "reconstructions.png", "vqgan": "reconstructions.png", "prior": "samples.png",
                      "diffusion": "samples.png"}
    assert os.path.exists(os.path.join(resumed_dir, expected_files[family]))


def _scalars(workdir, tag):
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    if tag is None:
        return set(events.Tags()["tensors"])
    from tensorboard.util import tensor_util

    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}


def test_logged_metrics_are_averages_over_the_log_interval(tmp_path):
    """A step whose loss is its step number: the log at step 3 shows (1 + 2 + 3) / 3, at
    step 6 (4 + 5 + 6) / 3, not the last step's value; the learning rate of each schedule is
    logged too, and a NaN anywhere in an interval stops the run."""
    workdir = str(tmp_path)
    state = TrainState.create(seed=0, params={"w": jnp.zeros(())}, tx=optax.sgd(0.1))

    def train_step(state, batch):
        del batch
        step = state.step + 1
        loss = jnp.where(step == 8, jnp.nan, step.astype(jnp.float32))
        return state.replace(step=step), {"loss": loss}

    settings = loop.LoopSettings(num_steps=9, log_steps=3, eval_steps=100, ckpt_steps=100, examples_per_step=2,
                                 schedules={"learning_rate": optax.linear_schedule(0.0, 1.0, 10)})
    manager = checkpoints.checkpoint_manager(workdir, 1)
    with pytest.raises(loop.NonFiniteLossError, match=r"loss became nan at step 8 \(found at the log of step 9\)"):
        loop.run_loop(state, jax.jit(train_step), iter(lambda: {}, None), settings, manager=manager,
                      logger=loop.Logger(workdir, 9, 0), last_checkpoint=None, periodic_eval=dict,
                      eval_images=dict)
    manager.close()
    assert _scalars(workdir, "train/loss") == {3: 2.0, 6: 5.0}
    # The rate the step used: schedule(step - 1).
    assert _scalars(workdir, "train/learning_rate") == pytest.approx({3: 0.2, 6: 0.5})
    assert "train/images_per_sec" in _scalars(workdir, None)


def test_a_run_logs_the_config_and_its_evaluation_images(vqvae_run):
    workdir = vqvae_run  # vqvae_quickstart:smoke
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"train/loss", "train/learning_rate", "eval/recon_psnr", "eval/reconstructions"} <= tags, tags
    assert any(tag.startswith("config") for tag in tags), tags
