"""Anomaly scores and maps (vqjax/apps/anomaly.py) against independent computations: the
reconstruction error in numpy on the tokenizer's reconstruction, GPT per-code NLLs by the chain
rule with explicit prefixes, MaskGIT's pseudo-likelihood by a numpy loop over its groups, the
tiling of other image sizes by slicing, and `vqjax score` through its command line."""

import csv
import json
import math
import os

import jax
import numpy as np
import pytest
from PIL import Image

import vqjax.pretrained
import vqjax.prior
from tests.helpers import load_config, random_transformer_params
from vqjax.apps import anomaly, files
from vqjax.eval import likelihood
from vqjax.inference.prior import Prior
from vqjax.nets import build as nets


@pytest.fixture(scope="module")
def tokenizer(trained_vqgan):
    return vqjax.pretrained.load(trained_vqgan[1])


@pytest.fixture(scope="module")
def maskgit(trained_prior):
    return vqjax.prior.load(trained_prior[1])


@pytest.fixture(scope="module")
def gpt(tokenizer):
    """A GPT of random weights (far from uniform: every prefix matters) over 4 x 4 code maps, so
    that the tokenizer's 16 x 16 maps of 32 x 32 images are scored in 16 tiles."""
    config = load_config("prior_quickstart", "gpt,smoke")
    code_shape = (4, 4)
    model = nets.build_transformer(num_codes=tokenizer.num_codes, seq_len=math.prod(code_shape), **config.model)
    return Prior(config, model, random_transformer_params(model, seed=3), tokenizer, code_shape)


def _photos(count: int) -> np.ndarray:
    """32 x 32 test crops of the embedded photographs (what the tokenizer was trained on), float32
    in [-1, 1]."""
    from vqjax.data import images as data_images

    return files.to_model_range(data_images.embedded_images("test", 32)[0][:count])


def _astronaut(height: int, width: int) -> np.ndarray:
    """A uint8 crop of scikit-image's astronaut at 1/8 of its size (64 x 64)."""
    from skimage import data as skdata

    return np.asarray(Image.fromarray(skdata.astronaut()).reduce(8))[:height, :width]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_reconstruction_error_is_numpy_on_the_tokenizers_reconstruction(tokenizer):
    images = _photos(3)
    # 37 x 45: not a multiple of the downsampling factor; scored on its edge-padded copy.
    odd = files.to_model_range(_astronaut(37, 45))
    results = anomaly.score_images(tokenizer, [*images, odd], batch_size=2)
    expected = np.mean(np.square((images - np.asarray(tokenizer.reconstruct(images))) / 2.0), axis=-1)
    for result, want in zip(results, expected):
        np.testing.assert_allclose(result.reconstruction_error, want, rtol=1e-5, atol=1e-7)
        assert result.reconstruction_mse == pytest.approx(float(want.mean()), rel=1e-5)
        assert result.code_nll is None and result.prior_nats_per_code is None
    factor = tokenizer.downsampling_factor
    padded = np.pad(odd, ((0, -37 % factor), (0, -45 % factor), (0, 0)), mode="edge")[None]
    want = np.mean(np.square((padded - np.asarray(tokenizer.reconstruct(padded))) / 2.0), axis=-1)[0, :37, :45]
    np.testing.assert_allclose(results[-1].reconstruction_error, want, rtol=1e-5, atol=1e-7)


def test_gpt_code_nll_is_the_chain_rule_with_explicit_prefixes(tokenizer, gpt):
    model, params = gpt.model, gpt.params
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, tokenizer.num_codes, (2, model.seq_len)).astype(np.int32)
    labels = np.full((2,), model.null_label, np.int32)
    nll = np.asarray(anomaly.sequence_code_nll(model, params, tokens, labels, gpt.code_shape))
    # -log p(x_i | x_<i): position i read from a sequence whose codes from i on are replaced.
    expected = np.zeros(tokens.shape)
    for i in range(model.seq_len):
        prefixed = tokens.copy()
        prefixed[:, i:] = (tokens[:, i:] + 1 + i) % tokenizer.num_codes
        log_p = _log_softmax(model.apply({"params": params}, prefixed, labels)[:, i])
        expected[:, i] = -log_p[np.arange(2), tokens[:, i]]
    np.testing.assert_allclose(nll, expected, rtol=1e-4, atol=1e-5)
    # ... and its sums are the library's exact likelihood.
    sums = likelihood.make_eval_step(model)(params, {"tokens": tokens, "label": labels,
                                                     "mask": np.array([1.0, 0.0])}, jax.random.key(0))
    assert float(sums["nll_sum"]) == pytest.approx(float(nll[0].sum()), rel=1e-5)


def test_images_are_scored_tile_by_tile_at_the_priors_code_shape(tokenizer, gpt):
    # Tiles of 4 x 4 codes are 8 x 8 pixels: a 30 x 21 image is padded to 32 x 24, 16 x 12 codes.
    image = files.to_model_range(_astronaut(30, 21))
    (result,) = anomaly.score_images(gpt, [image])
    padded = np.pad(image, ((0, 2), (0, 3), (0, 0)), mode="edge")[None]
    codes = np.asarray(tokenizer.encode(padded)[1])[0]
    assert codes.shape == (16, 12)
    expected = np.zeros(codes.shape)
    for top in range(0, 16, 4):
        for left in range(0, 12, 4):
            tile = codes[top:top + 4, left:left + 4].reshape(1, -1)
            nll = anomaly.sequence_code_nll(gpt.model, gpt.params, tile, [gpt.model.null_label], (4, 4))
            expected[top:top + 4, left:left + 4] = np.asarray(nll).reshape(4, 4)
    factor = tokenizer.downsampling_factor
    np.testing.assert_allclose(result.code_nll, expected.repeat(factor, 0).repeat(factor, 1)[:30, :21], rtol=1e-5)
    # The score: the mean over the 15 x 11 code positions that cover the image.
    assert result.prior_nats_per_code == pytest.approx(expected[:15, :11].mean(), rel=1e-5)
    assert result.reconstruction_error.shape == (30, 21)


@pytest.mark.parametrize("num_groups", [1, 3, 4, 8, 9])
def test_mask_groups_cover_every_code_once_and_keep_neighbours_visible(num_groups):
    groups = anomaly.mask_groups((7, 10, 2), num_groups)
    assert groups.shape == (7, 10, 2) and groups.min() >= 0 and groups.max() < num_groups
    np.testing.assert_array_equal(groups[..., 0], groups[..., 1])  # a position's stacked codes together
    # Each position is masked by exactly one of the passes.
    passes = np.stack([groups == g for g in range(num_groups)])
    np.testing.assert_array_equal(passes.sum(0), 1)
    assert (np.bincount(groups.ravel(), minlength=num_groups) > 0).all()
    if num_groups >= 4:  # no masked code has a masked neighbour (of the 8)
        plane = groups[..., 0]
        for dy, dx in [(0, 1), (1, -1), (1, 0), (1, 1)]:
            a = plane[max(0, -dy):plane.shape[0] - max(0, dy), max(0, -dx):plane.shape[1] - max(0, dx)]
            b = plane[max(0, dy):, max(0, dx):][:a.shape[0], :a.shape[1]]
            assert (a != b).all(), (dy, dx)


def test_maskgit_pseudo_likelihood_is_one_pass_per_group(tokenizer, maskgit):
    model, params = maskgit.model, maskgit.params
    _, codes = tokenizer.encode(_photos(2))
    tokens = np.asarray(codes).reshape(2, -1)
    labels = np.array([model.null_label, 3], np.int32)
    num_groups = 4
    nll = np.asarray(anomaly.sequence_code_nll(model, params, tokens, labels, maskgit.code_shape, num_groups))
    groups = anomaly.mask_groups(maskgit.code_shape, num_groups).reshape(-1)
    expected = np.full(tokens.shape, np.nan)
    for group in range(num_groups):
        masked = groups == group
        log_p = _log_softmax(model.apply({"params": params}, np.where(masked, model.mask_token, tokens), labels))
        picked = -np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
        expected[:, masked] = picked[:, masked]
    np.testing.assert_allclose(nll, expected, rtol=1e-4, atol=1e-5)


def test_scores_of_a_maskgit_prior_and_their_combination(tokenizer, maskgit):
    images = _photos(3)
    results = anomaly.score_images(maskgit, list(images), num_groups=4)
    codes = np.asarray(tokenizer.encode(images)[1])
    nll = anomaly.code_nll_map(maskgit, codes, np.full(3, maskgit.model.null_label), num_groups=4)
    factor = tokenizer.downsampling_factor
    for result, code_nll in zip(results, nll):
        np.testing.assert_allclose(result.code_nll, code_nll.repeat(factor, 0).repeat(factor, 1), rtol=1e-6)
        assert result.prior_nats_per_code == pytest.approx(code_nll.mean(), rel=1e-6)
    # Combined: the mean of the two scores' robust z-scores against the reference's.
    scores = {"a": [1.0, 2.0, 10.0], "b": [0.1, 0.4, 0.2]}
    reference = {"a": [1.0, 2.0, 4.0, 3.0, 100.0], "b": [0.1, 0.3, 0.2, 0.2, 0.25]}
    median_a, mad_a = 3.0, 1.0  # |deviations| 2, 1, 1, 0, 97
    median_b, mad_b = 0.2, 0.05  # |deviations| .1, .1, 0, 0, .05
    want = [((a - median_a) / (1.4826 * mad_a) + (b - median_b) / (1.4826 * mad_b)) / 2
            for a, b in zip(scores["a"], scores["b"])]
    np.testing.assert_allclose(anomaly.combined_scores(scores, reference), want, rtol=1e-12)
    assert np.isnan(anomaly.combined_scores({"a": [1.0, 2.0]}, {"a": [5.0]})).all()


def test_heat_map_brightens_with_the_value():
    colours = anomaly.heat_map(np.linspace(1.0, 3.0, 200).reshape(10, 20), 1.0, 3.0).astype(np.float64)
    assert colours.shape == (10, 20, 3)
    luminance = (colours @ [0.2126, 0.7152, 0.0722]).ravel()
    assert (np.diff(luminance) >= 0).all() and luminance[-1] - luminance[0] > 200
    ends = anomaly.heat_map(np.array([[-1.0, 1.0, 3.0, 5.0]]), 1.0, 3.0)
    np.testing.assert_array_equal(ends[0], [[0, 0, 4], [0, 0, 4], [252, 255, 164], [252, 255, 164]])


def test_labels_are_checked_against_the_prior(maskgit, gpt):
    anomaly.check_label(maskgit, "p", None)  # trained with condition dropout: unconditional is known
    anomaly.check_label(maskgit, "p", 7)
    with pytest.raises(files.InputError, match="not a class of p's prior, which has 8 classes"):
        anomaly.check_label(maskgit, "p", 8)
    no_dropout = Prior(maskgit.config.copy_and_resolve_references(), maskgit.model, maskgit.params,
                       maskgit.tokenizer, maskgit.code_shape)
    with no_dropout.config.unlocked():
        no_dropout.config.loss.cond_drop = 0.0
    with pytest.raises(files.InputError, match="pass --label CLASS"):
        anomaly.check_label(no_dropout, "p", None)
    unconditional = Prior(gpt.config, gpt.model.clone(num_classes=0), gpt.params, gpt.tokenizer, gpt.code_shape)
    with pytest.raises(files.InputError, match="unconditional; leave out --label"):
        anomaly.check_label(unconditional, "p", 0)


def _write_photos(directory, sizes) -> list[str]:
    out = []
    for i, (height, width) in enumerate(sizes):
        out.append(str(directory / f"photo{i}.png"))
        files.write_png(out[-1], np.roll(_astronaut(64, 64), 9 * i, axis=1)[:height, :width])
    return out


def test_score_command_writes_scores_and_maps(trained_vqgan, trained_prior, tmp_path, capsys, monkeypatch):
    from vqjax import cli

    monkeypatch.setattr(cli, "APPLICATIONS", ("vqjax.apps.anomaly",))
    sizes = [(32, 32), (24, 40), (32, 32)]
    inputs = _write_photos(tmp_path, sizes)
    out = tmp_path / "scores"
    cli.main(["score", "--prior", trained_prior[1], *inputs, "--out", str(out), "--maps", "--groups", "4"])
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "reconstruction_mse", "prior_nats_per_code", "combined"]
    assert [r["file"] for r in rows] == inputs
    summary = json.loads((out / "scores.json").read_text())
    assert "pseudo-likelihood" in summary["prior_likelihood"]
    stats = summary["standardisers"]
    for row in rows:
        z = [(float(row[k]) - stats[k]["median"]) / stats[k]["spread"]
             for k in ("reconstruction_mse", "prior_nats_per_code")]
        assert float(row["combined"]) == pytest.approx(np.mean(z), rel=1e-9, abs=1e-12)
    assert [float(r["combined"]) for r in rows] == [r["combined"] for r in summary["images"]]
    for i, (height, width) in enumerate(sizes):
        for kind in ("recon_error", "code_nll"):
            with Image.open(out / f"photo{i}_{kind}.png") as heat:
                assert heat.size == (width, height) and heat.mode == "RGB"
    assert "Scored 3 images" in capsys.readouterr().out

    # With the tokenizer alone: no prior column, no code-NLL maps; --reference sets the scale.
    cli.main(["score", "--tokenizer", trained_vqgan[1], *inputs[:2], "--reference", *inputs,
              "--out", str(tmp_path / "tokenizer_only")])
    with open(tmp_path / "tokenizer_only" / "scores.csv") as f:
        assert list(csv.DictReader(f).fieldnames) == ["file", "reconstruction_mse", "combined"]
    assert sorted(os.listdir(tmp_path / "tokenizer_only")) == ["scores.csv", "scores.json"]


def test_score_command_errors_are_one_sentence(trained_vqgan, tmp_path, capsys, monkeypatch):
    from vqjax import cli

    monkeypatch.setattr(cli, "APPLICATIONS", ("vqjax.apps.anomaly",))
    inputs = _write_photos(tmp_path, [(32, 32)])
    cases = [(["--tokenizer", trained_vqgan[1], inputs[0], str(tmp_path / "missing.png")], "No image file at"),
             (["--prior", trained_vqgan[1], inputs[0]], "not a prior")]
    for arguments, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["score", *arguments, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not os.path.exists(tmp_path / "out")
