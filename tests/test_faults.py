"""What a run does with a workdir it cannot or should not use: another run's lock, a resume
whose config changes what the run trains, a misspelt config argument."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import CONFIG_DIR, load_config
from vqjax.train import experiment, workdir_lock
from vqjax.train.workdir_lock import WorkdirBusyError, WorkdirLock


def _smoke(num_steps=2):
    config = load_config("vqvae_quickstart", "smoke")
    config.train.update(num_steps=num_steps, tensorboard=False)
    return config


def test_a_resume_that_changes_what_the_run_trains_is_refused_and_writes_nothing(tmp_path, capsys):
    config = _smoke()
    experiment.train_and_evaluate(config, str(tmp_path))
    before = {name: (tmp_path / name).read_bytes() for name in ("config.json", "metrics.json")}

    for field, value in (("model.hidden_channels", 24), ("data.batch_size", 16), ("quantizer.num_codes", 64)):
        changed = _smoke(num_steps=4)
        section, name = field.split(".")
        changed[section][name] = value
        with pytest.raises(ValueError, match=rf"in settings that change what it trains: {field} \S+ -> {value}\. "
                                             r".*--allow_config_change"):
            experiment.train_and_evaluate(changed, str(tmp_path))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()

    # Other settings are a normal part of resuming: logged, and the resumed run's config is saved.
    capsys.readouterr()
    resumed = _smoke(num_steps=4)
    resumed.optim.learning_rate = 2 * config.optim.learning_rate
    assert experiment.train_and_evaluate(resumed, str(tmp_path))["step"] == 4
    out = capsys.readouterr().out
    assert (f"settings changed since the run started: optim.learning_rate {config.optim.learning_rate!r} -> "
            f"{resumed.optim.learning_rate!r}; train.num_steps 2 -> 4") in out, out
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["learning_rate"] == resumed.optim.learning_rate

    # And a refused change goes through when the user says so.
    bigger_batch = _smoke(num_steps=6)
    bigger_batch.data.batch_size = 16
    assert experiment.train_and_evaluate(bigger_batch, str(tmp_path), allow_config_change=True)["step"] == 6


def test_a_second_run_in_a_held_workdir_is_refused_before_writing(tmp_path):
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(WorkdirBusyError, match=rf"in use by another run \(process {os.getpid()} on "
                                                   rf"{socket.gethostname()}, started .*delete .*run.lock"):
            experiment.train_and_evaluate(_smoke(), str(tmp_path))
        assert sorted(os.listdir(tmp_path)) == ["run.lock"]
    assert os.listdir(tmp_path) == []  # released


def _write_lock(path, **holder):
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                                "heartbeat": time.time(), "token": "other", **holder}))


def test_stale_locks_are_taken_over_live_ones_are_not(tmp_path):
    lock_file = tmp_path / workdir_lock.LOCK_NAME
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    _write_lock(lock_file, pid=int(finished.stdout))  # its process has ended on this host
    with WorkdirLock(str(tmp_path)) as lock:
        assert json.loads(lock_file.read_text())["token"] == lock.token
    assert not lock_file.exists()

    old = time.time() - workdir_lock.STALE_SECONDS - 1
    _write_lock(lock_file, host="another-host", pid=1, heartbeat=old)  # a host that stopped beating
    with WorkdirLock(str(tmp_path)):
        pass

    _write_lock(lock_file, host="another-host", pid=1)  # alive elsewhere: heartbeat is fresh
    with pytest.raises(WorkdirBusyError, match="process 1 on another-host"):
        WorkdirLock(str(tmp_path)).acquire()
    assert json.loads(lock_file.read_text())["token"] == "other"  # left to its holder


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
    with WorkdirLock(str(tmp_path)) as lock:
        first = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["heartbeat"]
        deadline = time.monotonic() + 10
        while json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["heartbeat"] == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.02)
        assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["token"] == lock.token


CONFIG_FILES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f not in ("__init__.py", "common.py")
                      and not f.startswith("_"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_an_unknown_config_argument_is_an_error_listing_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"Unknown config argument smok; this config takes .*smoke"):
        load_config(name, "smok")
    load_config(name, "smoke")


def _train_only_folder(root):
    """An image folder with train/ but no test/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(8):
        (root / "train" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "train" / "a" / f"{i}.png")


def test_a_missing_eval_split_is_found_before_step_one(tmp_path):
    _train_only_folder(tmp_path / "data")
    config = _smoke()
    config.data.update(source="folder", path=str(tmp_path / "data"), image_size=16, crop="center")
    with pytest.raises(ValueError, match=r"No folder '.*/data/test'"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"))
    assert os.listdir(tmp_path / "run") == []  # nothing written: no config.json, no checkpoint


def test_an_evaluation_that_fails_keeps_the_checkpoint_of_its_step(tmp_path, monkeypatch):
    from vqjax.core import checkpoints
    from vqjax.families.tokenizer import TokenizerFamily

    def broken(self, state):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(TokenizerFamily, "evaluate", broken)
    config = _smoke(num_steps=4)
    config.train.update(eval_steps=2, ckpt_steps=2)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        experiment.train_and_evaluate(config, str(tmp_path))
    assert checkpoints.saved_steps(str(tmp_path)) == [2]


def test_a_nan_is_reported_at_the_step_it_appeared(tmp_path, monkeypatch):
    """Metrics are averaged over log intervals; the sentence still names the first bad step, and
    a bad batch as a cause beside the learning rate."""
    import numpy as np

    from vqjax.data import images as data_lib
    from vqjax.train import loop as loop_lib

    real = data_lib.make_dataset

    def one_bad_batch(cfg, split, *args, **kwargs):
        for number, batch in enumerate(real(cfg, split, *args, **kwargs), start=1):
            if kwargs.get("train") and number == 3:
                batch["image"] = batch["image"] * np.nan
            yield batch

    monkeypatch.setattr(data_lib, "make_dataset", one_bad_batch)
    config = _smoke(num_steps=4)
    config.train.update(log_steps=4, ckpt_steps=4, eval_steps=4)
    with pytest.raises(loop_lib.NonFiniteLossError,
                       match=r"became nan at step 3 \(found at the log of step 4\); no checkpoint was written "
                             r"yet\..*learning_rate.*or a bad batch \(an image of step 3\)"):
        experiment.train_and_evaluate(config, str(tmp_path))


class _FailingManager:
    """A checkpoint manager whose asynchronous write of `failing_step` hits a full disk, seen
    (as Orbax does) only when the next save or the final wait collects it, wrapped."""

    directory = "/runs/x/checkpoints"

    def __init__(self, failing_step, error=None):
        self.failing_step, self.pending, self.error = failing_step, None, error

    def _collect(self):
        if self.pending == self.failing_step:
            try:
                raise self.error or OSError(28, "No space left on device")
            except OSError as err:
                raise RuntimeError("Event loop is closed") from err

    def save(self, step, args):
        self._collect()
        self.pending = step

    def wait_until_finished(self):
        self._collect()
        self.pending = None


def test_a_full_disk_while_saving_names_the_step_and_the_last_complete_checkpoint():
    from vqjax.train.loop import CheckpointWriter

    writer = CheckpointWriter(_FailingManager(failing_step=4), last_complete=None)
    writer.save(2, state={})
    writer.save(4, state={})
    with pytest.raises(OSError, match=r"No space left on the device while saving step 4 to /runs/x/checkpoints "
                                      r"\(last complete checkpoint: step 2\); free space"):
        writer.save(6, state={})
    at_the_end = CheckpointWriter(_FailingManager(failing_step=2), last_complete=None)
    at_the_end.save(2, state={})
    with pytest.raises(OSError, match=r"while saving step 2 .*\(last complete checkpoint: none\)"):
        at_the_end.wait()
    other = CheckpointWriter(_FailingManager(failing_step=2, error=PermissionError(13, "denied")), None)
    other.save(2, state={})
    with pytest.raises(RuntimeError, match="Event loop is closed"):  # not a full disk: passed on as it is
        other.wait()
