"""The `vqjax` command's token export and generation subcommands end to end on the shared tiny
models (tests/conftest.py), and their one-sentence errors (exit status 2, nothing written).
compress / decompress: tests/test_codec.py; score: tests/test_anomaly.py."""

import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vqjax.pretrained
from tests.helpers import subprocess_env
from vqjax import cli
from vqjax.apps import files
from vqjax.core import images as images_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer(trained_vqgan):
    return vqjax.pretrained.load(trained_vqgan[1])


def _write_images(directory, sizes, seed=0) -> list:
    rng = np.random.default_rng(seed)
    written = []
    for i, (h, w) in enumerate(sizes):
        path = str(directory / f"image{i}.png")
        files.write_png(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        written.append(path)
    return written


def _fails(argv, capsys) -> str:
    """The stderr of a command that must exit with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_encode_decode_and_reconstruct_are_the_tokenizers(tokenizer, trained_vqgan, tmp_path, capsys):
    workdir = trained_vqgan[1]
    size = int(tokenizer.config.data.image_size)
    inputs = _write_images(tmp_path, [(size, size), (size, 2 * size)])
    cli.main(["encode", "--tokenizer", workdir, *inputs, "--out", str(tmp_path / "codes.npz")])
    with np.load(tmp_path / "codes.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["downsampling_factor", "image0", "image1", "num_codes"]
        assert int(data["num_codes"]) == tokenizer.num_codes
        stored = {name: data[name] for name in ("image0", "image1")}
    for name, path in zip(("image0", "image1"), inputs):
        image = files.read_image(path)
        _, indices = tokenizer.encode(jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0)
        np.testing.assert_array_equal(stored[name], np.asarray(indices)[0])

    cli.main(["decode", "--tokenizer", workdir, str(tmp_path / "codes.npz"), "--out", str(tmp_path / "decoded")])
    cli.main(["reconstruct", "--tokenizer", workdir, *inputs, "--out", str(tmp_path / "reconstructed")])
    assert "PSNR" in capsys.readouterr().out
    for name, path in zip(("image0", "image1"), inputs):
        image = files.read_image(path)
        expected = images_lib.to_uint8(tokenizer.reconstruct(jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0))[0]
        np.testing.assert_array_equal(files.read_image(str(tmp_path / "decoded" / f"{name}.png")), expected)
        np.testing.assert_array_equal(files.read_image(str(tmp_path / "reconstructed" / f"{name}.png")), expected)


def test_token_commands_refuse_bad_input_with_a_sentence(tokenizer, trained_vqgan, trained_prior, tmp_path, capsys):
    workdir = trained_vqgan[1]
    size = int(tokenizer.config.data.image_size)
    good, odd = _write_images(tmp_path, [(size, size), (size + 1, size)])
    err = _fails(["encode", "--tokenizer", workdir, good, odd, "--out", str(tmp_path / "codes.npz")], capsys)
    assert "crop it to multiples of" in err and not os.path.exists(tmp_path / "codes.npz")
    (tmp_path / "notes.txt").write_text("not an image")
    err = _fails(["reconstruct", "--tokenizer", workdir, good, str(tmp_path / "notes.txt"), "--out",
                  str(tmp_path / "out")], capsys)
    assert "is not an image Pillow can read" in err and not os.path.exists(tmp_path / "out")
    err = _fails(["reconstruct", "--tokenizer", trained_prior[1], good, "--out", str(tmp_path / "out")], capsys)
    assert "holds a prior, not a tokenizer" in err
    err = _fails(["reconstruct", "--tokenizer", str(tmp_path / "nowhere"), good, "--out", str(tmp_path / "out")], capsys)
    assert "no such directory" in err

    # Code maps of another codebook, or an .npz with a pickled object (loading never runs code).
    buffer = io.BytesIO()
    np.savez(buffer, image0=np.zeros((2, 2), np.int32), num_codes=np.int64(tokenizer.num_codes + 1))
    (tmp_path / "other.npz").write_bytes(buffer.getvalue())
    err = _fails(["decode", "--tokenizer", workdir, str(tmp_path / "other.npz"), "--out", str(tmp_path / "d")], capsys)
    assert f"{tokenizer.num_codes + 1}-code tokenizer" in err
    buffer = io.BytesIO()
    np.savez(buffer, image0=np.array([{"a": 1}], dtype=object))
    (tmp_path / "pickled.npz").write_bytes(buffer.getvalue())
    err = _fails(["decode", "--tokenizer", workdir, str(tmp_path / "pickled.npz"), "--out", str(tmp_path / "d")], capsys)
    assert "not a .npz of code maps" in err and not os.path.exists(tmp_path / "d")


def _grid_shape(rows: int, per_row: int, side: int) -> tuple:
    """vqjax.core.images.image_grid's layout: tiles of `side` pixels with 2-pixel borders."""
    return rows * (side + 2) + 2, per_row * (side + 2) + 2, 3


def test_sample_writes_a_grid_of_a_priors_and_a_diffusion_models_samples(trained_prior, trained_diffusion,
                                                                         trained_vqgan, tmp_path, capsys):
    prior_size = int(vqjax.pretrained.load(trained_vqgan[1]).config.data.image_size)
    cli.main(["sample", trained_prior[1], "-n", "6", "--per-row", "4", "--out", str(tmp_path / "prior.png"),
              "--labels", "0,1"])
    assert files.read_image(str(tmp_path / "prior.png")).shape == _grid_shape(2, 4, prior_size)
    diffusion_config = trained_diffusion[0]
    cli.main(["sample", trained_diffusion[1], "-n", "2", "--steps", "2", "--out", str(tmp_path / "diffusion.png")])
    size = diffusion_config.data.image_size
    assert files.read_image(str(tmp_path / "diffusion.png")).shape == _grid_shape(1, 2, size)
    err = _fails(["sample", trained_vqgan[1], "--out", str(tmp_path / "x.png")], capsys)
    assert "does not generate" in err
    err = _fails(["sample", trained_prior[1], "--labels", "a,b", "--out", str(tmp_path / "x.png")], capsys)
    assert "comma-separated class numbers" in err
    good = _write_images(tmp_path, [(8, 8)])
    err = _fails(["upsample", "--diffusion", trained_diffusion[1], *good, "--out", str(tmp_path / "up")], capsys)
    assert "does not upsample" in err and not os.path.exists(tmp_path / "up")


def test_upsample_cuts_larger_images_into_the_models_low_resolution_tiles():
    """`upsample_image` on an image of no multiple of the model's low resolution, with a stand-in
    model that upsamples each tile by repeating pixels: the result is the image's repetition."""
    from types import SimpleNamespace

    from vqjax.apps import generate

    ratio, size = 4, 8
    seen = []

    def upsample(low_res, rng, **settings):
        seen.append(low_res.shape)
        return jnp.repeat(jnp.repeat(jnp.asarray(low_res), ratio, axis=1), ratio, axis=2)

    model = SimpleNamespace(spec=SimpleNamespace(low_res_size=size), image_shape=(32, 32, 3), upsample=upsample)
    image = np.random.default_rng(0).integers(0, 256, (13, 20, 3), dtype=np.uint8)
    out = generate.upsample_image(model, image, jax.random.key(0), batch_size=4, steps=2)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(image, ratio, axis=0), ratio, axis=1))
    assert seen == [(4, size, size, 3), (2, size, size, 3)]  # 2 x 3 tiles in batches of 4


@pytest.mark.extended
def test_vqjax_train_evaluate_and_upsample_commands(tmp_path):
    """The installed console script: train (the config's family picked), evaluate, upsample."""
    env = subprocess_env()
    vqjax_command = [sys.executable, "-m", "vqjax.cli"]
    workdir = str(tmp_path / "sr")
    run = lambda *argv: subprocess.run([*vqjax_command, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                                       timeout=900)
    result = run("train", "experiments/configs/sr_quickstart.py:smoke", "--workdir", workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(workdir, "metrics.json"))
    from vqjax.inference import diffusion as diffusion_lib

    model = diffusion_lib.load(workdir)
    size = model.spec.low_res_size
    inputs = _write_images(tmp_path, [(size, size), (size + 3, 2 * size)])
    result = run("upsample", *inputs, "--diffusion", workdir, "--steps", "2", "--out", str(tmp_path / "up"))
    assert result.returncode == 0, result.stderr[-3000:]
    ratio = model.image_shape[0] // size
    assert files.read_image(str(tmp_path / "up" / "image0.png")).shape == model.image_shape
    assert files.read_image(str(tmp_path / "up" / "image1.png")).shape == ((size + 3) * ratio, 2 * size * ratio, 3)

    tokenizer_dir = str(tmp_path / "tok")
    result = run("train", "experiments/configs/vqvae_quickstart.py:smoke", "--workdir", tokenizer_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run("evaluate", tokenizer_dir, "--config.data.eval_batch_size=8", "--config.evals.num_eval_batches=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "psnr" in result.stdout.lower() and os.path.exists(os.path.join(tokenizer_dir, "eval", "eval.json"))
    result = run("train", "experiments/configs/vqvae_quickstart.py:smoke")
    assert result.returncode != 0 and "workdir" in result.stderr


def test_evaluate_overrides_set_typed_fields_and_name_unknown_ones():
    from vqjax.families import defaults

    config = defaults.evaluation_base()
    cli._override(config, "--config.data.eval_batch_size=8")
    cli._override(config, "--config.evals.lpips_path=/tmp/lpips.msgpack")
    assert config.data.eval_batch_size == 8 and config.evals.lpips_path == "/tmp/lpips.msgpack"
    with pytest.raises(SystemExit, match="no field 'evals.lpips'"):
        cli._override(config, "--config.evals.lpips=x")
    with pytest.raises(SystemExit, match="does not fit the field"):
        cli._override(config, "--config.data.eval_batch_size=eight")
