"""A workdir and an image folder in a Google Cloud Storage bucket, offline: an in-memory GCS
emulator (gcp-storage-emulator) on a localhost port, reached by the same clients as a real bucket
(Orbax's checkpoints through TensorStore's GCS driver, every other file through
vqjax.core.paths -> etils.epath -> gcsfs). A VQ-VAE smoke run is trained there in two parts
(stopped after its first checkpoint interval, then resumed) and evaluated, by the entry points
in subprocesses; its metrics must equal those of an uninterrupted run on local disk."""

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import load_config
from vqjax.train import experiment

# gcsfs' hierarchical-namespace probe calls a gRPC API the emulator lacks (a minute of retries).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
emulator = pytest.importorskip("gcp_storage_emulator.server")
emulator_objects = pytest.importorskip("gcp_storage_emulator.handlers.objects")
gcsfs = pytest.importorskip("gcsfs")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "vqjax-test"
# TensorBoard's event files are written by TensorFlow's own GCS client, which cannot be pointed
# at an emulator: they are off here (on a real bucket TensorFlow writes them).
OVERRIDES = {"train.num_steps": 6, "train.ckpt_steps": 3, "train.log_steps": 3, "train.eval_steps": 100,
             "train.tensorboard": False, "data.source": "folder", "data.image_size": 16, "data.crop": "center"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _send_generation_headers(objects):
    """Real GCS answers a download with the object's generation in `x-goog-generation`;
    TensorStore reads it to re-read what it wrote (OCDBT's manifest). The emulator omits it."""
    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status.value == 200 or response.status.value == 206:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]

    objects.download = download_with_generation  # `objects.get` (alt=media) calls it by name


@pytest.fixture(scope="module")
def bucket():
    """(emulator URL, gcsfs client) of a fresh in-memory bucket."""
    _send_generation_headers(emulator_objects)
    port = _free_port()
    server = emulator.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://localhost:{port}"
    try:
        yield url, gcsfs.GCSFileSystem(endpoint_url=url, token="anon", project="test")
    finally:
        server.stop()


def _image_folder(root: str) -> dict:
    """train/ (two classes) and test/ of 16x16 PNGs, as {relative path: PNG bytes}."""
    rng = np.random.default_rng(0)
    files = {}
    for split, count in (("train", 12), ("test", 8)):
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
            files[f"{split}/{('cat', 'dog')[i % 2]}/{i}.png"] = buffer.getvalue()
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    return files


def _run(url: str, module: str, config: str, flags: dict, cwd: str) -> str:
    """An entry point in a subprocess whose clients reach the emulator; returns its output."""
    env = dict(os.environ)
    env.update(STORAGE_EMULATOR_HOST=url,  # gcsfs
               TENSORSTORE_GCS_HTTP_URL=url,  # Orbax's TensorStore
               GOOGLE_AUTH_TOKEN_FOR_TESTING="test",  # TensorStore without Google credentials
               GOOGLE_CLOUD_PROJECT="test",
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
               # epath reaches buckets through TensorFlow when it is installed; TensorFlow's GCS
               # client has no emulator setting, so this run takes epath's fsspec route.
               EPATH_USE_TF="false",
               PYTHONPATH=REPO)
    command = [sys.executable, "-m", module, f"--config={REPO}/experiments/configs/{config}",
               *[f"--{k}={v}" if k == "workdir" else f"--config.{k}={v}" for k, v in flags.items()]]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def _numbers(tree: dict, prefix: str = "") -> dict:
    """The numbers of a metrics tree by 'section/name', throughputs left out."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not key.endswith("_per_sec"):
            found[prefix + key] = value
    return found


@pytest.mark.extended
def test_train_resume_and_evaluate_in_a_bucket(bucket, tmp_path):
    url, fs = bucket
    local_data = str(tmp_path / "data")
    for name, data in _image_folder(local_data).items():
        fs.pipe(f"{BUCKET}/data/{name}", data)

    # The reference: the same run, uninterrupted, on local disk.
    config = load_config("vqvae_quickstart", "smoke")
    for key, value in {**OVERRIDES, "data.path": local_data}.items():
        section, field = key.split(".")
        config[section][field] = value
    local = _numbers(experiment.train_and_evaluate(config, str(tmp_path / "local")))

    run = f"{BUCKET}/runs/vqvae"
    flags = {**OVERRIDES, "data.path": f"gs://{BUCKET}/data", "workdir": f"gs://{run}"}
    cwd = str(tmp_path / "cwd")  # where a bucket path mistaken for a local one would appear
    os.makedirs(cwd)
    # Part one ends at step 3 (checkpointed); part two resumes from it to step 6.
    _run(url, "experiments.vqvae", "vqvae_quickstart.py:smoke", {**flags, "train.num_steps": 3}, cwd)
    assert fs.exists(f"{run}/checkpoints/3")
    log = _run(url, "experiments.vqvae", "vqvae_quickstart.py:smoke", flags, cwd)
    assert "resumed from" in log and "at step 3" in log, log[-3000:]

    remote = _numbers(json.loads(fs.cat(f"{run}/metrics.json")))
    assert set(remote) == set(local) and "train_loss" in local and "recon_psnr" in local, sorted(local)
    for key in local:
        np.testing.assert_allclose(remote[key], local[key], rtol=1e-4, atol=1e-6, err_msg=key)
    listed = {name[len(run) + 1:] for name in fs.find(run)}
    assert {"config.json", "metrics.json", "reconstructions.png"} <= listed, sorted(listed)
    assert not any(".tmp" in name for name in listed), sorted(listed)

    _run(url, "experiments.evaluate", "evaluate.py:smoke", {"model_dir": f"gs://{run}"}, cwd)
    evaluation = json.loads(fs.cat(f"{run}/eval/eval.json"))
    assert evaluation["model_dir"] == f"gs://{run}" and np.isfinite(evaluation["recon_psnr"]), evaluation
    assert os.listdir(cwd) == [], f"files written locally instead of to the bucket: {os.listdir(cwd)}"
