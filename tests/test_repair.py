"""`vqjax repair` (vqjax/apps/repair.py): which codes it regenerates, that it keeps the others
exactly, and the command end to end on the shared tiny VQGAN and MaskGIT prior."""

import os

import jax
import numpy as np
import pytest

import vqjax.prior
from vqjax import cli
from vqjax.apps import files, repair, tiles
from vqjax.apps.files import InputError


@pytest.fixture(scope="module")
def prior(trained_prior):
    return vqjax.prior.load(trained_prior[1])


def test_least_likely_picks_the_highest_nll_share_of_valid_positions():
    rng = np.random.default_rng(0)
    nll = rng.normal(size=(6, 5))
    valid = np.ones((6, 5), bool)
    valid[:, 4] = False  # a padding column is never chosen
    chosen = repair.least_likely(nll, fraction=0.2, valid=valid)
    expected = np.zeros(30, bool)
    expected[[i for i in np.argsort(-nll.reshape(-1)) if valid.reshape(-1)[i]][:5]] = True  # 0.2 x 25
    np.testing.assert_array_equal(chosen.reshape(-1), expected)
    np.testing.assert_array_equal(repair.least_likely(nll, threshold=0.5, valid=valid), (nll > 0.5) & valid)
    with pytest.raises(InputError, match="one of --fraction"):
        repair.least_likely(nll)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        repair.least_likely(nll, fraction=1.5)


def test_repair_keeps_every_code_outside_the_mask(prior):
    h, w = prior.code_shape[:2]
    rng = np.random.default_rng(1)
    codes = rng.integers(0, prior.tokenizer.num_codes, (2, 2 * h, w)).astype(np.int32)  # two tiles each
    regenerate = np.zeros((2, 2 * h, w), bool)
    regenerate[0, 1:3, 1:3] = True
    regenerate[1, h:, :] = True  # a whole tile
    repaired = repair.repair_codes(prior, codes, regenerate, jax.random.key(0))
    np.testing.assert_array_equal(repaired[~regenerate], codes[~regenerate])
    assert repaired.min() >= 0 and repaired.max() < prior.tokenizer.num_codes  # never the mask token
    # With nothing to regenerate, nothing changes.
    np.testing.assert_array_equal(repair.repair_codes(prior, codes, np.zeros_like(regenerate), jax.random.key(0)),
                                  codes)


def test_repair_command(prior, trained_prior, trained_vqgan, tmp_path, capsys):
    size = int(prior.tokenizer.config.data.image_size)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
    files.write_png(str(tmp_path / "photo.png"), image)
    mask = np.zeros((size, size + 4), np.uint8)
    mask[: size // 2, : size // 2] = 255
    files.write_png(str(tmp_path / "hole.png"), mask[..., None])
    cli.main(["repair", "--prior", trained_prior[1], str(tmp_path / "photo.png"), "--mask", str(tmp_path / "hole.png"),
              "--out", str(tmp_path / "masked")])
    cli.main(["repair", "--prior", trained_prior[1], str(tmp_path / "photo.png"), "--fraction", "0.25",
              "--out", str(tmp_path / "least_likely")])
    out = capsys.readouterr().out
    factor = prior.tokenizer.downsampling_factor
    covering = (size // factor) * -(-(size + 4) // factor)
    assert f"{round(0.25 * covering)} of" in out  # the share of the codes covering the image
    for name in ("masked", "least_likely"):
        assert files.read_image(str(tmp_path / name / "photo.png")).shape == image.shape

    def fails(argv, message):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err

    fails(["repair", "--prior", trained_prior[1], str(tmp_path / "photo.png"), "--out", str(tmp_path / "x")],
          "Say what to repair")
    files.write_png(str(tmp_path / "small.png"), mask[:8, :8, None])
    fails(["repair", "--prior", trained_prior[1], str(tmp_path / "photo.png"), "--mask", str(tmp_path / "small.png"),
           "--out", str(tmp_path / "x")], "make it the image's size")
    fails(["repair", "--tokenizer", trained_vqgan[1], str(tmp_path / "photo.png"), "--fraction", "0.1",
           "--out", str(tmp_path / "x")], "pass --prior")
    assert not os.path.exists(tmp_path / "x")


def test_image_tiles_are_raster_order_slices_and_join_back():
    image = np.random.default_rng(0).integers(0, 256, (6, 9, 2), dtype=np.uint8)
    pieces = tiles.split_images(image, (3, 3))
    expected = [image[i:i + 3, j:j + 3] for i in (0, 3) for j in (0, 3, 6)]
    np.testing.assert_array_equal(pieces, np.stack(expected))
    np.testing.assert_array_equal(tiles.join_images(pieces, image.shape), image)


def test_diffusion_repair_inpaints_the_mask_and_keeps_every_other_pixel(trained_diffusion, trained_prior, tmp_path,
                                                                       capsys):
    """`vqjax repair --diffusion` on an image of no multiple of the model's size (tiles, padding)."""
    size = int(trained_diffusion[0].data.image_size)
    image = np.random.default_rng(3).integers(0, 256, (size + 5, size + 2, 3), dtype=np.uint8)
    files.write_png(str(tmp_path / "photo.png"), image)
    hole = np.zeros(image.shape[:2], bool)
    hole[2:size // 2, 3:size + 1] = True  # across the two tiles of a row
    files.write_png(str(tmp_path / "hole.png"), np.where(hole, 255, 0).astype(np.uint8)[..., None])
    cli.main(["repair", "--diffusion", trained_diffusion[1], str(tmp_path / "photo.png"), "--mask",
              str(tmp_path / "hole.png"), "--steps", "2", "--out", str(tmp_path / "out")])
    assert f"{hole.sum()} of {hole.size} pixels inpainted" in capsys.readouterr().out
    repaired = files.read_image(str(tmp_path / "out" / "photo.png"))
    assert repaired.shape == image.shape
    np.testing.assert_array_equal(repaired[~hole], image[~hole])
    assert np.mean(repaired[hole] != image[hole]) > 0.5

    def fails(argv, message):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err

    fails(["repair", "--diffusion", trained_diffusion[1], str(tmp_path / "photo.png"), "--fraction", "0.1",
           "--out", str(tmp_path / "x")], "pass --mask MASK.png")
    fails(["repair", "--diffusion", trained_prior[1], str(tmp_path / "photo.png"), "--mask", str(tmp_path / "hole.png"),
           "--out", str(tmp_path / "x")], "holds a prior model, not a diffusion model; pass it with --prior")
    assert not os.path.exists(tmp_path / "x")
