"""Two processes on one machine, as hosts of a pod: `jax.distributed` with a localhost
coordinator, CPU collectives (gloo), 2 processes x 2 CPU devices, launched by the entry points
with `--multihost`. Each family's two-process run must end where one process with 4 devices
does (the same global batches, so the same losses, codebook and metrics):
  - VQ-VAE: preempted by a SIGTERM to one process only (both must save the same step and exit),
    then resumed;
  - prior: both processes encode the code maps together, process 0 caches them;
  - VQGAN: discriminator, batch-norm statistics, EMA codebook and weight average.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import load_config
from vqjax.core import checkpoints
from vqjax.train import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = ("images_per_sec", "code_maps_per_sec")
NUM_STEPS = 40
OVERRIDES = {"train.num_steps": NUM_STEPS, "train.ckpt_steps": 2, "train.log_steps": 2, "train.eval_steps": 1000}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, port, log_dir, tag, entry_point="experiments.vqvae", config="vqvae_quickstart",
            overrides=None):
    """The two processes of one multi-host run; their output goes to files."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("device_count=4", "device_count=2")
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f"--config.{k}={v}" for k, v in (OVERRIDES if overrides is None else overrides).items()]
    processes = []
    for index in range(2):
        command = [sys.executable, "-m", entry_point,
                   f"--config=experiments/configs/{config}.py:smoke", f"--workdir={workdir}", *flags,
                   "--multihost", f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={index}"]
        log = open(os.path.join(log_dir, f"{tag}_{index}.log"), "w")
        processes.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return processes


def _wait(processes, log_dir, tag, timeout=300):
    deadline = time.monotonic() + timeout
    try:
        codes = [process.wait(timeout=max(1.0, deadline - time.monotonic())) for process, _ in processes]
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = [open(os.path.join(log_dir, f"{tag}_{i}.log")).read() for i in range(2)]
    assert codes == [0, 0], f"exit codes {codes}:\n" + "\n".join(log[-3000:] for log in logs)
    return logs


def _metrics(workdir):
    """metrics.json's numbers, flattened to 'section/name', timings left out."""
    with open(os.path.join(workdir, "metrics.json")) as f:
        tree = json.load(f)

    def flatten(prefix, value):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flatten(f"{prefix}{key}/", item).items()}
        return {prefix.rstrip("/"): value}

    return {k: v for k, v in flatten("", tree).items()
            if isinstance(v, (int, float)) and k.rsplit("/", 1)[-1] not in TIMINGS}


def test_two_processes_preempted_on_one_then_resumed_equal_one_process(tmp_path):
    config = load_config("vqvae_quickstart", "smoke")
    for key, value in OVERRIDES.items():
        section, field = key.split(".")
        config[section][field] = value
    single_dir = str(tmp_path / "single")
    experiment.train_and_evaluate(config, single_dir)  # 1 process x 4 devices

    workdir, logs_dir = str(tmp_path / "two"), str(tmp_path)
    processes = _launch(workdir, _free_port(), logs_dir, "first")
    try:
        # SIGTERM to process 1 alone, once step 2 is saved (the coordination service of
        # jax.distributed is running by then) and long before step NUM_STEPS.
        deadline = time.monotonic() + 240
        while not os.path.isdir(os.path.join(workdir, "checkpoints", "2")):
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in processes), "no step-2 checkpoint"
            time.sleep(0.05)
        processes[1][0].send_signal(signal.SIGTERM)
    finally:
        logs = _wait(processes, logs_dir, "first")
    saved, _ = checkpoints.read_latest(workdir, "test")
    assert 2 < saved < NUM_STEPS, f"the preempted run saved step {saved}"
    assert f"SIGTERM: saved step {saved}" in logs[0], logs[0][-2000:]
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))

    _wait(_launch(workdir, _free_port(), logs_dir, "resumed"), logs_dir, "resumed")
    two, one = _metrics(workdir), _metrics(single_dir)
    assert set(two) == set(one) and "train_loss" in one and "recon_psnr" in one, sorted(one)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_two_processes_train_a_prior_as_one_process_does(trained_vqgan, tmp_path):
    """The prior family: both processes encode the code maps together (collectives over all
    devices), process 0 caches them, and training equals the one-process run."""
    _, tokenizer_dir, _ = trained_vqgan
    config = load_config("prior_quickstart", "smoke")
    config.tokenizer_dir = tokenizer_dir
    single_dir = str(tmp_path / "single")
    experiment.train_and_evaluate(config, single_dir)

    workdir = str(tmp_path / "two")
    _wait(_launch(workdir, _free_port(), str(tmp_path), "prior", "experiments.transformer", "prior_quickstart",
                  {"tokenizer_dir": tokenizer_dir}), str(tmp_path), "prior")
    assert sorted(os.listdir(os.path.join(workdir, "tokens"))) == sorted(os.listdir(os.path.join(single_dir, "tokens")))
    two, one = _metrics(workdir), _metrics(single_dir)
    assert set(two) == set(one) and "bits_per_token" in one, sorted(one)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_two_processes_train_a_vqgan_as_one_process_does(trained_vqgan, tmp_path):
    """The VQGAN family (discriminator, batch-norm statistics, EMA codebook, weight average):
    the shared one-process run of tests/conftest.py, on two processes."""
    _, single_dir, _ = trained_vqgan
    workdir = str(tmp_path / "two")
    _wait(_launch(workdir, _free_port(), str(tmp_path), "vqgan", "experiments.vqgan", "vqgan_quickstart",
                  {"optim.params_ema_decay": 0.5}), str(tmp_path), "vqgan")
    two, one = _metrics(workdir), _metrics(single_dir)
    assert set(two) == set(one) and "d_loss" in one, sorted(one)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
