"""Two processes on one machine, as hosts of a pod: `jax.distributed` with a localhost
coordinator, CPU collectives (gloo), 2 processes x 2 CPU devices. Each family's two-process run
must end where one process with 4 devices does (the same global batches, so the same losses,
codebook and metrics):
  - VQGAN: discriminator, batch-norm statistics, EMA codebook and weight average;
  - prior: both processes encode the code maps together, process 0 caches them;
  - diffusion: dropout, timesteps and the bits/dim estimate's draws, the weight average;
  - VQ-VAE: preempted by a SIGTERM to one process only (both must save the same step and exit),
    then resumed by the entry point (`python -m experiments.vqvae --multihost`).

One pair of processes (tests/multihost_worker.py) trains the families of FAMILIES, each as its
shared one-process run of tests/conftest.py was trained, then the VQ-VAE that the SIGTERM stops:
one start-up and one `jax.distributed` connection for all of them. In a whole-suite run the pair
starts in the background as soon as the shared VQGAN is trained (tests/conftest.py), and trains
on the core the one-process tests leave idle while they compile. (Their compiled programs
cannot come from the persistent compilation cache of the one-process runs: those are compiled
for 4 devices of one process. Process 0 reads the cache's entries of earlier two-process runs,
process 1 never: on the CPU, the cache key holds the topology each process sees of itself.)
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, load_config, subprocess_env
from vqjax.core import checkpoints
from vqjax.train import config_changes, experiment

TIMINGS = ("images_per_sec", "code_maps_per_sec")
NUM_STEPS = 40
OVERRIDES = {"train.num_steps": NUM_STEPS, "train.ckpt_steps": 2, "train.log_steps": 2, "train.eval_steps": 1000}


@dataclasses.dataclass(frozen=True)
class Family:
    reference: str  # a session fixture of tests/conftest.py: (config, workdir, metrics) of the one-process run
    config: str  # the smoke config the reference starts from: experiments/configs/<config>.py:smoke
    reports: str  # a metric of this family's metrics.json
    same_files: tuple = ()  # folders of the workdir that must list the same files as the reference's


# The families that the pair of processes trains as their one-process runs were trained; a family
# added here is trained by the same pair of processes, before the preempted VQ-VAE.
FAMILIES = {
    "vqgan": Family("trained_vqgan", "vqgan_quickstart", "d_loss"),
    "prior": Family("trained_prior", "prior_quickstart", "bits_per_token", same_files=("tokens",)),
    "diffusion": Family("trained_diffusion", "diffusion_quickstart", "bits_per_dim"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(command, log_dir, tag):
    """The two processes of one multi-host run (`command` + the process' index); their output
    goes to files."""
    port = _free_port()
    processes = []
    for index in range(2):
        log = open(os.path.join(log_dir, f"{tag}_{index}.log"), "w")
        processes.append((subprocess.Popen(command(port, index), cwd=REPO_ROOT, env=subprocess_env(num_devices=2),
                                           stdout=log, stderr=subprocess.STDOUT), log))
    return processes


def _entry_point(workdir, overrides, entry_point="experiments.vqvae", config="vqvae_quickstart"):
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    return lambda port, index: [
        sys.executable, "-m", entry_point, f"--config=experiments/configs/{config}.py:smoke", f"--workdir={workdir}",
        *flags, "--multihost", f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={index}"]


def _wait(processes, log_dir, tag, timeout=300):
    deadline = time.monotonic() + timeout
    try:
        codes = [process.wait(timeout=max(1.0, deadline - time.monotonic())) for process, _ in processes]
    finally:
        for process, log in processes:
            if process.poll() is None:
                process.kill()
            log.close()
    logs = _logs(log_dir, tag)
    assert codes == [0, 0], f"exit codes {codes}:\n" + "\n".join(log[-3000:] for log in logs)
    return logs


def _logs(log_dir, tag):
    return [open(os.path.join(log_dir, f"{tag}_{i}.log")).read() for i in range(2)]


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


def _assert_metrics_equal(workdir, single_dir, *reported):
    two, one = _metrics(workdir), _metrics(single_dir)
    assert set(two) == set(one) and set(reported) <= set(one), sorted(one)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)


def _run_as(reference_config, name) -> dict:
    """The overrides that make `name`'s smoke config the reference run's config."""
    smoke = json.loads(load_config(name, "smoke").to_json_best_effort())
    wanted = config_changes.flatten(json.loads(reference_config.to_json_best_effort()))
    overrides = {k: v for k, v in wanted.items() if config_changes.flatten(smoke).get(k, "(unset)") != v}
    return {"config": name, "overrides": overrides}


class Pod:
    """One pair of processes that trains each family of FAMILIES, then the VQ-VAE of OVERRIDES,
    which a SIGTERM to process 1 alone stops once its step-2 checkpoint is saved (a thread
    watches for it, so that the pair can run in the background)."""

    def __init__(self, root, reference_configs: dict):
        self.root = str(root)
        self.workdirs = {name: os.path.join(self.root, name) for name in [*FAMILIES, "vqvae"]}
        runs = [{**_run_as(reference_configs[name], family.config), "workdir": self.workdirs[name]}
                for name, family in FAMILIES.items()]
        runs.append({"config": "vqvae_quickstart", "overrides": OVERRIDES, "workdir": self.workdirs["vqvae"]})
        runs_file = os.path.join(self.root, "runs.json")
        with open(runs_file, "w") as f:
            json.dump(runs, f)
        self.processes = _launch(lambda port, index: [sys.executable, "-m", "tests.multihost_worker", str(port),
                                                      str(index), runs_file], self.root, "pod")
        self.sigterm_problem = None
        self.watcher = threading.Thread(target=self._sigterm_once_step_2_is_saved, daemon=True)
        self.watcher.start()

    def _sigterm_once_step_2_is_saved(self):
        # Once the VQ-VAE's step 2 is saved (the coordination service of jax.distributed is
        # running by then), long before step NUM_STEPS.
        deadline = time.monotonic() + 900
        while not os.path.isdir(os.path.join(self.workdirs["vqvae"], "checkpoints", "2")):
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in self.processes):
                self.sigterm_problem = "no step-2 checkpoint of the VQ-VAE"
                return
            time.sleep(0.05)
        self.processes[1][0].send_signal(signal.SIGTERM)

    def finish(self) -> dict:
        """Waits for both processes: {"workdirs": {family or 'vqvae': workdir}, "logs": [process
        0's output, process 1's]}."""
        self.watcher.join(timeout=900)
        logs = _wait(self.processes, self.root, "pod", timeout=600)
        assert self.sigterm_problem is None, self.sigterm_problem + ":\n" + "\n".join(log[-3000:] for log in logs)
        return {"workdirs": self.workdirs, "logs": logs}

    def kill(self):
        for process, log in self.processes:
            if process.poll() is None:
                process.kill()
            log.close()


_BACKGROUND: dict = {}  # "pod": the Pod tests/conftest.py started, until the `pod` fixture takes it


def start_background_pod(tmp_path_factory, reference_configs: dict) -> None:
    """Starts the pair of processes now (tests/conftest.py does, once the shared VQGAN is trained)."""
    if "pod" not in _BACKGROUND:
        _BACKGROUND["pod"] = Pod(tmp_path_factory.mktemp("pod"), reference_configs)


def stop_background_pod() -> None:
    pod = _BACKGROUND.pop("pod", None)
    if pod is not None:
        pod.kill()


@pytest.fixture(scope="module")
def pod(request, tmp_path_factory):
    """The Pod's finished runs; the one started in the background, else one started now."""
    # The reference runs first: training the shared VQGAN starts the background pod if none is yet.
    references = {name: request.getfixturevalue(family.reference)[0] for name, family in FAMILIES.items()}
    started = _BACKGROUND.pop("pod", None) or Pod(tmp_path_factory.mktemp("pod"), references)
    try:
        return started.finish()
    finally:
        started.kill()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_two_processes_train_as_one_process_does(name, pod, request):
    family = FAMILIES[name]
    _, single_dir, _ = request.getfixturevalue(family.reference)
    workdir = pod["workdirs"][name]
    with open(os.path.join(workdir, "config.json")) as f, open(os.path.join(single_dir, "config.json")) as g:
        assert json.load(f) == json.load(g)  # the same run, on two processes
    for folder in family.same_files:
        assert sorted(os.listdir(os.path.join(workdir, folder))) == sorted(os.listdir(os.path.join(single_dir, folder)))
    _assert_metrics_equal(workdir, single_dir, family.reports)


def test_two_processes_preempted_on_one_then_resumed_equal_one_process(pod, tmp_path):
    workdir, logs = pod["workdirs"]["vqvae"], pod["logs"]
    saved, _ = checkpoints.read_latest(workdir, "test")
    assert 2 < saved < NUM_STEPS, f"the preempted run saved step {saved}"
    assert f"SIGTERM: saved step {saved}" in logs[0], logs[0][-2000:]
    assert not os.path.exists(os.path.join(workdir, "metrics.json"))

    # The resumed run and the one-process run save only their last step (the checkpoint interval
    # changes no metric; a resumed run may change it).
    overrides = {**OVERRIDES, "train.ckpt_steps": NUM_STEPS}
    resumed = _launch(_entry_point(workdir, overrides), str(tmp_path), "resumed")
    try:
        # The one-process run, meanwhile: until process 1 has compiled the programs that process 0
        # reads from the compilation cache, process 0 waits and leaves a core free.
        config = load_config("vqvae_quickstart", "smoke")
        for key, value in overrides.items():
            section, field = key.split(".")
            config[section][field] = value
        single_dir = str(tmp_path / "single")
        experiment.train_and_evaluate(config, single_dir)  # 1 process x 4 devices
    except BaseException:
        for process, log in resumed:
            process.kill()
            log.close()
        raise
    logs = _wait(resumed, str(tmp_path), "resumed")
    assert f"starting at step {saved} of {NUM_STEPS}" in logs[0], logs[0][-2000:]
    _assert_metrics_equal(workdir, single_dir, "train_loss", "recon_psnr")
